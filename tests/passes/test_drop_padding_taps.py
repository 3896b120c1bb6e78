"""DropPaddingTaps: kernel rows / columns of a dilated conv that read only zero padding are cut
(DeepLab's ASPP at rate 18 on a 16x16 map is a 1x1 conv in disguise: 1.50 ms -> 0.10 ms), with
the padding shifted so the output is the same. Checked against onnxruntime on the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_sparse
from tvm_sparse.passes.drop_padding_taps import live_taps

from ..conftest import assert_close, ort_run


def _conv_model(hw, k, dilation, pads, strides=(1, 1), weight=None) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    ci, co = 4, 6
    w = weight if weight is not None else rng.standard_normal((co, ci, *k)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], dilations=list(dilation), pads=list(pads),
        strides=list(strides), kernel_shape=list(k),
    )  # fmt: skip
    out = [
        (hw[i] + pads[i] + pads[i + 2] - dilation[i] * (k[i] - 1) - 1) // strides[i] + 1
        for i in range(2)
    ]
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ci, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, *out])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [co], b),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _canonical_convs(model: onnx.ModelProto) -> list[str]:
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_sparse.passes.canonicalize import canonicalize

    text = canonicalize(from_onnx(model)).script()
    return [line.strip() for line in text.splitlines() if "R.nn.conv2d(" in line]


# ONNX pads are (top, left, bottom, right) as Relax's; the canonical conv's kernel and padding
@pytest.mark.parametrize(
    "hw, k, dilation, pads, strides, kernel_after, pads_after",
    [
        # ASPP rate 18 on 16x16: only the centre tap reads the map, a 1x1 conv (dilation 1)
        ((16, 16), (3, 3), (18, 18), (18, 18, 18, 18), (1, 1), (1, 1), "[0, 0, 0, 0]"),
        # rate 12: tap 0 reads rows -12..3, so rows 0..3 are live: every tap stays
        ((16, 16), (3, 3), (12, 12), (12, 12, 12, 12), (1, 1), (3, 3), "[12, 12, 12, 12]"),
        # 5 rows, 40 columns: only the rows are cut
        ((5, 40), (3, 3), (8, 8), (8, 8, 8, 8), (1, 1), (1, 3), "[0, 8, 0, 8]"),
        # stride 2 rows
        ((9, 9), (3, 3), (10, 2), (10, 2, 10, 2), (2, 1), (1, 3), "[0, 2, 0, 2]"),
        # uneven padding: taps 0 and 4 read only padding (rows -9..-3 and 7..13)
        ((7, 7), (5, 5), (4, 4), (9, 9, 7, 7), (1, 1), (3, 3), "[5, 5, 3, 3]"),
        # taps 0, 1 and 4 dead, but cutting tap 4 would need a bottom padding of -1: 0 and 1
        # are cut, 4 kept
        ((7, 7), (5, 5), (4, 4), (9, 9, 3, 3), (1, 1), (3, 3), "[1, 1, 3, 3]"),
        ((8, 8), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (3, 3), "[1, 1, 1, 1]"),  # ordinary 3x3
    ],
)
def test_cut_conv_matches_onnxruntime(
    tmp_path, hw, k, dilation, pads, strides, kernel_after, pads_after
):
    model = _conv_model(hw, k, dilation, pads, strides)
    convs = _canonical_convs(model)
    assert len(convs) == 1 and f"padding={pads_after}" in convs[0]
    path = str(tmp_path / "conv.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(1).standard_normal((1, 4, *hw)).astype(np.float32)
    compiled = tvm_sparse.compile(path, "llvm")
    assert_close(compiled.run(x), ort_run(path, x), rtol=1e-4)
    assert list(compiled.report.layers[0].weight_shape) == [6, 4, *kernel_after]


def test_live_taps_by_hand():
    # 16 rows, rate 18, padding 18: tap 0 reads rows -18..-3, tap 2 rows 18..33, tap 1 0..15
    assert live_taps(16, 16, 3, 1, 18, 18) == (1, 1)
    assert live_taps(16, 16, 3, 1, 12, 12) == (0, 2)  # tap 0 reads -12..3: rows 0..3 live
    assert live_taps(8, 8, 3, 1, 1, 1) == (0, 2)


def test_a_non_finite_weight_in_a_cut_tap_keeps_the_conv():
    w = np.random.default_rng(2).standard_normal((6, 4, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = np.inf  # in tap row 0, which reads only padding: inf * 0 is NaN, not 0
    convs = _canonical_convs(_conv_model((16, 16), (3, 3), (18, 18), (18,) * 4, weight=w))
    assert len(convs) == 1 and "padding=[18, 18, 18, 18]" in convs[0]
