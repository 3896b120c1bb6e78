"""The direct sparse conv (flat, wide and tiled layouts) against a float64 numpy conv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d
from tvm_sparse.target import resolve_target

from .reference import conv_ref, sparse_weight

TARGET = resolve_target("llvm")


def check(call, x, expected):
    out = run_kernel(call, TARGET, x)
    assert out.shape == call.out_shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


CASES = [
    # x shape, weight shape, density, strides, padding, dilation, activation
    ((1, 64, 14, 14), (64, 64, 5, 5), 0.2, (1, 1), (0, 0, 0, 0), (1, 1), None),  # GSC cnn2
    ((1, 1, 32, 32), (64, 1, 5, 5), 0.5, (1, 1), (0, 0, 0, 0), (1, 1), "relu"),  # GSC cnn1
    ((2, 3, 9, 11), (5, 3, 3, 3), 0.4, (1, 2), (1, 2, 0, 1), (1, 2), "gelu"),  # OW 5: B only
    ((1, 4, 8, 8), (6, 4, 3, 3), 0.0, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),  # OW 8: A only
    ((3, 3, 7, 30), (4, 3, 3, 3), 0.5, (1, 1), (1, 0, 2, 3), (2, 1), None),  # OW 31, odd Hp
    ((1, 5, 12, 20), (7, 5, 3, 3), "one", (1, 1), (0, 0, 0, 0), (1, 1), None),
    ((2, 6, 10, 19), (9, 6, 2, 4), 1.0, (1, 1), (0, 1, 1, 0), (1, 1), "relu"),  # dense
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("lanes", [8, 16])
def test_flat_layout_matches_dense(case, with_bias, lanes):
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    x = rng.standard_normal(x_shape).astype(np.float32)
    call = sparse_conv2d(
        x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation, TARGET, lanes=lanes
    )
    assert call.info["layout"] == "flat"  # the default with a unit row stride
    assert call.info["lanes"] == lanes
    check(call, x, conv_ref(x, w, bias, strides, padding, dilation, activation))


@pytest.mark.parametrize(
    "knobs",
    [
        {"vectors": 1},  # one vector a tile: many A tiles, B tiles
        {"vectors": 3, "cblock": 1, "oblock": 3},  # A's rest and B apart; oblock not dividing O
        {"vectors": 5, "cblock": 2, "oblock": 64},
        {"vectors": 15, "cblock": 64, "parallel": False},
        {"lanes": 16, "vectors": 1},  # a 16-lane vector spans two 8-wide plane rows
        {"lanes": 16, "vectors": 2, "cblock": 1, "oblock": 5},
        {"lanes": 16, "vectors": 28, "oblock": 7},
        {"lanes": 8, "oblock": 7},
    ],
    ids=str,
)
def test_flat_knobs_agree(knobs):
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (7, 5, 3, 3), 0.3)
    bias = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((2, 5, 9, 13)).astype(np.float32)  # OW 11 = 8 + 3
    call = sparse_conv2d(x.shape, w, bias, ConvAttrs(padding=(1, 0, 0, 1)), "relu", TARGET,
                         layout="flat", **knobs)  # fmt: skip
    check(call, x, conv_ref(x, w, bias, (1, 1), (1, 0, 0, 1), (1, 1), "relu"))


@pytest.mark.parametrize("layout", ["wide", "tiled"])
def test_other_layouts_still_match(layout):
    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (16, 8, 5, 5), 0.2)
    x = rng.standard_normal((1, 8, 14, 14)).astype(np.float32)
    call = sparse_conv2d(x.shape, w, target=TARGET, layout=layout)
    assert "layout" not in call.info or call.info["layout"] == layout
    check(call, x, conv_ref(x, w))


@pytest.mark.parametrize("batch", [1, 2])
def test_nan_inf_weights_propagate_like_dense(batch):
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (6, 3, 3, 3), 0.3)
    w[1, 0, 0, 0], w[2, 2, 1, 2], w[4, 1, 2, 1] = np.nan, np.inf, -np.inf
    x = rng.standard_normal((batch, 3, 8, 10)).astype(np.float32)
    ref = conv_ref(x, w)
    out = run_kernel(sparse_conv2d(x.shape, w, target=TARGET), TARGET, x)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_all_zero_weight_gives_bias():
    bias = np.linspace(-1, 1, 5, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 11)).astype(np.float32)
    call = sparse_conv2d(x.shape, np.zeros((5, 3, 3, 3), np.float32), bias, target=TARGET)
    out = run_kernel(call, TARGET, x)
    np.testing.assert_array_equal(out, np.broadcast_to(bias[None, :, None, None], out.shape))


@settings(max_examples=6, deadline=None)
@given(
    h=st.integers(3, 12),
    wd=st.integers(3, 21),
    k=st.integers(1, 3),
    sw=st.integers(1, 2),
    dw=st.integers(1, 2),
    pad=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_flat_random_shapes(h, wd, k, sw, dw, pad, seed):
    rng = np.random.default_rng(seed)
    if min(h, wd) + 2 * pad < dw * (k - 1) + 1:
        return  # empty output
    w = sparse_weight(rng, (3, 2, k, k), 0.5)
    x = rng.standard_normal((1, 2, h, wd)).astype(np.float32)
    padding = (pad, pad, pad, pad)
    call = sparse_conv2d(x.shape, w, None, ConvAttrs((1, sw), padding, (dw, dw)), target=TARGET)
    check(call, x, conv_ref(x, w, None, (1, sw), padding, (dw, dw)))


@pytest.mark.parametrize("cores", [1, 2])
def test_flat_default_knobs_follow_the_target(cores):
    """16 lanes on a whole-512-bit AVX-512 core, 8 on AVX2 and Zen 4; on one core every
    output channel shares a channel block, on two the groups split over the cores."""
    w = sparse_weight(np.random.default_rng(0), (64, 16, 3, 3), 0.2)
    x_shape = (1, 16, 16, 16)
    lanes_of = {"skylake-avx512": 16, "znver4": 8, "haswell": 8}
    for mcpu, lanes in lanes_of.items():
        target = resolve_target({"kind": "llvm", "mcpu": mcpu, "num-cores": cores})
        call = sparse_conv2d(x_shape, w, target=target, layout="flat")
        vectors, _, oblock = call.info["tile"]
        assert call.info["lanes"] == lanes and vectors == {8: 14, 16: 28}[lanes]
        assert oblock == (8 if lanes == 8 else 64 // cores)


def test_flat_rejects_row_strides_and_bad_knobs():
    w = np.ones((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="row stride"):
        sparse_conv2d((1, 1, 8, 8), w, conv=ConvAttrs(strides=(2, 1)), layout="flat")
    with pytest.raises(ValueError, match="vectors"):
        sparse_conv2d((1, 1, 8, 8), w, layout="flat", vectors=0)
    with pytest.raises(ValueError, match="lanes"):
        sparse_conv2d((1, 1, 8, 8), w, layout="flat", lanes=4)
    with pytest.raises(ValueError, match="layout"):
        sparse_conv2d((1, 1, 8, 8), w, layout="im2col")


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_samples_in_parallel_match_one_sample_split(batch):
    """On a 2-core target a batch of >= 2 runs whole samples in parallel, each with its own
    scratch; a batch of 1 splits the sample's output channels. Both equal the reference."""
    rng = np.random.default_rng(11)
    w = sparse_weight(rng, (16, 8, 5, 5), 0.2)
    bias = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal((batch, 8, 14, 14)).astype(np.float32)
    two_cores = resolve_target({"kind": "llvm", "num-cores": 2})
    call = sparse_conv2d(x.shape, w, bias, ConvAttrs(), "relu", two_cores, layout="flat")
    assert call.info["batch_parallel"] == (batch >= 2)
    check(call, x, conv_ref(x, w, bias, (1, 1), (0, 0, 0, 0), (1, 1), "relu"))


def test_samples_in_parallel_needs_a_batch_per_core_and_small_scratch():
    from tvm_sparse.schedules._conv_dims import SAMPLE_SCRATCH_BYTES, samples_in_parallel

    two_cores = resolve_target({"kind": "llvm", "num-cores": 2})
    assert samples_in_parallel(64, two_cores, 200 << 10)
    assert not samples_in_parallel(1, two_cores, 200 << 10)  # one sample: split it
    assert not samples_in_parallel(64, two_cores, SAMPLE_SCRATCH_BYTES + 1)  # ResNet-size planes
    sixteen = resolve_target({"kind": "llvm", "num-cores": 16})
    assert not samples_in_parallel(8, sixteen, 1 << 10)  # fewer samples than cores
