"""SeparablePool: max / average pooling as a row stage and a column stage (TVM's window
reduction tested the padding per tap and gathered at stride 2: 3.4x onnxruntime's time on
Inception-v3's first max pool). Checked against onnxruntime on the same ONNX file for every
window, stride, padding, ceil mode and count_include_pad the pass takes; the forms it leaves
to TVM still compile and match."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_sparse
from tvm_sparse.passes.separable_pool import average_divisor

from ..conftest import fused_text, ort_run


def _pool_model(x_shape, op: str, out_hw, **attrs) -> onnx.ModelProto:
    """Conv (so the model has a layer) -> the pool."""
    c = 6
    rng = np.random.default_rng(3)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [c, x_shape[1], 1, 1], rng.standard_normal(c * x_shape[1])
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node(op, ["y"], ["out"], **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [x_shape[0], c, *out_hw])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _out(size: int, k: int, s: int, pads: tuple[int, int], ceil: bool) -> int:
    span = size + sum(pads) - k
    return (-(-span // s) if ceil else span // s) + 1


CASES = [
    # op, x_shape, kernel, strides, pads (t, l, b, r), ceil_mode, count_include_pad
    ("MaxPool", (1, 3, 15, 15), (3, 3), (1, 1), (1, 1, 1, 1), 0, None),  # GoogLeNet's branches
    ("MaxPool", (2, 2, 12, 12), (3, 3), (1, 1), (0, 0, 0, 0), 0, None),  # batch 2, no padding
    ("MaxPool", (1, 2, 13, 13), (2, 2), (1, 1), (0, 0, 1, 1), 1, None),  # ceil mode, one side
    ("MaxPool", (1, 2, 9, 11), (2, 3), (1, 1), (1, 0, 0, 2), 0, None),  # asymmetric everything
    ("AveragePool", (1, 3, 9, 9), (3, 3), (1, 1), (1, 1, 1, 1), 0, 0),  # Inception's avg pools
    ("AveragePool", (1, 3, 9, 9), (3, 3), (1, 1), (1, 1, 1, 1), 0, 1),  # padding counted
    ("AveragePool", (1, 2, 11, 7), (3, 2), (1, 1), (1, 0, 1, 1), 0, 0),
]
# column stride 2: the hand kernel of schedules.pool_x86 (a scratch row, even-lane permutes)
STRIDED = [
    ("MaxPool", (1, 3, 15, 15), (3, 3), (2, 2), (0, 0, 0, 0), 0, None),  # Inception's s2 pools
    ("MaxPool", (2, 2, 40, 40), (3, 3), (2, 2), (1, 1, 1, 1), 0, None),  # ResNet's, batch 2
    ("MaxPool", (1, 2, 37, 37), (3, 3), (2, 2), (0, 0, 0, 0), 1, None),  # ceil mode overhang
    ("MaxPool", (1, 2, 9, 36), (2, 2), (2, 2), (0, 0, 0, 0), 0, None),  # VGG's 2x2, 18 = 16 + 2
    ("MaxPool", (1, 2, 9, 11), (2, 3), (1, 2), (1, 0, 0, 2), 0, None),  # asymmetric, row s1
    ("AveragePool", (2, 2, 8, 10), (2, 2), (2, 2), (0, 0, 0, 0), 0, 0),  # DenseNet's transition
    ("AveragePool", (1, 2, 35, 35), (3, 3), (2, 2), (1, 1, 1, 1), 0, 0),  # padding excluded
    ("AveragePool", (1, 2, 35, 35), (3, 3), (2, 2), (1, 1, 1, 1), 0, 1),  # padding counted
]


@pytest.mark.parametrize("op, x_shape, kernel, strides, pads, ceil, include", CASES + STRIDED)
def test_pool_matches_onnxruntime(tmp_path, op, x_shape, kernel, strides, pads, ceil, include):
    out_hw = tuple(
        _out(x_shape[2 + a], kernel[a], strides[a], (pads[a], pads[a + 2]), bool(ceil))
        for a in range(2)
    )
    attrs = dict(kernel_shape=list(kernel), strides=list(strides), pads=list(pads), ceil_mode=ceil)
    if include is not None:
        attrs["count_include_pad"] = include
    model = _pool_model(x_shape, op, out_hw, **attrs)
    path = str(tmp_path / "pool.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    text = fused_text(model)
    assert "nn.max_pool2d" not in text and "nn.avg_pool2d" not in text
    if strides[1] == 2:
        assert "pool2d_s2_" in text
    else:
        assert "pool_rows" in text and "pool_columns" in text
    compiled = tvm_sparse.compile(path, "llvm")
    np.testing.assert_allclose(compiled.run(x), ort_run(path, x), rtol=1e-5, atol=1e-5)


def test_pools_stay_for_other_targets():
    """The FPGA and CUDA backends read the pool ops themselves: left alone there."""
    model = _pool_model((1, 2, 8, 8), "MaxPool", (7, 7), kernel_shape=[2, 2], strides=[1, 1])
    assert "max_pool2d" in fused_text(model, "cuda")


def test_average_divisor_counts_the_inside_taps():
    # 3x3 s1 pad 1 on 4x4: corners see 2x2, edges 2x3, the middle 3x3
    div = average_divisor((1, 1, 4, 4), (3, 3), (1, 1), (1, 1, 1, 1), False, (4, 4))
    assert div[0, 0] == 4 and div[0, 1] == 6 and div[1, 1] == 9
    assert (average_divisor((1, 1, 4, 4), (3, 3), (1, 1), (1, 1, 1, 1), True, (4, 4)) == 9).all()
