"""Dense x86 kernels against numpy: odd sizes, tails, batch 1, bias, relu / gelu, conv geometry."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.dense_x86 import (
    GemmTiling,
    dense_conv2d,
    dense_linear,
)
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.target import resolve_target, vector_lanes

TARGET = resolve_target("llvm")
_erf = np.vectorize(math.erf)


def _act(y: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "gelu":
        return 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    if activation == "relu6":
        return np.clip(y, 0.0, 6.0)
    if activation in ("silu", "sigmoid"):
        gate = 1.0 / (1.0 + np.exp(-y.astype(np.float64)))
        return (y * gate if activation == "silu" else gate).astype(np.float32)
    return y


def _ref_linear(x, w, b, activation):
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return _act(y + (0 if b is None else b), activation)


def _ref_conv(x, w, b, strides, padding, dilation, groups, activation):
    n, _, _, _ = x.shape
    co, cg, kh, kw = w.shape
    top, left, bottom, right = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (xp.shape[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, co, oh, ow))
    cog = co // groups
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            patch = xp[
                :,
                :,
                y0 : y0 + strides[0] * (oh - 1) + 1 : strides[0],
                x0 : x0 + strides[1] * (ow - 1) + 1 : strides[1],
            ]
            for g in range(groups):
                out[:, g * cog : (g + 1) * cog] += np.einsum(
                    "nchw,oc->nohw",
                    patch[:, g * cg : (g + 1) * cg],
                    w[g * cog : (g + 1) * cog, :, i, j],
                )
    if b is not None:
        out += b[None, :, None, None]
    return _act(out, activation)


def _check_linear(m, k, n, with_bias, activation, seed=0, tiling=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if with_bias else None
    x = rng.standard_normal((m, k), dtype=np.float32)
    call = dense_linear(m, w, b, activation, TARGET, tiling=tiling)
    y = run_kernel(call, TARGET, x)
    assert y.shape == (m, n)
    np.testing.assert_allclose(y, _ref_linear(x, w, b, activation), rtol=1e-4, atol=1e-4)
    return call


def _check_conv(
    x_shape, w_shape, strides, padding, dilation, groups, with_bias, activation, layout=None
):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32) if with_bias else None
    x = rng.standard_normal(x_shape, dtype=np.float32)
    call = dense_conv2d(
        x_shape,
        w,
        b,
        ConvAttrs(strides, padding, dilation, groups),
        activation,
        TARGET,
        layout=layout,
    )
    y = run_kernel(call, TARGET, x)
    ref = _ref_conv(x, w, b, strides, padding, dilation, groups, activation)
    assert y.shape == ref.shape == call.out_shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    return call


@pytest.mark.parametrize(
    "m, k, n, with_bias, activation",
    [
        (1, 64, 48, True, None),  # GEMV path, exact tile
        (1, 37, 20, False, "relu"),  # GEMV, column tail
        (3, 50, 17, True, "gelu"),  # 3 rows, wide tile
        (7, 33, 20, True, "relu"),  # row tail (7 -> 8) and column tail
        (64, 96, 40, False, "gelu"),  # micro-kernel rows, column tail
    ],
)
def test_linear_matches_numpy(m, k, n, with_bias, activation):
    call = _check_linear(m, k, n, with_bias, activation)
    assert call.info["macs"] == m * k * n
    assert call.func.attrs["tirx.is_scheduled"]
    assert call.func.attrs["tirx.noalias"]
    assert len(call.consts) == 1 + int(with_bias)


def test_linear_explicit_tiling_with_parallel_and_k_unroll():
    _check_linear(9, 24, 33, True, None, tiling=GemmTiling(mr=4, nb=16, k_unroll=4))


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, dilation, groups, with_bias, activation",
    [
        ((1, 1, 12, 12), (8, 1, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, "relu"),  # GSC1
        ((2, 20, 9, 8), (20, 20, 3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 1, True, "gelu"),  # gemm
        ((2, 3, 9, 8), (20, 3, 3, 2), (2, 1), (1, 0, 2, 1), (2, 1), 1, True, "gelu"),
        ((2, 16, 7, 7), (24, 16, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False, None),  # 1x1
        ((1, 12, 6, 6), (20, 12, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, "gelu"),  # 1x1
        ((1, 4, 5, 3), (6, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, "relu"),  # ow=3
        # 166 KB of weights: the next channel panel prefetched; 9 wide: the 7-pixel tiles overlap
        ((1, 64, 9, 9), (72, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, "relu6"),
        ((2, 6, 11, 9), (6, 2, 3, 3), (2, 1), (1, 0, 2, 1), (1, 2), 3, True, None),  # groups
        ((1, 8, 10, 10), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, True, "relu"),  # dw
    ],
)
def test_conv2d_matches_numpy(
    x_shape, w_shape, strides, padding, dilation, groups, with_bias, activation
):
    call = _check_conv(x_shape, w_shape, strides, padding, dilation, groups, with_bias, activation)
    assert call.info["macs"] > 0
    assert call.func.attrs["tirx.is_scheduled"]


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.integers(1, 40),
    n=st.integers(1, 40),
    with_bias=st.booleans(),
    activation=st.sampled_from([None, "relu", "gelu"]),
)
def test_linear_random_shapes(m, k, n, with_bias, activation):
    _check_linear(m, k, n, with_bias, activation, seed=m * 1000 + k * 40 + n)


@settings(max_examples=10, deadline=None)
@given(
    hw=st.tuples(st.integers(3, 9), st.integers(3, 9)),
    ci=st.integers(1, 5),
    co=st.integers(1, 20),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    layout=st.sampled_from(["implicit_gemm", "planes"]),
)
def test_conv2d_random_shapes(hw, ci, co, kernel, stride, pad, layout):
    _check_conv(
        (1, ci, *hw),
        (co, ci, *kernel),
        (stride, stride),
        (pad,) * 4,
        (1, 1),
        1,
        True,
        None,
        layout=layout,
    )


@pytest.mark.parametrize("width", [7, 8, 9, 17, 33])
@pytest.mark.parametrize("ci, groups", [(8, 1), (16, 2), (24, 1)])
@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0), (2, 2)])
def test_implicit_gemm_transposes_eight_channel_blocks(width, ci, groups, stride, pad):
    """The NHWC copy transposes 8 channels x 8 pixels in registers where the channels come in
    eights: rows of whole blocks, a pixel tail (9, 17, 33) and rows too short for a block (7)."""
    _check_conv(
        (2, ci, 6, width), (16, ci // groups, 3, 3), (stride, stride), (pad,) * 4, (1, 1),
        groups, True, "relu", layout="implicit_gemm",
    )  # fmt: skip


def test_implicit_gemm_on_one_thread_builds_past_int32_prefetch_products():
    """GSC's 64 -> 64 5x5 conv at batch 64 on one thread prefetches its 400 KB of weights
    spread over 2,048,000 steps of 3,200 lines: the product passed int32 and the build
    failed (plain TVM's baseline of the model with it)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 64, 14, 14), dtype=np.float32)
    w = rng.standard_normal((64, 64, 5, 5), dtype=np.float32)
    call = dense_conv2d(x.shape, w, None, ConvAttrs(), None, TARGET, layout="implicit_gemm",
                        tiling=GemmTiling(mr=5, nb=32, parallel=False))  # fmt: skip
    assert "llvm.prefetch" in call.func.script()
    ref = _ref_conv(x, w, None, (1, 1), (0,) * 4, (1, 1), 1, None)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("width", [31, 32, 33, 34, 65])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("layout", ["planes", "panel", "cotile"])
def test_strided_rows_are_copied_by_vector(width, stride, layout):
    """Tap planes and strided 1x1 pixel-panel convs copy input rows a vector at a time
    (stride 2: the even lanes of two loads, the last vector gathered so no load passes the
    row's last float): output widths either side of a multiple of 16 and 8."""
    rng = np.random.default_rng(2)
    kernel, pad = (3, 1) if layout == "planes" else (1, 0)
    w = rng.standard_normal((8, 3, kernel, kernel), dtype=np.float32)
    x = rng.standard_normal((1, 3, 5, width), dtype=np.float32)
    conv = ConvAttrs((stride, stride), (pad,) * 4, (1, 1), 1)
    if layout == "planes":
        call = dense_conv2d(x.shape, w, None, conv, None, TARGET, layout="planes")
    else:
        call = dense_conv2d(x.shape, w, None, conv, None, TARGET, layout="pointwise",
                            tiling=GemmTiling(mr=8, nb=32), pointwise_order=layout)  # fmt: skip
        assert call.info["order"] == layout
    ref = _ref_conv(x, w, None, (stride, stride), (pad,) * 4, (1, 1), 1, None)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_rejects_bad_arguments():
    w = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="activation"):
        dense_linear(1, w, activation="tanh", target=TARGET)
    with pytest.raises(ValueError, match="disagree"):
        dense_conv2d((1, 3, 8, 8), np.zeros((4, 2, 3, 3), np.float32), target=TARGET)
    with pytest.raises(ValueError, match="empty"):
        dense_conv2d((1, 2, 2, 2), np.zeros((4, 2, 3, 3), np.float32), target=TARGET)


@pytest.mark.parametrize("activation", ["silu", "gelu", "sigmoid", "relu"])
@pytest.mark.parametrize("order, hw", [("panel", 7), ("cotile", 7), ("channels", 5)])
def test_pointwise_conv_runs_overlapping_tiles_in_one_task(order, hw, activation):
    """The last pixel tile overlaps the one before it (49 pixels in 32-pixel panels; 25 in
    7-pixel tiles). A heavy activation is applied in place over a stored tile, so if the two
    tiles ran on two threads at once, one could read the other's activated value and activate
    it twice (silu(silu(x)): 169 wrong values of 256 -> 130 channels at 7x7, once, under load).
    With a heavy activation the last two tiles run in one task, one after the other (the serial
    loop over them is in the kernel); a light one stores final values only, twice harmlessly."""
    w = np.random.default_rng(0).standard_normal((130, 256, 1, 1)).astype(np.float32)
    call = dense_conv2d(
        (1, 256, hw, hw), w, activation=activation, target=TARGET, pointwise_order=order
    )
    assert (call.info["layout"], call.info["order"]) == ("pointwise", order)
    merged = re.search(r"for \w+ in range\((\w+), \1 \+ \(T\.Cast", call.func.script())
    assert (merged is not None) == (activation != "relu")
    x = np.random.default_rng(1).standard_normal((1, 256, hw, hw)).astype(np.float32)
    ref = _ref_conv(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, activation)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "silu"])  # silu: a pass over the stored tile
@pytest.mark.parametrize("order", ["panel", "cotile", "channels"])
@pytest.mark.parametrize(
    "x_shape, co, stride, tiling",
    [
        ((1, 8, 12, 12), 12, 1, None),  # 144 pixels: panels cross image rows
        ((2, 16, 9, 7), 20, 1, GemmTiling(mr=6, nb=64)),  # batch 2, 63 pixels < nb, co tail
        ((1, 24, 14, 14), 64, 2, GemmTiling(mr=12, nb=32)),  # stride-2 downsample, 7x7 out
        ((2, 5, 11, 13), 7, 2, GemmTiling(mr=24, nb=16)),  # odd sizes, channels < mr
        ((1, 32, 56, 56), 16, 1, GemmTiling(mr=6, nb=16)),  # the AVX2 tile
        ((1, 40, 7, 7), 24, 1, GemmTiling(mr=8, nb=32, parallel=False)),  # 49 = 32 + 17
        ((3, 6, 1, 1), 5, 1, GemmTiling(mr=8, nb=32)),  # one pixel: scalar panels
        ((1, 4, 3, 3), 9, 2, GemmTiling(mr=8, nb=16)),  # 2x2 out: 4-lane panels
        ((1, 256, 7, 7), 130, 1, None),  # 133 KB of weights: prefetched a tile ahead
        # a 541 KB input: the next pixel panel prefetched (one thread, panel order); 2116
        # pixels, so the last panel overlaps and its prefetch stays in the image
        ((1, 64, 46, 46), 24, 1, GemmTiling(mr=6, nb=64, parallel=False)),
    ],
)
def test_pointwise_conv_matches_numpy(x_shape, co, stride, tiling, order, activation):
    """1x1 convs take the NCHW pixel-panel GEMM (no NHWC relayout), exact for every tile and
    loop order, the last panel overlapping the one before it when the pixels do not divide."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((co, x_shape[1], 1, 1), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs((stride, stride), (0, 0, 0, 0))
    call = dense_conv2d(x_shape, w, b, conv, activation, TARGET, tiling=tiling,
                        pointwise_order=order)  # fmt: skip
    assert (call.info["layout"], call.info["order"]) == ("pointwise", order)
    ref = _ref_conv(x, w, b, (stride, stride), (0, 0, 0, 0), (1, 1), 1, activation)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_pointwise_conv_prefetches_a_big_input_only():
    """The next pixel panel's input rows are prefetched where the input is past half an L2
    (in a model it comes from L3), in the panel order on one thread; not for small inputs."""

    def prefetches(x_shape, order, parallel=False):
        w = np.ones((24, x_shape[1], 1, 1), np.float32)
        tiling = GemmTiling(mr=6, nb=64, parallel=parallel)
        call = dense_conv2d(x_shape, w, None, ConvAttrs(), None, TARGET, tiling=tiling,
                            pointwise_order=order)  # fmt: skip
        return "llvm.prefetch" in call.func.script()

    assert prefetches((1, 64, 46, 46), "panel")
    assert not prefetches((1, 64, 28, 28), "panel")  # 200 KB: in L2 already
    assert not prefetches((1, 64, 46, 46), "panel", parallel=True)
    assert not prefetches((1, 64, 46, 46), "cotile")


def test_pointwise_conv_stages_an_input_up_to_half_an_l2_whole_and_still_computes_it():
    """Between 512 KB and 1 MB the input is prefetched whole, in memory order, before the
    first panel (a loop of prefetches over every line); the result is unchanged."""

    def staged(call):  # the loop of prefetches over every line of the input
        return "for line in range(" in call.func.script()

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 192, 35, 35)).astype(np.float32)  # 940 KB
    w = rng.standard_normal((32, 192, 1, 1)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    tiling = GemmTiling(mr=8, nb=32, parallel=False)
    call = dense_conv2d(x.shape, w, b, ConvAttrs(), "relu", TARGET, tiling=tiling,
                        pointwise_order="panel")  # fmt: skip
    assert staged(call)
    ref = _ref_conv(x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)
    bigger = dense_conv2d((1, 256, 56, 56), w[:, :1].repeat(256, 1), b, ConvAttrs(), "relu",
                          TARGET, tiling=tiling, pointwise_order="panel")  # fmt: skip
    assert not staged(bigger)  # 3.2 MB: past half an L2


def test_pointwise_tiling_follows_vector_width_and_shape():
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.pointwise_conv_x86 import (
        choose_pointwise,
        choose_pointwise_order,
        choose_pointwise_tiling,
    )

    tile = choose_pointwise_tiling(256, 56 * 56, 16)
    assert (tile.mr, tile.nb) == (6, 64)  # 56x56 and up: the 64-pixel panels
    tile = choose_pointwise_tiling(256, 28 * 28, 16)
    assert (tile.mr, tile.nb) == (12, 32)  # 28x28 and down: 12 x 32, even padding 256 to 264
    assert choose_pointwise_tiling(64, 28 * 28, 16).mr == 8  # ... but not 64 to 72
    assert choose_pointwise_tiling(64, 56 * 56, 16).nb == 64
    assert choose_pointwise_tiling(16, 28 * 28, 16).mr == 8  # 16 = 2 x 8; 12 would pad to 24
    assert choose_pointwise_tiling(36, 28 * 28, 16).mr == 12  # 36 = 3 x 12
    # 196 pixels: 7 panels of 32 (the last overlaps by 28) beat 13 slower panels of 16
    assert choose_pointwise_tiling(256, 14 * 14, 16).nb == 32
    assert choose_pointwise_tiling(256, 56 * 56, 8).nb == 16  # AVX2: 6 x 16 (12 ymm)
    # Zen 4 (zmm as two halves): 12 x 16 as fast per pixel, so its smaller overlap wins below
    # 56x56; the 64-pixel panels keep 56x56 and 8 x 32 keeps 64 channels
    zen4 = {"zmm_split": True}
    assert (choose_pointwise_tiling(672, 14 * 14, 16, **zen4).nb) == 16
    assert (choose_pointwise_tiling(256, 28 * 28, 16, **zen4).nb) == 16
    assert choose_pointwise_tiling(256, 56 * 56, 16, **zen4).nb == 64
    assert choose_pointwise_tiling(40, 28 * 28, 16, **zen4).mr == 8
    # the channel tile outer order while one sample's packed input fits in half an L2
    geo = conv_geometry((1, 16, 112, 112), (96, 16, 1, 1), ConvAttrs())
    assert choose_pointwise_order(geo, 32) == "cotile"  # 800 KB
    geo = conv_geometry((1, 32, 112, 112), (16, 32, 1, 1), ConvAttrs())
    assert choose_pointwise_order(geo, 32) == "panel"  # projection: the panel outer
    # 7x7: 16-lane panels compute 64 of 49 pixels; the channels form takes 7 tiles of 7
    geo = conv_geometry((1, 960, 7, 7), (320, 960, 1, 1), ConvAttrs())
    tile, order = choose_pointwise(geo, 16)
    assert (tile.mr, tile.nb, order) == (7, 32, "channels")
    tile, order = choose_pointwise(geo, 8)  # not on AVX2 (unmeasured there)
    assert order != "channels"
    geo = conv_geometry((1, 64, 14, 14), (384, 64, 1, 1), ConvAttrs())
    assert choose_pointwise(geo, 16)[1] != "channels"  # 196 -> 224: not enough to switch
    # ... except for wide convs: 64-channel vector panels x 6 pixels (ResNet-50's layer 3)
    geo = conv_geometry((1, 1024, 14, 14), (256, 1024, 1, 1), ConvAttrs())
    tile, order = choose_pointwise(geo, 16)
    assert (tile.mr, tile.nb, order) == (6, 64, "channels")
    geo = conv_geometry((1, 576, 14, 14), (96, 576, 1, 1), ConvAttrs())
    assert choose_pointwise(geo, 16)[1] != "channels"  # 96 channels would pad to 128
    geo = conv_geometry((1, 512, 28, 28), (1024, 512, 1, 1), ConvAttrs((2, 2)))
    assert choose_pointwise(geo, 16)[1] != "channels"  # the stride-2 downsample
    # ... and Inception's 17x17 (32-pixel panels compute 320 of 289) with an input under 1 MB,
    # not 28x28 (panels overcompute 2%) nor a 17x17 input of 1.2 MB
    geo = conv_geometry((1, 768, 17, 17), (192, 768, 1, 1), ConvAttrs())
    assert choose_pointwise(geo, 16) == (GemmTiling(mr=6, nb=64, parallel=False), "channels")
    geo = conv_geometry((1, 512, 28, 28), (128, 512, 1, 1), ConvAttrs())
    assert choose_pointwise(geo, 16)[1] == "panel"
    geo = conv_geometry((1, 1088, 17, 17), (192, 1088, 1, 1), ConvAttrs())
    assert choose_pointwise(geo, 16)[1] == "panel"
    # a padded 1x1 is not pointwise: it keeps the implicit GEMM (many channels) or the tap
    # planes (few channels, as a stem)
    w = np.ones((4, 32, 1, 1), np.float32)
    call = dense_conv2d((1, 32, 5, 5), w, None, ConvAttrs((1, 1), (1, 1, 1, 1)), None, TARGET)
    assert call.info["layout"] == "implicit_gemm"
    call = dense_conv2d((1, 3, 5, 5), w[:, :3], None, ConvAttrs((1, 1), (1, 1, 1, 1)), None, TARGET)
    assert call.info["layout"] == "planes"
    with pytest.raises(ValueError, match="layout"):
        dense_conv2d((1, 3, 5, 5), w[:, :3], layout="fft", target=TARGET)
    with pytest.raises(ValueError, match="pointwise"):
        dense_conv2d((1, 3, 5, 5), np.ones((4, 3, 3, 3), np.float32), layout="pointwise")


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, dilation, activation, tile",
    [
        ((1, 3, 23, 21), (10, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), "relu", None),  # stem
        ((2, 1, 12, 12), (9, 1, 5, 5), (1, 1), (0, 0, 0, 0), (1, 1), None, (4, 4)),  # GSC1
        ((1, 6, 9, 8), (5, 6, 3, 2), (2, 1), (1, 0, 2, 1), (2, 1), "gelu", (6, 4)),
        ((2, 4, 5, 5), (7, 4, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None, (3, 3)),  # tail tile
        ((1, 20, 8, 8), (33, 20, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), "relu6", (2, 6)),
        ((1, 3, 17, 17), (8, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "silu", None),  # B0 stem
    ],
)
def test_planes_conv_matches_numpy(x_shape, w_shape, strides, padding, dilation, activation, tile):
    """The tap-plane dense conv: any stride / padding / dilation, channel and position tails."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs(strides, padding, dilation, 1)
    call = dense_conv2d(x_shape, w, b, conv, activation, TARGET, layout="planes", planes_tile=tile)
    assert call.info["layout"] == "planes"
    ref = _ref_conv(x, w, b, strides, padding, dilation, 1, activation)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, co, padding, activation, tile",
    [
        ((1, 4, 14, 14), 5, (1, 1, 1, 1), None, None),  # 8-lane panels, channel tails
        ((2, 3, 13, 17), 7, (1, 1, 1, 1), "relu", None),  # batch 2, odd output: row/col tails
        ((1, 16, 12, 30), 20, (0, 1, 2, 0), "gelu", (6, 4)),  # asymmetric padding
        ((1, 24, 40, 40), 9, (1, 1, 1, 1), None, (8, 2)),  # 16-lane panels, 2 per row
        ((1, 2, 6, 14), 3, (0, 0, 0, 0), "relu", (4, 3)),  # no padding, output 4x12
        # 16-lane panels of 2 stacked tile rows (rows of <= 8 tiles): odd tile rows (7), a
        # heavy activation, batch 2, the 16-wide output stored as whole vectors
        ((1, 16, 14, 14), 12, (1, 1, 1, 1), "silu", None),
        ((2, 5, 11, 12), 9, (1, 1, 1, 1), "relu", (8, 2)),
        ((1, 8, 16, 16), 16, (1, 1, 1, 1), "gelu", (4, 4)),
    ],
)
@pytest.mark.parametrize("out_tile", [2, 4])
def test_winograd_conv_matches_numpy(x_shape, co, padding, activation, tile, out_tile):
    """F(2x2, 3x3) and F(4x4, 3x3) equal the direct conv up to float32 rounding, at every
    tail (F(4x4)'s transforms multiply by up to 8, so its rounding is ~10x F(2x2)'s)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((co, x_shape[1], 3, 3), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs((1, 1), padding)
    call = dense_conv2d(
        x_shape, w, b, conv, activation, TARGET, layout="winograd",
        winograd_tile=(*(tile or (4, 4)), out_tile),
    )  # fmt: skip
    assert call.info["layout"] == "winograd"
    assert call.info["out_tile"] == out_tile
    ref = _ref_conv(x, w, b, (1, 1), padding, (1, 1), 1, activation)
    atol = 1e-4 if out_tile == 2 else 2e-5 * np.abs(ref).max()
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=atol)


def test_winograd_is_the_default_for_wide_3x3_stride_1_only():
    w = np.ones((8, 32, 3, 3), np.float32)
    pad1 = ConvAttrs((1, 1), (1, 1, 1, 1))
    assert dense_conv2d((1, 32, 28, 28), w, None, pad1, None, TARGET).info["layout"] == "winograd"
    narrow = dense_conv2d((1, 32, 7, 7), w, None, pad1, None, TARGET)  # 7 wide: too few tiles
    assert narrow.info["layout"] == "implicit_gemm"
    strided = dense_conv2d((1, 32, 28, 28), w, None, ConvAttrs((2, 2), (1, 1, 1, 1)), None, TARGET)
    assert strided.info["layout"] == "implicit_gemm"
    with pytest.raises(ValueError, match="3x3 stride-1"):
        dense_conv2d((1, 32, 28, 28), w, None, ConvAttrs((2, 2), (1, 1, 1, 1)), None, TARGET,
                     layout="winograd")  # fmt: skip


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, dilation",
    [
        ((1, 8, 16, 16), (12, 8, 3, 3), (1, 1), (12, 12, 12, 12), (12, 12)),  # ASPP rate 12
        ((1, 8, 16, 16), (12, 8, 3, 3), (1, 1), (6, 6, 6, 6), (6, 6)),  # rate 6: partial tiles
        ((2, 6, 16, 16), (20, 6, 3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # batch 2, rate 2
        ((1, 5, 20, 9), (7, 5, 3, 3), (2, 1), (4, 0, 3, 5), (3, 2)),  # stride, asymmetric pads
        ((1, 4, 5, 5), (9, 4, 3, 3), (1, 1), (4, 4, 4, 4), (4, 4)),  # 5 wide: whole-row tiles
        ((1, 3, 8, 8), (16, 3, 3, 3), (1, 1), (9, 9, 9, 9), (9, 9)),  # taps past the image
    ],
)
def test_implicit_gemm_skips_taps_that_read_only_padding(
    x_shape, w_shape, strides, padding, dilation
):
    """Dilated convs whose padding holds whole taps skip them per tile; the result is the
    conv's, at every row and column where a tap is partly, wholly or never inside."""
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import clips_taps

    conv = ConvAttrs(strides, padding, dilation)
    assert clips_taps(conv_geometry(x_shape, w_shape, conv))
    _check_conv(x_shape, w_shape, strides, padding, dilation, 1, True, "relu", "implicit_gemm")


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, tiling",
    [
        ((1, 12, 17, 17), (70, 12, 1, 7), (1, 1), (0, 3, 0, 3), GemmTiling(mr=6, nb=64)),
        ((1, 9, 19, 19), (64, 9, 3, 3), (2, 2), (0, 0, 0, 0), GemmTiling(mr=6, nb=64)),
        ((2, 5, 30, 30), (33, 5, 3, 3), (1, 1), (1, 1, 1, 1), GemmTiling(mr=14, nb=32)),
    ],
)
def test_implicit_gemm_wide_tiles(x_shape, w_shape, strides, padding, tiling):
    """The 6 x 64 and 14 x 32 tiles: channel tails inside a 64-wide panel, overlapping row
    tiles (17 = 6 + 6 + 5), stride 2, batch 2."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs(strides, padding)
    call = dense_conv2d(x_shape, w, b, conv, "relu", TARGET, tiling=tiling, layout="implicit_gemm")
    ref = _ref_conv(x, w, b, strides, padding, (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_plain_convs_keep_static_tap_loops():
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import clips_taps

    assert not clips_taps(conv_geometry((1, 8, 9, 9), (8, 8, 3, 3), ConvAttrs((1, 1), (1,) * 4)))
    dilated = ConvAttrs((1, 1), (1,) * 4, (2, 2))  # padding less than a tap: nothing to skip
    assert not clips_taps(conv_geometry((1, 8, 9, 9), (8, 8, 3, 3), dilated))


@pytest.mark.parametrize(
    "x_shape, co, padding, tile",
    [
        ((1, 6, 40, 40), 10, (1, 1, 1, 1), (8, 2)),  # 40 panels in blocks of 2
        ((2, 5, 21, 19), 7, (0, 1, 2, 0), (4, 4)),  # batch 2, a partial last block
        ((1, 8, 14, 14), 9, (1, 1, 1, 1), (8, 2)),  # stacked tile rows, blocked
        ((1, 6, 40, 40), 10, (1, 1, 1, 1), (8, 2, 4)),  # F(4x4): 10 panels in blocks of 2
        ((2, 5, 21, 19), 7, (0, 1, 2, 0), (4, 4, 4)),  # F(4x4), batch 2, partial last block
    ],
)
def test_winograd_blocks_of_panels(monkeypatch, x_shape, co, padding, tile):
    """Stages 1-3 run block by block of panels (V and M sized to L2); with tiny blocks every
    block boundary, and a last block past the last panel, still gives the conv."""
    from tvm_sparse.schedules import winograd_conv_x86

    monkeypatch.setattr(winograd_conv_x86, "WINOGRAD_BLOCK_BYTES", 1)  # blocks of `vectors`
    rng = np.random.default_rng(6)
    w = rng.standard_normal((co, x_shape[1], 3, 3), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs((1, 1), padding)
    call = dense_conv2d(x_shape, w, b, conv, "relu", TARGET, layout="winograd", winograd_tile=tile)
    assert "blk" in call.func.script()
    ref = _ref_conv(x, w, b, (1, 1), padding, (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("out_tile", [2, 4])
@pytest.mark.parametrize(
    "x_shape, co, padding",
    [
        ((3, 5, 20, 40), 7, (1, 1, 1, 1)),  # rows of 10-20 tiles: one or two panels a row
        ((3, 4, 12, 14), 6, (0, 1, 1, 0)),  # short rows stacked into a panel
    ],
)
def test_winograd_plane_ring_wraps_across_blocks_and_samples(
    monkeypatch, x_shape, co, padding, out_tile, parallel
):
    """The planes are a ring of the rows one block reads, filled block by block: with tiny
    blocks the ring wraps many times and crosses samples, and the conv is unchanged."""
    from tvm_sparse.schedules import winograd_conv_x86 as wg

    monkeypatch.setattr(wg, "WINOGRAD_BLOCK_BYTES", 1)  # blocks of `vectors` panels
    n, _, h, w_in = x_shape
    top, left, bottom, right = padding
    oh, ow = h + top + bottom - 2, w_in + left + right - 2
    th, tw = -(-oh // out_tile), -(-ow // out_tile)
    _, stack, per_row, tpanels = wg.panel_layout(th, tw, 16)
    rows = out_tile * tpanels * stack + 2
    assert wg.plane_ring(n, th, tw, 16, out_tile, 2) < n * rows  # it wraps
    rng = np.random.default_rng(8)
    wt = rng.standard_normal((co, x_shape[1], 3, 3), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs((1, 1), padding)
    call = wg.winograd_conv2d(
        x_shape, wt, b, conv, "relu", TARGET, lanes=16, tile=(8, 2), parallel=parallel,
        out_tile=out_tile,
    )  # fmt: skip
    ref = _ref_conv(x, wt, b, (1, 1), padding, (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=2e-4)


def test_winograd_plane_ring_holds_a_blocks_rows():
    from tvm_sparse.schedules.winograd_conv_x86 import plane_ring

    # 147x147 outputs by F(4x4): 37 tile rows of 3 panels; 4 panels span at most 2 tile rows
    assert plane_ring(1, 37, 37, 16, 4, 4) == 2 * 4 + 2 + 1
    assert plane_ring(1, 37, 37, 16, 4, 111) == 4 * 37 + 2  # one block: every row, no wrap
    assert plane_ring(2, 37, 37, 16, 4, 222) == 2 * (4 * 37 + 2)


def test_winograd_block_fits_the_budget():
    from tvm_sparse.schedules.winograd_conv_x86 import WINOGRAD_BLOCK_BYTES, winograd_block

    # Inception-v3's 32->64 at 147x147: 370 panels of 16 tiles, 98 KB of V and M each
    block = winograd_block(370, 2, 32, 64, 16)
    assert block % 2 == 0 and block * 16 * 16 * 4 * (32 + 64) <= WINOGRAD_BLOCK_BYTES
    assert winograd_block(7, 2, 8, 8, 16) == 8  # never more than the panels, rounded up
    # 512 channels at 14x14: 16 MB of U re-read per block would cost more than V and M
    assert winograd_block(4, 2, 512, 512, 16) == 4
    assert winograd_block(56, 2, 64, 64, 16) < 56  # 64 at 56x56: U fits in L2, blocked


def test_winograd_stacks_narrow_tile_rows_into_a_panel():
    from tvm_sparse.schedules.winograd_conv_x86 import panel_layout

    assert panel_layout(28, 28, 16) == (16, 1, 2, 28)  # 56x56: 2 panels a row
    assert panel_layout(14, 14, 16) == (16, 1, 1, 14)  # 28x28: 14 of 16 lanes
    assert panel_layout(7, 7, 16) == (8, 2, 1, 4)  # 14x14: 2 rows of 7 (of 8) a panel
    assert panel_layout(7, 7, 8) == (8, 1, 1, 7)  # AVX2: a row a panel, as before
    assert panel_layout(3, 3, 16) == (4, 4, 1, 1)


def test_only_zen4_splits_zmm():
    from tvm_sparse.target import cpu_isa

    def isa(mcpu: str):
        return cpu_isa(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))

    assert isa("znver4").zmm_split and isa("znver4").avx512
    assert not isa("sapphirerapids").zmm_split and isa("sapphirerapids").avx512
    assert not isa("znver3").zmm_split and not isa("znver3").avx512


def test_winograd_default_tile_follows_isa_and_panels():
    """8 channels x 2 panels with AVX-512's registers on few panels (batch 1), else 4 x 4."""
    from tvm_sparse.schedules.winograd_conv_x86 import default_tile

    assert default_tile(16, panels=14, wide_isa=True) == (8, 2)  # 28x28, batch 1
    assert default_tile(16, panels=14 * 16, wide_isa=True) == (4, 4)  # batch 16
    assert default_tile(8, panels=7, wide_isa=False) == (4, 4)  # AVX2: 16 registers


def test_winograd_takes_4x4_output_tiles_with_a_register_tile_for_its_panels():
    """F(4x4, 3x3) where its panels fill the register tile's twice: ResNet's 56x56 and 28x28
    (14 and 4 panels at batch 1) with 8 x 2 register tiles on AVX-512; 14x14 (its 16 tiles
    make one panel) keeps F(2x2) at batch 1, and F(4x4) with a 16 x 1 tile is the tuner's."""
    from tvm_sparse.schedules.winograd_conv_x86 import default_out_tile, default_tile

    assert default_out_tile(1, 56, 56, 16, wide_isa=True) == 4
    assert default_out_tile(1, 28, 28, 16, wide_isa=True) == 4
    assert default_out_tile(1, 14, 14, 16, wide_isa=True) == 2
    assert default_out_tile(4, 14, 14, 16, wide_isa=True) == 4
    assert default_tile(16, panels=4, wide_isa=True) == (8, 2)
    assert default_tile(16, panels=1, wide_isa=True) == (16, 1)
    assert default_out_tile(1, 56, 56, 8, wide_isa=False) == 4  # 28 panels of 8 tiles
    assert default_out_tile(1, 28, 28, 8, wide_isa=False) == 2  # 7 panels: under 2 x 4
    w = np.ones((8, 32, 3, 3), np.float32)
    for side, expected in ((28, (4, (8, 2, 16))), (14, (2, (8, 2, 16)))):
        conv = ConvAttrs((1, 1), (1, 1, 1, 1))
        call = dense_conv2d((1, 32, side, side), w, None, conv, None, TARGET)
        if vector_lanes(TARGET) >= 16:
            assert (call.info["out_tile"], call.info["tile"]) == expected
    forced = dense_conv2d((1, 32, 14, 14), w, None, conv, None, TARGET, layout="winograd",
                          winograd_tile=(16, 1, 4))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((1, 32, 14, 14)).astype(np.float32)
    ref = _ref_conv(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None)
    np.testing.assert_allclose(run_kernel(forced, TARGET, x), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "x_shape, kernel, stride, padding, with_bias, activation",
    [
        ((1, 8, 10, 10), 3, 1, (1, 1, 1, 1), True, "relu"),
        ((2, 5, 13, 17), 3, 2, (1, 1, 1, 1), True, None),  # batch 2, odd sizes, stride 2
        ((1, 4, 9, 40), 5, 2, (2, 2, 2, 2), False, "gelu"),  # 5x5, 16-lane rows with a tail
        ((1, 3, 7, 7), 3, 1, (0, 1, 2, 0), True, None),  # asymmetric padding
        ((1, 6, 4, 4), 3, 2, (0, 0, 1, 1), True, "relu"),  # TF-style "same" padding
        ((1, 7, 14, 14), 3, 1, (1, 1, 1, 1), True, "relu6"),  # 14-lane rows, MobileNet's ReLU6
        ((1, 5, 56, 56), 3, 2, (1, 1, 1, 1), True, "relu6"),  # stride 2, rows split in 2 x 16
        ((2, 3, 70, 75), 5, 2, (2, 2, 2, 2), True, None),  # 5x5 stride 2, 8-lane rows + tail
        ((1, 4, 15, 15), 3, 2, (1, 1, 1, 1), False, "relu"),  # odd input, 8-wide output rows
        ((1, 6, 28, 28), 5, 1, (2, 2, 2, 2), True, "silu"),  # EfficientNet: 28 = 16 + 12 tail
        ((1, 3, 9, 9), 3, 1, (1, 1, 1, 1), True, "sigmoid"),
        # stride 2 + a heavy activation: a pass of its own over each channel's output, whose
        # 35x35 = 76 16-lane vectors + 9 scalars (and 28x28 = 28 28-lane rows) must all be
        # activated once
        ((2, 3, 70, 70), 3, 2, (1, 1, 1, 1), True, "silu"),
        ((1, 4, 56, 56), 5, 2, (2, 2, 2, 2), False, "sigmoid"),
    ],
)
def test_depthwise_conv_matches_numpy(x_shape, kernel, stride, padding, with_bias, activation):
    """Depthwise convs take the padded-row vector kernel; the result equals the reference."""
    c = x_shape[1]
    call = _check_conv(
        x_shape, (c, 1, kernel, kernel), (stride, stride), padding, (1, 1), c, with_bias,
        activation,
    )  # fmt: skip
    assert call.info["layout"] == "depthwise"


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 5),
    size=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    kernel=st.sampled_from([1, 3, 5, 7]),
    stride=st.sampled_from([1, 2]),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
    rows=st.booleans(),
    activation=st.sampled_from([None, "relu", "silu"]),
)
def test_depthwise_random_shapes_both_forms(batch, channels, size, kernel, stride, pads, rows,
                                             activation):  # fmt: skip
    """Random images, filters, paddings and strides; the flat-plane form (stride 1 where it
    takes fewer instructions) and the row form (``lanes`` forced) alike."""
    from tvm_sparse.schedules.depthwise_conv_x86 import depthwise_conv2d, row_lanes

    h, w = size
    top, left, bottom, right = pads
    oh, ow = (h + top + bottom - kernel) // stride + 1, (w + left + right - kernel) // stride + 1
    if oh <= 0 or ow <= 0:
        return
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((batch, channels, h, w), dtype=np.float32)
    wt = rng.standard_normal((channels, 1, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal(channels, dtype=np.float32)
    lanes = row_lanes(ow, 16) if rows else None
    call = depthwise_conv2d(x.shape, wt, b, (stride, stride), pads, (1, 1), channels,
                            activation, TARGET, lanes=lanes)  # fmt: skip
    if rows or stride == 2:
        assert call.info["form"] == "rows"
    ref = _ref_conv(x, wt, b, (stride, stride), pads, (1, 1), channels, activation)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [33, 47, 64, 70])
@pytest.mark.parametrize("left", [0, 1, 2, 3])
@pytest.mark.parametrize("lanes", [None, 16, 4])
def test_depthwise_stride2_splits_wide_rows_straight_from_the_input(width, left, lanes):
    """Stride 2 splits each input row into its even and odd columns 32, 16, 8 and 1 at a time
    straight into the padded halves: every left padding parity, and vectors that spill past
    the row's end into the next rows (forced 16 lanes on 16-35 wide outputs)."""
    from tvm_sparse.schedules.depthwise_conv_x86 import depthwise_conv2d

    rng = np.random.default_rng(width * 10 + left)
    x = rng.standard_normal((2, 3, 9, width), dtype=np.float32)
    wt = rng.standard_normal((3, 1, 5, 5), dtype=np.float32)
    b = rng.standard_normal(3, dtype=np.float32)
    pads = (2, left, 1, 4 - left)
    call = depthwise_conv2d(x.shape, wt, b, (2, 2), pads, (1, 1), 3, "relu", TARGET, lanes=lanes)
    ref = _ref_conv(x, wt, b, (2, 2), pads, (1, 1), 3, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_depthwise_takes_the_flat_plane_for_wide_filters_on_multi_block_planes():
    from tvm_sparse.schedules.depthwise_conv_x86 import flat_block, prefers_flat

    assert prefers_flat((5, 5), 14, 18) and prefers_flat((5, 5), 28, 32)
    assert not prefers_flat((3, 3), 28, 30)  # 3x3: rows
    assert not prefers_flat((5, 5), 7, 11)  # one block of 5 vectors: every index constant
    assert [flat_block(v) for v in (1, 5, 6, 8, 9, 16, 53)] == [1, 5, 6, 4, 3, 4, 6]
    call = _check_conv((1, 12, 14, 14), (12, 1, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 12, True,
                       "silu")  # fmt: skip
    assert call.info["form"] == "flat"
    call = _check_conv((1, 12, 7, 7), (12, 1, 5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 12, True, "silu")
    assert call.info["form"] == "rows" and call.info["lanes"] == 8


def test_other_grouped_convs_take_the_grouped_kernels():
    call = _check_conv((1, 6, 8, 8), (6, 1, 3, 3), (3, 3), (1, 1, 1, 1), (1, 1), 6, True, None)
    assert call.info["layout"] == "planes"  # stride 3: not the depthwise kernel
    call = _check_conv(
        (1, 6, 8, 8), (6, 1, 3, 3), (3, 3), (1, 1, 1, 1), (1, 1), 6, True, None, "direct"
    )
    assert call.info["layout"] == "direct"  # the loop nest, on request


def test_depthwise_row_lanes_are_powers_of_two_that_waste_under_half_a_vector():
    from tvm_sparse.schedules.depthwise_conv_x86 import row_lanes

    assert [row_lanes(w, 16) for w in (112, 56, 32, 28, 14, 9, 7, 3, 1)] == [
        16, 8, 16, 16, 16, 16, 8, 4, 2
    ]  # fmt: skip
    assert row_lanes(112, 8) == 8  # never wider than the CPU's vectors
    assert row_lanes(20, 8) == 8  # AVX2: three vectors, the last spilling into the next row


@pytest.mark.parametrize("batch", [1, 3])
def test_planes_conv_runs_samples_in_parallel_at_batch(batch):
    """On a 2-core target a batch of >= 2 runs whole samples in parallel (own planes)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((9, 1, 5, 5), dtype=np.float32)
    x = rng.standard_normal((batch, 1, 12, 12), dtype=np.float32)
    two_cores = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    call = dense_conv2d(x.shape, w, None, ConvAttrs(), "relu", two_cores, layout="planes")
    assert call.info["batch_parallel"] == (batch >= 2)
    ref = _ref_conv(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, two_cores, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, co, stride, mr",
    [
        ((2, 24, 4, 4), 40, 1, 8),  # 4-wide rows: 2 whole rows per tile
        ((1, 16, 5, 3), 20, 1, 12),  # 4 rows of 3 over 5 rows: the last tile overlaps
        ((1, 8, 9, 6), 33, 2, 8),  # stride 2: 5x3 out, 2 rows of 3 (mr 8 -> 6)
        ((3, 5, 1, 2), 7, 1, 8),  # one output row: a row segment after all
    ],
)
def test_implicit_gemm_whole_row_tiles(x_shape, co, stride, mr):
    """Narrow outputs take whole rows per register tile, contiguous in NCHW."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((co, x_shape[1], 3, 3), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    conv = ConvAttrs((stride, stride), (1, 1, 1, 1))
    tiling = GemmTiling(mr=mr, nb=32)
    call = dense_conv2d(x_shape, w, b, conv, "relu", TARGET, layout="implicit_gemm", tiling=tiling)
    ref = _ref_conv(x, w, b, (stride, stride), (1, 1, 1, 1), (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "silu"])  # silu: overlapping tiles merged
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    "x_shape, co, kc, parallel",
    [
        ((1, 256, 7, 7), 130, 128, False),  # two chunks, 49 pixels: the last tile overlaps
        ((2, 384, 5, 6), 64, 96, True),  # four chunks, two samples, parallel panels
        ((1, 512, 14, 14), 70, 64, True),  # eight chunks, a padded last panel
    ],
)
def test_pointwise_channels_form_in_chunks_matches_numpy(
    x_shape, co, kc, parallel, residual, activation
):
    """The channels form taking the input channels ``kc`` at a time (partial sums in a scratch
    slot per pixel tile) gives the unchunked kernel's result, shortcut and activation last."""
    from tvm_sparse.schedules.pointwise_conv_x86 import (
        SPEC_ATTR,
        pointwise_kernel,
        pointwise_weight,
    )

    rng = np.random.default_rng(4)
    w = rng.standard_normal((co, x_shape[1], 1, 1), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    shortcut_shape = (x_shape[0], co, *x_shape[2:])
    shortcut = rng.standard_normal(shortcut_shape, dtype=np.float32)
    tiling = GemmTiling(mr=7, nb=32, parallel=parallel)
    call = dense_conv2d(x_shape, w, b, ConvAttrs((1, 1), (0,) * 4), activation, TARGET,
                        tiling=tiling, pointwise_order="channels")  # fmt: skip
    spec = {**json.loads(str(call.func.attrs[SPEC_ATTR])), "kc": kc, "residual": residual}
    consts = [pointwise_weight(w, spec), b] + ([shortcut] if residual else [])
    chunked = dataclasses.replace(call, func=pointwise_kernel(spec), consts=tuple(consts))
    ref = _ref_conv(x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1, None)
    ref = ref + shortcut if residual else ref
    ref = np.maximum(ref, 0) if activation == "relu" else ref / (1 + np.exp(-ref))
    np.testing.assert_allclose(run_kernel(chunked, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_pointwise_chunks_need_the_channels_form_and_a_divisor():
    from tvm_sparse.schedules.pointwise_conv_x86 import SPEC_ATTR, pointwise_kernel

    w = np.zeros((16, 256, 1, 1), np.float32)
    tiling = GemmTiling(mr=7, nb=32, parallel=False)
    call = dense_conv2d((1, 256, 7, 7), w, target=TARGET, tiling=tiling,
                        pointwise_order="channels")  # fmt: skip
    spec = json.loads(str(call.func.attrs[SPEC_ATTR]))
    assert spec["kc"] == 128  # the default: 256 input channels, two chunks
    with pytest.raises(ValueError, match="divide"):
        pointwise_kernel({**spec, "kc": 100})
    with pytest.raises(ValueError, match="channels form"):
        pointwise_kernel({**spec, "kc": 128, "order": "panel"})


@pytest.mark.parametrize("seed", range(6))
def test_winograd_random_shapes_match_numpy(seed):
    """Random batches, channels, sizes, asymmetric padding, activations and register tiles,
    F(2x2) and F(4x4): every tail and stacking of the tile panels against the direct conv."""
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        n, ci, co = int(rng.integers(1, 3)), int(rng.integers(1, 20)), int(rng.integers(1, 24))
        h, w = int(rng.integers(8, 40)), int(rng.integers(14, 40))
        pads = tuple(int(v) for v in rng.integers(0, 2, 4))
        act = [None, "relu", "silu", "relu6"][int(rng.integers(0, 4))]
        tile = [(8, 2, 4), (4, 4, 4), (16, 1, 4), (6, 4, 4), (8, 2, 2)][int(rng.integers(0, 5))]
        x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
        wt = rng.standard_normal((co, ci, 3, 3)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        conv = ConvAttrs((1, 1), pads)
        call = dense_conv2d(x.shape, wt, b, conv, act, TARGET, layout="winograd",
                            winograd_tile=tile)  # fmt: skip
        ref = _ref_conv(x, wt, b, (1, 1), pads, (1, 1), 1, act)
        what = f"{x.shape} -> {co}, pads {pads}, {act}, {tile}"
        atol = 5e-5 * np.abs(ref).max()
        np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=atol,
                                   err_msg=what)  # fmt: skip


@pytest.mark.parametrize("activation", ["relu", "silu"])  # silu: overlapping panels merged
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    "x_shape, co, tiling",
    [
        ((2, 40, 7, 9), 20, GemmTiling(mr=12, nb=32, parallel=False)),  # 63-float rows, 2 samples
        ((1, 24, 5, 5), 30, GemmTiling(mr=8, nb=16, parallel=False)),  # 25 pixels, co tail
        # 1.25 MB, rows of 1225 floats: the copy prefetches the next panel's lines
        ((1, 256, 35, 35), 48, GemmTiling(mr=12, nb=32, parallel=False)),
    ],
)
def test_pointwise_panel_copies_unaligned_rows_to_an_aligned_scratch(
    x_shape, co, tiling, residual, activation
):
    """Where input channel rows do not start on a cache line, each pixel panel is copied to an
    aligned scratch before its channel tiles; shortcut, activation and the overlapping last
    panel come out as the reference's."""
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.pointwise_conv_x86 import (
        SPEC_ATTR,
        aligned_panel,
        pointwise_kernel,
        pointwise_weight,
    )

    rng = np.random.default_rng(5)
    w = rng.standard_normal((co, x_shape[1], 1, 1), dtype=np.float32)
    b = rng.standard_normal(co, dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    shortcut = rng.standard_normal((x_shape[0], co, *x_shape[2:]), dtype=np.float32)
    conv = ConvAttrs((1, 1), (0,) * 4)
    assert aligned_panel(conv_geometry(x_shape, w.shape, conv), "panel")
    call = dense_conv2d(x_shape, w, b, conv, activation, TARGET, tiling=tiling,
                        pointwise_order="panel")  # fmt: skip
    assert "xp = T.alloc_buffer" in call.func.script()  # the aligned scratch
    spec = {**json.loads(str(call.func.attrs[SPEC_ATTR])), "residual": residual}
    consts = [pointwise_weight(w, spec), b] + ([shortcut] if residual else [])
    built = dataclasses.replace(call, func=pointwise_kernel(spec), consts=tuple(consts))
    ref = _ref_conv(x, w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1, None)
    ref = _act(ref + shortcut if residual else ref, activation)
    np.testing.assert_allclose(run_kernel(built, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_pointwise_panels_are_not_copied_by_parallel_kernels():
    """A copied panel is one task for all its channel tiles: on several threads the kernel
    keeps one task per (panel, channel tile)."""
    w = np.ones((64, 32, 1, 1), np.float32)
    for parallel, copied in ((False, True), (True, False)):
        tiling = GemmTiling(mr=12, nb=32, parallel=parallel)
        call = dense_conv2d((1, 32, 13, 13), w, None, ConvAttrs(), None, TARGET, tiling=tiling,
                            pointwise_order="panel")  # fmt: skip
        assert ("xp = T.alloc_buffer" in call.func.script()) == copied


def test_pointwise_chunks_on_several_threads_only_where_the_panels_share_evenly():
    """A chunked channels-form task is a whole channel panel: on several threads the kernel
    chunks only where the panels divide among the threads (3 panels on 2 threads: no)."""
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.pointwise_conv_x86 import default_channel_chunk

    def chunk(co, threads, batch=1):
        geo = conv_geometry((batch, 768, 17, 17), (co, 768, 1, 1), ConvAttrs())
        return default_channel_chunk(geo, "channels", 64, threads)

    assert chunk(192, 1) == 128  # one thread: always
    assert chunk(192, 2) == 0  # 3 panels
    assert chunk(128, 2) == 128  # 2 panels
    assert chunk(192, 2, batch=2) == 128  # 6 tasks
    assert chunk(256, 16) == 0


def test_pointwise_takes_channel_tiles_outer_on_several_threads_for_big_weights():
    """On several threads a pixel-panel conv with 1 MB of weights or more runs its channel
    tiles outer (each thread a share of the weights); one thread, or small weights, keep the
    panels outer."""
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.pointwise_conv_x86 import choose_pointwise

    def form(ci, co, cores, hw=8):
        geo = conv_geometry((1, ci, hw, hw), (co, ci, 1, 1), ConvAttrs())
        return choose_pointwise(geo, 16, cores)[1]

    assert form(2048, 448, 2) == "cotile"  # 3.7 MB
    assert form(2048, 448, 1) == "panel"
    assert form(256, 64, 2) == "panel"  # 64 KB


def test_pointwise_panel_copies_only_unaligned_stride_1_rows():
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.pointwise_conv_x86 import aligned_panel

    def copies(x_shape, stride=1, order="panel"):
        geo = conv_geometry(x_shape, (8, x_shape[1], 1, 1), ConvAttrs((stride, stride)))
        return aligned_panel(geo, order)

    assert copies((1, 8, 35, 35))
    assert not copies((1, 8, 8, 8))  # 64-float rows start on a line
    assert not copies((1, 8, 56, 56))
    assert not copies((1, 8, 35, 35), stride=2)  # strided: copied row by row already
    assert not copies((1, 8, 35, 35), order="cotile")


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, mr",
    [
        ((2, 24, 17, 17), (20, 24, 7, 1), (3, 0, 3, 0), 6),  # 289 pixels: tiles cross rows
        ((1, 16, 8, 8), (40, 16, 3, 1), (1, 0, 1, 0), 14),  # 64 pixels, the last tile overlaps
        ((1, 8, 5, 3), (8, 8, 3, 1), (0, 0, 0, 0), 14),  # 9 pixels < mr: one whole tile
    ],
)
def test_implicit_gemm_takes_flat_pixel_tiles_for_kx1_convs(x_shape, w_shape, padding, mr):
    """A kh x 1 conv at stride 1 without column padding tiles the image's pixels across rows
    (consecutive outputs read consecutive inputs for every tap)."""
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import flat_pixels

    conv = ConvAttrs((1, 1), padding)
    assert flat_pixels(conv_geometry(x_shape, w_shape, conv))
    rng = np.random.default_rng(6)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    tiling = GemmTiling(mr=mr, nb=32, parallel=False)
    call = dense_conv2d(x_shape, w, b, conv, "relu", TARGET, layout="implicit_gemm", tiling=tiling)
    ref = _ref_conv(x, w, b, (1, 1), padding, (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)


def test_flat_pixel_tiles_need_kx1_stride_1_and_no_column_padding():
    from tvm_sparse.schedules.dense_x86 import conv_geometry
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import flat_pixels

    def flat(w_shape, strides=(1, 1), padding=(0, 0, 0, 0)):
        return flat_pixels(conv_geometry((1, 8, 17, 17), w_shape, ConvAttrs(strides, padding)))

    assert flat((8, 8, 7, 1), padding=(3, 0, 3, 0))
    assert not flat((8, 8, 1, 7), padding=(0, 3, 0, 3))  # row taps: rows are separate
    assert not flat((8, 8, 3, 1), strides=(2, 2))
    assert not flat((8, 8, 3, 1), padding=(1, 1, 1, 1))  # padded columns between rows


def test_reduction_chunks_keep_a_panels_chunk_of_weights_in_l1():
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import reduction_chunk

    assert reduction_chunk(192, 64, 7 * 192, 49) == 96  # 96 x 64 floats: 24 KB
    assert reduction_chunk(64, 32, 9 * 64, 10) == 64  # a whole tap's channels fit
    assert reduction_chunk(448, 64, 9 * 448, 8) == 64  # the largest divisor of 448 <= 96
    assert reduction_chunk(24, 32, 9 * 24, 10) == 0  # 27 KB of panel weights: in L1 anyway
    assert reduction_chunk(192, 64, 7 * 192, 1) == 0  # one tile: nothing to share
    assert reduction_chunk(97, 64, 9 * 97, 10) == 0  # prime: only chunks of 1 fit


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding, tiling",
    [
        ((2, 64, 9, 9), (40, 64, 3, 3), (2, 2), (1, 1, 1, 1), GemmTiling(mr=6, nb=32)),
        ((1, 67, 10, 10), (70, 67, 3, 3), (1, 1), (1, 1, 1, 1), GemmTiling(mr=7, nb=64)),
        ((1, 48, 17, 17), (36, 48, 7, 1), (1, 1), (3, 0, 3, 0), GemmTiling(mr=6, nb=64)),
    ],
)
def test_implicit_gemm_in_reduction_chunks_matches_numpy(x_shape, w_shape, strides, padding,
                                                         tiling):  # fmt: skip
    """On one thread the reduction runs in chunks of one tap's channels over every pixel tile
    of a panel, the partial sums in a scratch: two samples, a padded channel panel, flat
    tiles."""
    from tvm_sparse.schedules.implicit_gemm_conv_x86 import reduction_chunk

    tiling = dataclasses.replace(tiling, parallel=False)
    conv = ConvAttrs(strides, padding)
    rng = np.random.default_rng(7)
    w = rng.standard_normal(w_shape, dtype=np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    call = dense_conv2d(x_shape, w, b, conv, "relu", TARGET, layout="implicit_gemm", tiling=tiling)
    reduce = w_shape[1] * w_shape[2] * w_shape[3]
    assert reduction_chunk(w_shape[1], tiling.nb, reduce, 4) > 0
    assert "partial" in call.func.script()
    ref = _ref_conv(x, w, b, strides, padding, (1, 1), 1, "relu")
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-4, atol=1e-4)
