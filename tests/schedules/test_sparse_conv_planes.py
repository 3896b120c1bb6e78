"""The tap-plane sparse conv (position tiles outermost) against a float64 numpy conv."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.sparse_conv_planes_x86 import (
    SPEC_ATTR,
    PlaneConvSpec,
    default_cblock,
    default_share,
    default_vectors,
    share_runs,
    sparse_conv2d_planes,
    tail_widths,
)
from tvm_sparse.target import resolve_target

from .reference import check_conv, conv_ref, sparse_weight

TARGET = resolve_target("llvm")

CASES = [
    # x shape, weight shape, density, strides, padding, dilation, activation
    ((1, 16, 14, 14), (32, 16, 1, 1), 0.1, (1, 1), (0, 0, 0, 0), (1, 1), None),  # identity planes
    ((1, 8, 9, 9), (16, 8, 3, 3), 0.3, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),  # 81 positions
    ((2, 6, 15, 13), (5, 6, 3, 3), 0.5, (2, 2), (1, 1, 1, 1), (1, 1), "relu"),  # stride 2
    ((1, 3, 32, 32), (8, 3, 7, 7), 1.0, (2, 2), (3, 3, 3, 3), (1, 1), None),  # ResNet stem
    ((1, 16, 28, 28), (16, 16, 1, 1), 0.1, (2, 2), (0, 0, 0, 0), (1, 1), None),  # downsample
    ((1, 4, 11, 17), (6, 4, 3, 3), 0.4, (1, 1), (1, 2, 0, 1), (2, 2), "gelu"),  # dilation
    ((3, 5, 10, 10), (7, 5, 3, 1), 0.5, (2, 1), (1, 0, 1, 0), (1, 1), "relu"),  # 3x1, 2x1
    ((1, 8, 7, 7), (12, 8, 3, 3), 0.0, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),  # no non-zero
    ((1, 5, 12, 20), (7, 5, 3, 3), "one", (1, 1), (0, 0, 0, 0), (1, 1), None),
    ((1, 2, 9, 9), (3, 2, 3, 3), 0.5, (3, 3), (2, 2, 2, 2), (2, 2), None),  # stride 3, dil 2
]


def _check(x_shape, w, bias, conv: ConvAttrs, activation, **knobs):
    return check_conv(sparse_conv2d_planes, x_shape, w, bias, conv, activation, TARGET, **knobs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_dense(case, with_bias):
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_expanded_planes_match_dense(case):
    """One plane per tap (aligned runs): strides, dilation, padding and tails as above."""
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, w_shape, density)
    call = _check(x_shape, w, None, ConvAttrs(strides, padding, dilation), activation,
                  expanded=True)  # fmt: skip
    assert call.info["expanded"] == (w_shape[2] > 1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
@pytest.mark.parametrize("share", [2, 3, 4])
def test_channels_sharing_runs_match_dense(case, share):
    """Blocks of 2-4 output channels loading each tap run once: channel counts that do not
    divide into blocks, empty and full weights, strides, dilation and the epilogues."""
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(9)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    call = _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation,
                  share=share)  # fmt: skip
    assert call.info["share"] == share


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
@pytest.mark.parametrize("cblock, share", [(1, 1), (3, 1), (2, 3), (4, 2)])
def test_input_channel_blocks_match_dense(case, cblock, share):
    """Non-zeros split into blocks of ``cblock`` input channels, partial sums kept in y
    between blocks: blocks not dividing C, empty blocks, the last (narrow) tile, strides,
    dilation, shared runs and every epilogue."""
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(13)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    call = _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation,
                  cblock=cblock, share=share, vectors=1, lanes=8)  # fmt: skip
    assert call.info["cblock"] == (cblock if cblock < x_shape[1] else 0)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[1][2] == 1]
    + [
        ((1, 20, 7, 7), (24, 20, 1, 1), 0.2, (1, 1), (0, 0, 0, 0), (1, 1), "relu"),
        ((2, 12, 14, 14), (9, 12, 1, 3), 0.4, (2, 1), (0, 1, 0, 1), (1, 1), None),
    ],
    ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}",
)
@pytest.mark.parametrize("aligned", [True, False])
def test_aligned_planes_match_dense(case, aligned):
    """1-row kernels with each plane rounded up to whole vectors: identity planes (1x1),
    strided and padded 1xK planes; every run starts on a vector boundary."""
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(14)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    call = _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation,
                  aligned=aligned, lanes=16)  # fmt: skip
    spec = PlaneConvSpec.from_json(call.func.attrs[SPEC_ATTR])
    assert spec.aligned == aligned
    if aligned and spec.kernel_hw[1] == 1:
        assert spec.plane_size % 16 == 0 and np.all(call.consts[1] % 16 == 0)


def test_one_row_kernels_align_their_planes_by_default():
    """7x7 and 14x14 outputs are not whole vectors: 1x1 planes are padded to them; 28x28
    (49 vectors) and 3x3 kernels (row shifts inside a plane) are not."""
    w1 = np.ones((4, 8, 1, 1), np.float32)
    for hw, expected in ((7, True), (14, True), (28, False)):
        call = sparse_conv2d_planes((1, 8, hw, hw), w1, None, ConvAttrs(), None, TARGET, lanes=16)
        assert PlaneConvSpec.from_json(call.func.attrs[SPEC_ATTR]).aligned == expected, hw
    w3 = np.ones((4, 8, 3, 3), np.float32)
    call = sparse_conv2d_planes((1, 8, 7, 7), w3, None, ConvAttrs((1, 1), (1, 1, 1, 1)), None,
                                TARGET, lanes=16)  # fmt: skip
    assert not PlaneConvSpec.from_json(call.func.attrs[SPEC_ATTR]).aligned


def test_input_channel_blocks_by_default_only_for_taps_on_intel_avx512():
    """16-channel blocks by default for a conv with taps on a whole-512-bit AVX-512 core, none
    for a 1x1, a few channels, AVX2 or Zen 4 (measured losses there)."""
    assert default_cblock(resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"}), 9, 64) == 16
    assert default_cblock(resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"}), 1, 64) == 0
    assert default_cblock(resolve_target({"kind": "llvm", "mcpu": "skylake-avx512"}), 9, 16) == 0
    assert default_cblock(resolve_target({"kind": "llvm", "mcpu": "znver4"}), 9, 64) == 0
    assert default_cblock(resolve_target({"kind": "llvm", "mcpu": "haswell"}), 9, 64) == 0
    assert default_cblock(None, 9, 64) == 0


def test_input_channel_blocks_are_a_knob_off_by_default():
    """1x1 blocks only when asked (they lose on most shapes); the spec and the pointers say how
    many: one pointer per (channel, block) and one past the end."""
    w = np.zeros((8, 40, 1, 1), np.float32)
    w[:, ::3] = 1.0
    plain = sparse_conv2d_planes((1, 40, 7, 7), w, None, ConvAttrs(), None, TARGET)
    assert plain.info["cblock"] == 0
    assert PlaneConvSpec.from_json(plain.func.attrs[SPEC_ATTR]).cblocks == 1
    call = sparse_conv2d_planes((1, 40, 7, 7), w, None, ConvAttrs(), None, TARGET, cblock=16,
                                share=1)  # fmt: skip
    spec = PlaneConvSpec.from_json(call.func.attrs[SPEC_ATTR])
    assert (spec.cblock, spec.cblocks) == (16, 3)
    ptr = call.consts[2]
    assert ptr.size == 8 * 3 + 1 and ptr[-1] == np.count_nonzero(w)
    assert ptr[1] - ptr[0] == len(range(0, 16, 3))  # channel 0's non-zeros in block 0


def test_share_runs_keeps_every_weight_once():
    """Each (block, run) once, its channels' weights in place, grouped by pattern."""
    rng = np.random.default_rng(10)
    o, runs, share = 7, 40, 3
    dense = np.where(rng.random((o, runs)) < 0.3, rng.standard_normal((o, runs)), 0)
    dense = dense.astype(np.float32)
    ptr = np.concatenate([[0], np.cumsum((dense != 0).sum(1))])
    offs = np.nonzero(dense)[1].astype(np.int32) * 5  # run offsets, any spacing
    vals = dense[dense != 0]
    weights, run_offs, pointers = share_runs(offs, ptr, vals, o, share)
    weights = weights.reshape(-1, share)
    assert pointers[-1] == len(run_offs) and np.all(np.diff(pointers) >= 0)
    rebuilt = np.zeros_like(dense)
    for block in range(-(-o // share)):
        for pattern in range(1, 1 << share):
            lo, hi = pointers[block * (1 << share) + pattern : block * (1 << share) + pattern + 2]
            for j in range(lo, hi):
                for a in range(share):
                    has = bool(pattern >> a & 1)
                    assert has == (weights[j, a] != 0)
                    if has:
                        rebuilt[block * share + a, run_offs[j] // 5] = weights[j, a]
        assert pointers[block * (1 << share)] == pointers[block * (1 << share) + 1]  # no 0
    np.testing.assert_array_equal(rebuilt, dense)


def test_layers_of_one_shape_and_count_share_one_kernel():
    """Shared runs are padded to the non-zeros: two layers with the same shape and non-zero
    count but other weights get structurally equal kernels (one compile, one timing)."""
    import tvm_ffi

    rng = np.random.default_rng(11)
    calls = []
    for _ in range(2):
        w = np.zeros((12, 6 * 9), np.float32)
        for row in w:
            row[rng.choice(row.size, 20, replace=False)] = rng.standard_normal(20)
        calls.append(sparse_conv2d_planes((1, 6, 8, 8), w.reshape(12, 6, 3, 3), share=3))
    assert calls[0].info["runs"] != calls[1].info["runs"]
    assert tvm_ffi.structural_equal(calls[0].func, calls[1].func)


def test_default_share_by_registers():
    assert default_share(16, 7, 320) == 3  # GSC's 10x10: 21 accumulators
    assert default_share(16, 8, 320) == 2  # 3 x 8 spilled (56x56: 597 against 490 us)
    assert default_share(16, 4, 13) == 1  # short pattern loops (a 1x1 over 128 channels)
    assert default_share(8, 4, 320) == 1  # AVX2: not measured
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="share"):
        sparse_conv2d_planes((1, 2, 6, 6), w, share=5)


def test_strided_convs_expand_by_default():
    from tvm_sparse.schedules.sparse_conv_planes_x86 import expands_by_default

    assert expands_by_default((3, 3), (28, 28), (2, 2))  # ResNet's stride-2 3x3
    assert not expands_by_default((3, 3), (28, 28), (1, 1))  # stride 1: a tuning knob
    assert not expands_by_default((3, 3), (56, 56), (2, 2))  # aligned runs already
    assert not expands_by_default((1, 1), (28, 28), (2, 2))  # one tap: nothing to expand
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, (8, 4, 3, 3), 0.3)
    call = _check((1, 4, 12, 12), w, None, ConvAttrs((2, 2), (1, 1, 1, 1)), "relu")
    assert call.info["expanded"]


@pytest.mark.parametrize(
    "knobs",
    [
        {"vectors": 1, "lanes": 4},  # many tiles, a partial last one
        {"vectors": 3, "lanes": 8, "ogroup": 5},  # groups not dividing O
        {"vectors": 24, "lanes": 16, "parallel": False},  # one tile past the positions
        {"vectors": 12, "lanes": 8, "ogroup": 1},
    ],
)
def test_knobs_keep_results(knobs):
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (11, 6, 3, 3), 0.3)
    conv = ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1))
    call = _check((2, 6, 13, 9), w, rng.standard_normal(11).astype(np.float32), conv, "relu",
                  **knobs)  # fmt: skip
    assert call.info["tile"][0] == knobs["vectors"]


@pytest.mark.parametrize(
    "out_hw, lanes, vectors, widths",
    [
        ((7, 7), 16, None, (3, 4)),  # 49 = 3 x 16 + 1: three zmm and an xmm
        ((10, 10), 16, 7, (6, 4)),  # GSC's 5x5 conv: 100 = 6 x 16 + 4
        ((4, 6), 16, None, (1, 8)),  # 24 = 16 + 8: a ymm
        ((3, 3), 16, None, (1, 0)),  # 9 > 8 left: one full vector
        ((5, 5), 8, None, (3, 4)),  # AVX2: 25 = 3 x 8 + 1
        ((3, 3), 4, None, (3, 0)),  # 4 lanes: nothing narrower
        ((9, 9), 16, 2, (1, 4)),  # 81 = 2 tiles of 32 + 17 left: one vector and an xmm
    ],
)
def test_the_last_tile_runs_only_the_vectors_its_positions_fill(out_hw, lanes, vectors, widths):
    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (6, 5, 3, 3), 0.4)
    bias = rng.standard_normal(6).astype(np.float32)
    x_shape = (2, 5, out_hw[0] + 2, out_hw[1] + 2)
    call = _check(x_shape, w, bias, ConvAttrs(), "relu", lanes=lanes, vectors=vectors, share=1)
    assert tail_widths(PlaneConvSpec.from_json(call.func.attrs[SPEC_ATTR])) == widths
    if widths[1]:  # the narrow vector's non-zero loop
        assert f"T.Broadcast(vals[j], {widths[1]})" in call.func.script()


def test_bad_knobs_are_refused():
    w = np.ones((2, 2, 1, 1), np.float32)
    with pytest.raises(ValueError, match="lanes"):
        sparse_conv2d_planes((1, 2, 4, 4), w, lanes=5)
    with pytest.raises(ValueError, match="vectors"):
        sparse_conv2d_planes((1, 2, 4, 4), w, lanes=8, vectors=13)


def test_default_vectors_cover_small_outputs_without_waste():
    assert default_vectors(49, 16) == 4  # a 7x7 output: 4 vectors, not 24
    assert default_vectors(3136, 16) * 16 * 9 >= 3136  # 56x56 in 9 even tiles
    assert default_vectors(3136, 16) <= 24
    assert default_vectors(3136, 16, taps=64) == 4  # few taps: short runs that stay in L1
    assert default_vectors(3136, 16, taps=576) == 8
    assert default_vectors(3136, 8, taps=576) == 12  # AVX2: 16 registers, 12 accumulators


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 9),
    out_channels=st.integers(1, 10),
    size=st.integers(3, 12),
    kernel=st.sampled_from([1, 2, 3]),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    dilation=st.integers(1, 2),
    density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    lanes=st.sampled_from([4, 8, 16]),
    expanded=st.booleans(),
    share=st.sampled_from([1, 2, 3]),
    cblock=st.sampled_from([0, 1, 2, 4]),
    aligned=st.booleans(),
)
def test_random_convs(batch, channels, out_channels, size, kernel, stride, pad, dilation,
                      density, lanes, expanded, share, cblock, aligned):  # fmt: skip
    if size + 2 * pad < dilation * (kernel - 1) + 1:
        return
    rng = np.random.default_rng(size * 7 + channels)
    w = sparse_weight(rng, (out_channels, channels, kernel, kernel), density)
    conv = ConvAttrs((stride, stride), (pad,) * 4, (dilation, dilation))
    _check((batch, channels, size, size), w, None, conv, "relu", lanes=lanes, expanded=expanded,
           share=share, cblock=cblock, aligned=aligned)  # fmt: skip


@pytest.mark.parametrize("batch", [1, 3])
def test_samples_in_parallel_match_dense(batch):
    """A batch of at least the target's cores runs whole samples in parallel (own planes)."""
    rng = np.random.default_rng(12)
    w = sparse_weight(rng, (8, 3, 3, 3), 0.5)
    conv = ConvAttrs((2, 2), (1, 1, 1, 1), (1, 1))
    x_shape = (batch, 3, 15, 13)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    two_cores = resolve_target({"kind": "llvm", "num-cores": 2})
    call = sparse_conv2d_planes(x_shape, w, None, conv, "relu", two_cores)
    assert call.info["batch_parallel"] == (batch >= 2)
    out = run_kernel(call, two_cores, x)
    expected = conv_ref(x, w, None, conv.strides, conv.padding, conv.dilation, "relu")
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(
    "x_shape, w_shape, padding",
    [
        ((2, 3, 12, 16), (5, 3, 3, 3), (1, 1, 1, 1)),  # two samples
        ((1, 2, 10, 18), (4, 2, 5, 3), (0, 0, 4, 2)),  # all padding below and right
        ((1, 1, 9, 24), (6, 1, 3, 5), (2, 4, 0, 0)),  # all above and left: shifts -4..0
    ],
)
def test_planes_filled_straight_from_the_input(x_shape, w_shape, padding, dense):
    """The sparse and the dense tap-plane kernels fill stride-1 same-width planes as shifted
    runs of the input (``flat_planes_macro``), with no padded copy."""
    from tvm_sparse.schedules.dense_conv_planes_x86 import SPEC_ATTR as DENSE_ATTR
    from tvm_sparse.schedules.dense_conv_planes_x86 import dense_conv2d_planes
    from tvm_sparse.schedules.sparse_conv_planes_x86 import SPEC_ATTR as SPARSE_ATTR
    from tvm_sparse.schedules.sparse_conv_planes_x86 import PlaneConvSpec, flat_fill_applies

    rng = np.random.default_rng(29)
    w = sparse_weight(rng, w_shape, 1.0 if dense else 0.4)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    builder = dense_conv2d_planes if dense else sparse_conv2d_planes
    call = check_conv(builder, x_shape, w, bias, ConvAttrs((1, 1), padding), "relu", TARGET)
    attr = DENSE_ATTR if dense else SPARSE_ATTR
    assert flat_fill_applies(PlaneConvSpec.from_json(str(call.func.attrs[attr])))
