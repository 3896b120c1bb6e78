"""ONNX Clip(x, 0, 6) after a conv becomes the conv kernel's ReLU6 epilogue; other clips stay."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.frontend import import_onnx
from tvm_sparse.ir.layers import find_layers
from tvm_sparse.passes.canonicalize import canonicalize

from ..conftest import assert_close, ort_run


def _model(last_max: float = 4.0) -> onnx.ModelProto:
    """1x1 conv -> ReLU6 -> depthwise 3x3 -> ReLU6 -> sparse 3x3 conv -> Clip(0, last_max)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((16, 1, 3, 3)).astype(np.float32)
    w3 = rng.standard_normal((12, 16, 3, 3)).astype(np.float32)
    w3 *= rng.random(w3.shape) < 0.2
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    for name, value in (("zero", 0.0), ("six", 6.0), ("top", last_max)):
        inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c2", "zero", "six"], ["a2"]),
        helper.make_node("Conv", ["a2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c3", "zero", "top"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "relu6",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 14, 14])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_relu6_becomes_the_layer_activation_and_other_clips_stay():
    func = canonicalize(import_onnx(_model()).mod)["main"]
    assert [layer.activation for layer in find_layers(func)] == ["relu6", "relu6", None]
    assert "R.call_tir(minimum" in func.script()  # Clip(0, 4) is not a ReLU6: left as it is


def test_clip_with_six_as_lower_bound_is_not_relu6():
    model = _model(last_max=6.0)
    model.graph.node[1].input[1] = "six"  # Clip(c1, 6, 6): not a ReLU6
    func = canonicalize(import_onnx(model).mod)["main"]
    assert [layer.activation for layer in find_layers(func)] == [None, "relu6", "relu6"]


def test_fused_relu6_matches_onnxruntime():
    model = _model()
    x = (np.random.default_rng(1).standard_normal((1, 8, 14, 14)) * 3).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm")
    out = compiled.run(x)
    expected = ort_run(model, x)
    assert_close(out, expected)
    assert (expected == 6.0).any() or (expected == 4.0).any()  # the upper bounds were hit
