"""The sparse conv with the samples in the vector lanes: equal to the dense reference for
batches that fill, overfill and underfill the lanes, any geometry, both vector widths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.ir.layers import CONV2D, LayerSpec
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernels.cpu_sparse_conv_batch import SparseConv2dBatchLanes
from tvm_sparse.schedules.sparse_conv_batch_x86 import default_tile, sparse_conv2d_batch_lanes
from tvm_sparse.target import resolve_target

from .reference import check_conv, sparse_weight

TARGET = resolve_target("llvm")
TWO_CORES = resolve_target({"kind": "llvm", "num-cores": 2})

CASES = [
    # x shape, weight shape, density, strides, padding, dilation, activation
    ((16, 64, 14, 14), (64, 64, 5, 5), 0.2, (1, 1), (0, 0, 0, 0), (1, 1), None),  # GSC cnn2
    ((20, 8, 9, 11), (12, 8, 3, 3), 0.3, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),  # 2 groups
    ((5, 3, 12, 10), (7, 3, 3, 2), 0.5, (2, 1), (1, 0, 2, 1), (1, 2), "gelu"),  # 1 short group
    ((17, 4, 30, 30), (6, 4, 3, 3), 0.4, (1, 1), (1, 1, 1, 1), (1, 1), None),  # rows > tile
    ((16, 6, 7, 7), (9, 6, 3, 3), 0.0, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),  # no non-zero
    ((8, 5, 6, 6), (4, 5, 1, 1), 1.0, (1, 1), (0, 0, 0, 0), (1, 1), None),  # dense 1x1
]


def _check(x_shape, w, bias, conv: ConvAttrs, activation, target=TARGET, **knobs):
    return check_conv(sparse_conv2d_batch_lanes, x_shape, w, bias, conv, activation, target,
                      **knobs)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_dense(case, with_bias):
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation)


@pytest.mark.parametrize(
    "knobs",
    [
        {"tile": (1, 3), "cblock": 1},  # many tiles, a block a channel
        {"tile": (3, 4), "cblock": 3},  # blocks not dividing the channels (12 vectors: AVX2 too)
        {"lanes": 8, "tile": (2, 4)},  # AVX2 width
        {"cblock": 64, "parallel": False},
    ],
    ids=str,
)
def test_knobs_keep_results(knobs):
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (10, 8, 3, 3), 0.3)
    _check((19, 8, 11, 13), w, None, ConvAttrs(padding=(1, 1, 1, 1)), "relu", TWO_CORES, **knobs)


def test_bad_knobs_are_refused():
    w = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="tile"):
        sparse_conv2d_batch_lanes((16, 2, 8, 8), w, tile=(5, 5), target=TARGET)
    with pytest.raises(ValueError, match="lanes"):
        sparse_conv2d_batch_lanes((16, 2, 8, 8), w, lanes=4, target=TARGET)
    with pytest.raises(ValueError, match="cblock"):
        sparse_conv2d_batch_lanes((16, 2, 8, 8), w, cblock=0, target=TARGET)


def test_default_tile_covers_rows_within_the_registers():
    assert default_tile((10, 10), 16) == (2, 10)  # GSC cnn2: two whole rows, 20 of 24
    assert default_tile((28, 28), 16) == (1, 14)  # a row in two even pieces
    rows, cols = default_tile((7, 7), 8)
    assert rows * cols <= 12 and cols == 7


def test_fits_only_batches_of_small_images():
    family = SparseConv2dBatchLanes()
    rng = np.random.default_rng(0)

    def layer(x_shape, w_shape):
        w = sparse_weight(rng, w_shape, 0.2)
        out = (x_shape[0], w_shape[0], x_shape[2] - w_shape[2] + 1, x_shape[3] - w_shape[3] + 1)
        attrs = {"strides": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
        return LayerSpec(0, CONV2D, x_shape, out, w, None, None, None, None, conv_attrs=attrs)

    assert family.fits(layer((64, 64, 14, 14), (64, 64, 5, 5)))  # GSC cnn2 at batch 64
    assert not family.fits(layer((1, 64, 14, 14), (64, 64, 5, 5)))  # batch 1
    assert not family.fits(layer((64, 1, 32, 32), (64, 1, 5, 5)))  # cnn1: 3.2 MB of output
    assert not family.fits(layer((16, 256, 16, 16), (256, 256, 3, 3)))  # ResNet-size input


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 40),
    channels=st.integers(1, 6),
    out_channels=st.integers(1, 7),
    size=st.integers(3, 12),
    kernel=st.integers(1, 3),
    pad=st.integers(0, 1),
    seed=st.integers(0, 10),
)
def test_random_convs(batch, channels, out_channels, size, kernel, pad, seed):
    rng = np.random.default_rng(seed)
    w = sparse_weight(rng, (out_channels, channels, kernel, kernel), 0.4)
    _check((batch, channels, size, size), w, None, ConvAttrs(padding=(pad,) * 4), None)
