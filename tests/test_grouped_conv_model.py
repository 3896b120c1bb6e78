"""End to end: a small CNN of grouped convs (not depthwise) compiled by tvm_sparse matches
onnxruntime, dense and pruned (the pruned one's grouped convs may take the sparse conv kernels
through their block-diagonal view)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse

from .conftest import assert_close, ort_run

pytestmark = pytest.mark.slow

# (out channels, groups, kernel, stride): a stem, then grouped 3x3 convs of group width 4, 8
# and 16, stride 1 and 2, and a grouped 1x1
LAYERS = [(16, 1, 3, 1), (16, 4, 3, 2), (32, 2, 1, 1), (32, 2, 3, 1), (32, 4, 3, 2), (48, 2, 1, 1)]


def _model(density: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits, name, cin = [], [], "x", 3
    for i, (co, groups, k, s) in enumerate(LAYERS):
        w = rng.standard_normal((co, cin // groups, k, k)).astype(np.float32) * 0.3
        if density < 1 and groups > 1:
            w *= rng.random(w.shape) < density
        b = rng.standard_normal(co).astype(np.float32) * 0.1
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        p = k // 2
        nodes.append(helper.make_node("Conv", [name, f"w{i}", f"b{i}"], [f"c{i}"], group=groups,
                                      strides=[s, s], pads=[p] * 4))  # fmt: skip
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        name, cin = f"r{i}", co
    graph = helper.make_graph(
        nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 48, 5, 5])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("density", [1.0, 0.1])
def test_grouped_conv_cnn_matches_onnxruntime(density):
    model = _model(density)
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 20)).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm")
    assert_close(compiled.run(x), ort_run(model, x))
    chosen = [layer.chosen for layer in compiled.report.layers]
    assert len(chosen) == len(LAYERS) and "tvm" not in chosen
    grouped = [layer for layer, spec in zip(compiled.report.layers, LAYERS) if spec[1] > 1]
    if density == 1.0:
        assert set(chosen) == {"dense"}
    else:  # the pruned grouped convs are offered the sparse conv kernels
        assert all("sparse_conv_planes" in layer.estimated_ms for layer in grouped)
