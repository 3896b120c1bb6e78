"""SeparableResize: a bilinear resize becomes a column stage and a row stage over constant
index / weight tables (TVM's lowering recomputed float coordinates and did four gathers per
output: 4x onnxruntime's time on DeepLab's final upsampling). Checked against onnxruntime and
against TVM's own resize on the same ONNX file, for every coordinate mode it takes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_sparse
from tvm_sparse.passes.separable_resize import source_coordinates

from ..conftest import ort_run


def _resize_model(in_hw, out_hw, mode: str, coords: str) -> onnx.ModelProto:
    """Conv (so the model has a layer) -> Resize to ``out_hw`` (sizes input)."""
    c = 5
    rng = np.random.default_rng(3)
    w = helper.make_tensor("w", TensorProto.FLOAT, [c, 3, 1, 1], rng.standard_normal(c * 3))
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [2, c, *out_hw])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node(
            "Resize",
            ["y", "", "", "sizes"],
            ["out"],
            mode=mode,
            coordinate_transformation_mode=coords,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, *in_hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, c, *out_hw])],
        [w, sizes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _canonical_text(model: onnx.ModelProto) -> str:
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_sparse.passes.canonicalize import canonicalize

    return canonicalize(from_onnx(model)).script()


@pytest.mark.parametrize(
    "in_hw, out_hw, coords",
    [
        ((4, 6), (32, 48), "half_pixel"),  # DeepLab's 8x upsampling
        ((7, 5), (12, 13), "pytorch_half_pixel"),  # non-integer factors
        ((9, 8), (5, 3), "half_pixel"),  # downsampling
        ((6, 7), (11, 1), "pytorch_half_pixel"),  # one output column: coordinate 0
        ((5, 6), (9, 16), "align_corners"),
        ((5, 6), (10, 9), "asymmetric"),
        ((1, 1), (3, 4), "half_pixel"),  # a 1x1 image: every index clamps to 0
    ],
)
def test_bilinear_resize_matches_onnxruntime_and_tvm(tmp_path, in_hw, out_hw, coords):
    model = _resize_model(in_hw, out_hw, "linear", coords)
    text = _canonical_text(model)
    assert "resize2d" not in text and "resize_rows" in text and "resize_columns" in text
    path = str(tmp_path / "resize.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(0).standard_normal((2, 3, *in_hw)).astype(np.float32)
    compiled = tvm_sparse.compile(path, "llvm")
    got = compiled.run(x)
    np.testing.assert_allclose(got, ort_run(path, x), rtol=1e-5, atol=1e-5)
    # TOPI's values: the same tables and lerp order, so plain TVM agrees to float rounding
    plain = tvm_sparse.compile(path, "llvm", sparse=False)
    np.testing.assert_allclose(got, plain.run(x), rtol=1e-6, atol=1e-6)


def test_tables_follow_topi_half_pixel():
    """16 -> 128 (scale 1/8): output 0 sits at source -0.4375 (both indices clamp to 0, weight
    0.5625), output 4 at 0.0625 between 0 and 1, output 127 at 15.4375 (both clamp to 15)."""
    i0, i1, w = source_coordinates(16, 128, "half_pixel")
    assert (i0[0], i1[0]) == (0, 0) and w[0] == np.float32(0.5625)
    assert (i0[4], i1[4]) == (0, 1) and w[4] == np.float32(0.0625)
    assert (i0[127], i1[127]) == (15, 15)
    i0, i1, w = source_coordinates(5, 9, "align_corners")
    np.testing.assert_array_equal(i0, [0, 0, 1, 1, 2, 2, 3, 3, 4])
    assert w[1] == np.float32(0.5) and w[8] == 0


@pytest.mark.parametrize(
    "mode, coords",
    [("nearest", "half_pixel"), ("cubic", "half_pixel"), ("linear", "tf_crop_and_resize")],
)
def test_other_resizes_keep_tvms_lowering(mode, coords):
    text = _canonical_text(_resize_model((4, 4), (8, 8), mode, coords))
    assert "resize2d" in text and "resize_rows" not in text
