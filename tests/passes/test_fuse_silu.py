"""Exported SiLU (``x * sigmoid(x)``) after a conv becomes the kernel's ``silu`` epilogue, a
squeeze-excitation gate's sigmoid the ``sigmoid`` epilogue of its 1x1 conv; other products of a
sigmoid stay as they are, and the model equals onnxruntime (EfficientNet's block, in small)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.frontend import import_onnx
from tvm_sparse.ir.layers import find_layers
from tvm_sparse.ir.relax_utils import iter_bindings, op_name
from tvm_sparse.passes.canonicalize import canonicalize

from ..conftest import assert_close, ort_run

C, SQUEEZE, HW = 16, 4, 14


def _block(swapped: bool = False, shared_gate: bool = False) -> onnx.ModelProto:
    """1x1 conv -> SiLU -> depthwise 5x5 -> SiLU -> squeeze-excitation (mean, 1x1 -> SiLU ->
    1x1 -> sigmoid, times the activations) -> 1x1 conv -> sigmoid(y) * (y + 1) (not a SiLU).
    ``swapped``: the first SiLU written ``sigmoid(x) * x``; ``shared_gate``: its sigmoid also
    read by the output (so it is not a SiLU's alone)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((C, 8, 1, 1)),
        "w2": rng.standard_normal((C, 1, 5, 5)) * 0.3,
        "w_fc1": rng.standard_normal((SQUEEZE, C, 1, 1)) * 0.3,
        "w_fc2": rng.standard_normal((C, SQUEEZE, 1, 1)) * 0.3,
        "w3": rng.standard_normal((12, C, 1, 1)) * 0.3,
        "b1": rng.standard_normal(C),
        "one": np.array(1.0),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    silu1 = ["s1", "c1"] if swapped else ["c1", "s1"]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Mul", silu1, ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], group=C, pads=[2, 2, 2, 2]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["c2", "s2"], ["a2"]),
        helper.make_node("ReduceMean", ["a2"], ["pooled"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["pooled", "w_fc1"], ["f1"]),
        helper.make_node("Sigmoid", ["f1"], ["fs"]),
        helper.make_node("Mul", ["f1", "fs"], ["f1a"]),
        helper.make_node("Conv", ["f1a", "w_fc2"], ["f2"]),
        helper.make_node("Sigmoid", ["f2"], ["gate"]),
        helper.make_node("Mul", ["gate", "a2"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w3"], ["c3"]),
        helper.make_node("Sigmoid", ["c3"], ["s3"]),
        helper.make_node("Add", ["c3", "one"], ["c3p"]),
        helper.make_node("Mul", ["s3", "c3p"], ["y0"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, HW, HW])]
    nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    if shared_gate:
        outputs.append(helper.make_tensor_value_info("s1", TensorProto.FLOAT, [1, C, HW, HW]))
    graph = helper.make_graph(
        nodes,
        "silu_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, HW, HW])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _activations(model: onnx.ModelProto) -> list[str | None]:
    func = canonicalize(import_onnx(model).mod)["main"]
    return [layer.activation for layer in find_layers(func)]


def test_silu_and_gate_sigmoid_become_layer_epilogues():
    # w1, depthwise, fc1, fc2 (the gate), w3 (its sigmoid * (y + 1) is not a SiLU)
    assert _activations(_block()) == ["silu", "silu", "silu", "sigmoid", None]
    assert _activations(_block(swapped=True))[0] == "silu"


def test_a_sigmoid_read_elsewhere_is_not_fused():
    assert _activations(_block(shared_gate=True))[0] is None
    func = canonicalize(import_onnx(_block(shared_gate=True)).mod)["main"]
    ops = [op_name(b.value) for b in iter_bindings(func)]
    assert ops.count("relax.nn.silu") == 2  # the depthwise's and fc1's still are


def test_fused_block_matches_onnxruntime():
    model = _block()
    x = (np.random.default_rng(1).standard_normal((1, 8, HW, HW)) * 2).astype(np.float32)
    out = tvm_sparse.compile(model, "llvm").run(x)
    assert_close(out, ort_run(model, x))
