"""The panel sparse conv (NCHW sparse GEMM over channels, or over taps read from tap planes)
against a float64 numpy conv: positions that fill whole tiles, leave a tail or need the aligned
copy, strides, padding, dilation, batches, densities from none to full, every knob and both
vector widths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import KernelCall, build_kernel, run_kernel
from tvm_sparse.schedules.sparse_conv_panel_x86 import (
    SPEC_ATTR,
    PanelConvSpec,
    default_band_rows,
    is_pointwise,
    merges_tail,
    panel_conv_kernel,
    sparse_conv2d_panel,
    tile_widths,
)
from tvm_sparse.target import cpu_isa, resolve_target

from .isa import host_runs, isa_target
from .reference import check_conv, conv_ref, sparse_weight

TARGET = resolve_target("llvm")

CASES = [
    # x shape, output channels, density, strides, activation
    ((1, 16, 8, 8), 24, 0.1, (1, 1), "relu"),  # 64 positions: one whole tile
    ((1, 8, 14, 14), 12, 0.3, (1, 1), None),  # 196: 3 tiles + a 16-wide tail, copied
    ((2, 12, 7, 7), 9, 0.5, (1, 1), "relu"),  # 49: one 64-wide tail, padding read
    ((1, 5, 4, 8), 7, 0.4, (1, 1), "gelu"),  # 32: uncopied tail of whole vectors
    ((1, 6, 3, 4), 5, 1.0, (1, 1), None),  # 12 positions: copied, full weights
    ((3, 10, 13, 11), 6, 0.3, (2, 2), "relu"),  # strided (downsample), odd sizes
    ((1, 9, 12, 12), 4, 0.2, (3, 2), None),  # unequal strides
    ((1, 8, 8, 8), 8, 0.0, (1, 1), "relu"),  # no non-zero
    ((1, 16, 28, 28), 32, "one", (1, 1), None),  # a single non-zero
]


def _check(x_shape, w, bias, conv, activation, target=TARGET, **knobs):
    return check_conv(sparse_conv2d_panel, x_shape, w, bias, conv, activation, target, **knobs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_dense(case, with_bias):
    x_shape, o, density, strides, activation = case
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (o, x_shape[1], 1, 1), density)
    bias = rng.standard_normal(o).astype(np.float32) if with_bias else None
    _check(x_shape, w, bias, ConvAttrs(strides), activation)


@pytest.mark.parametrize(
    "knobs",
    [
        {"m_tile": 8},
        {"m_tile": 16, "panel_cols": 3},
        {"m_tile": 32, "panel_cols": 1, "row_block": 3},
        {"panel_cols": 5, "row_block": 1, "parallel": False},
        {"row_block": 7, "parallel": True},
    ],
    ids=lambda k: json.dumps(k),
)
@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: f"{c[0]}-{c[3]}")
def test_knobs_keep_results(case, knobs):
    """Tile widths, panels of one to a few channels (many panels: partial sums kept in y or the
    tail scratch between them) and row blocks that do not divide the channels."""
    x_shape, o, density, strides, activation = case
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, (o, x_shape[1], 1, 1), density)
    bias = rng.standard_normal(o).astype(np.float32)
    _check(x_shape, w, bias, ConvAttrs(strides), activation, **knobs)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_each_vector_width_matches_dense(isa):
    """AVX2 tails are 8 wide, AVX-512 tails 16: both are built, run where the host can."""
    target = isa_target(isa)
    rng = np.random.default_rng(11)
    w = sparse_weight(rng, (10, 12, 1, 1), 0.3)
    x_shape = (1, 12, 10, 10)  # 100 positions: a 64 tile and a 36-position tail
    call = sparse_conv2d_panel(x_shape, w, None, ConvAttrs(), "relu", target)
    assert call.info["tile"] == (64, 40 if isa == "avx2" else 48)
    if host_runs(isa):
        _check(x_shape, w, None, ConvAttrs(), "relu", target)


def test_residual_epilogue_adds_the_shortcut_before_the_activation():
    """The spec ``passes.fuse_residual`` rebuilds: act(conv + bias + shortcut), shortcut as the
    argument before y; with many panels it is added once, after the last."""
    rng = np.random.default_rng(5)
    x_shape, w = (2, 20, 7, 9), sparse_weight(rng, (6, 20, 1, 1), 0.4)
    bias = rng.standard_normal(6).astype(np.float32)
    call = sparse_conv2d_panel(x_shape, w, bias, ConvAttrs(), None, TARGET, panel_cols=4)
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    fused = panel_conv_kernel(PanelConvSpec(**{**spec.__dict__, "residual": True,
                                               "activation": "relu"}))  # fmt: skip
    x = rng.standard_normal(x_shape).astype(np.float32)
    shortcut = rng.standard_normal(call.out_shape).astype(np.float32)
    fused_call = KernelCall(fused, "fused", (*call.consts, shortcut), call.out_shape)
    out = run_kernel(fused_call, TARGET, x)
    expected = np.maximum(conv_ref(x, w, bias) + shortcut, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "positions, copied, widths",
    [
        (3136, False, (64, 0)),  # ResNet's 56x56: whole tiles
        (784, False, (64, 16)),  # 28x28: a whole-vector tail, no copy
        (196, True, (64, 16)),  # 14x14: 4 positions in a 16-wide tail
        (49, True, (64, 64)),  # 7x7: one 64-wide tail
        (8, True, (64, 16)),  # fewer positions than lanes: a 16-wide tail over padding
    ],
)
def test_tile_widths(positions, copied, widths):
    assert tile_widths(positions, None, 16, copied) == widths


def test_one_vector_tails_run_with_the_last_whole_tile():
    assert merges_tail(3, 16, 16)  # 14x14: 3 tiles of 64 and a 16-wide tail
    assert merges_tail(24, 16, 16)  # m_tile 8: the 24-wide last tile runs as three 8-wide vectors
    assert not merges_tail(0, 64, 16)  # 7x7: the tail is the only tile
    assert not merges_tail(3, 0, 16)  # no tail
    assert not merges_tail(2, 32, 16)  # two vectors: a pass of its own


# 12 tiles of 64 and one vector of real positions: 28x28 with 16 lanes, 8x97 with 8
_ONE_REAL_VECTOR_TAIL = (28, 28) if cpu_isa(TARGET).lanes == 16 else (8, 97)


@pytest.mark.parametrize("positions_hw", [(14, 14), _ONE_REAL_VECTOR_TAIL, (4, 17)])
def test_merged_tails_match_dense(positions_hw):
    """A last tile ``m_tile + tail`` wide (at 14x14 only 4 of the last vector's positions
    real; 12 x 64 + one vector all real, its partial sums in y) gives the dense conv's result.
    The shapes follow this machine's lanes, so the tail is one vector on each."""
    rng = np.random.default_rng(23)
    w, bias = sparse_weight(rng, (20, 24, 1, 1), 0.3), rng.standard_normal(20).astype(np.float32)
    call = check_conv(sparse_conv2d_panel, (2, 24, *positions_hw), w, bias, ConvAttrs(), "relu",
                      TARGET, panel_cols=8)  # fmt: skip
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    assert merges_tail(spec.whole_tiles, spec.tail_tile, spec.lanes)


def test_tails_wider_than_the_rest_need_the_copy():
    with pytest.raises(ValueError, match="must be copied"):
        tile_widths(196, None, 16, copied=False)
    with pytest.raises(ValueError, match="at least 8 positions"):
        tile_widths(6)


def test_only_unpadded_1x1_convs_read_x_itself():
    assert is_pointwise((4, 3, 1, 1), ConvAttrs((2, 2)))
    assert not is_pointwise((4, 3, 3, 3), ConvAttrs())
    assert not is_pointwise((4, 3, 1, 1), ConvAttrs(padding=(1, 1, 1, 1)))


TAP_CASES = [
    # x shape, weight shape, density, strides, padding, dilation
    ((1, 8, 7, 7), (12, 8, 3, 3), 0.2, (1, 1), (1, 1, 1, 1), (1, 1)),  # ResNet's 7x7 stage
    ((2, 6, 14, 14), (5, 6, 3, 3), 0.3, (2, 2), (1, 1, 1, 1), (1, 1)),  # strided 3x3
    ((1, 4, 10, 12), (6, 4, 5, 5), 0.4, (1, 1), (2, 2, 2, 2), (1, 1)),  # GSC's 5x5
    ((1, 5, 11, 9), (7, 5, 3, 2), 0.5, (2, 1), (1, 0, 1, 1), (2, 1)),  # uneven everything
    ((1, 6, 9, 9), (4, 6, 1, 1), 0.5, (1, 1), (1, 1, 1, 1), (1, 1)),  # padded 1x1
    ((1, 3, 16, 16), (8, 3, 7, 7), 1.0, (2, 2), (3, 3, 3, 3), (1, 1)),  # a stem, full
    ((1, 8, 8, 8), (8, 8, 3, 3), 0.0, (1, 1), (1, 1, 1, 1), (1, 1)),  # no non-zero
]


@pytest.mark.parametrize("expanded", [None, False, True])
@pytest.mark.parametrize("case", TAP_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_convs_with_taps_match_dense(case, expanded):
    """Any conv but an unpadded 1x1 reads its taps from tap planes: one per tap column (runs
    shifted by rows) or one per tap (``expanded``); the tail tile reads past a run's end."""
    x_shape, w_shape, density, strides, padding, dilation = case
    rng = np.random.default_rng(13)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    call = _check(x_shape, w, bias, ConvAttrs(strides, padding, dilation), "relu",
                  expanded=expanded)  # fmt: skip
    if expanded is not None:
        assert call.info["tap_planes"] == ("expanded" if expanded else "columns")


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 40),
    out_channels=st.integers(1, 20),
    height=st.integers(2, 17),
    width=st.integers(4, 17),
    kernel=st.sampled_from([1, 1, 2, 3]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0]),
    m_tile=st.sampled_from([None, 8, 16, 32]),
    panel_cols=st.sampled_from([None, 1, 7, 16]),
    row_block=st.sampled_from([None, 1, 5]),
    expanded=st.sampled_from([None, False, True]),
    band_rows=st.sampled_from([None, 0, 1, 2, 3, 5]),
)
def test_random_convs(batch, channels, out_channels, height, width, kernel, stride, pad,
                      density, m_tile, panel_cols, row_block, expanded, band_rows):  # fmt: skip
    oh = (height + 2 * pad - kernel) // stride + 1
    ow = (width + 2 * pad - kernel) // stride + 1
    if oh < 1 or ow < 1 or oh * ow < 8:
        return
    rng = np.random.default_rng(height * 31 + width * 7 + channels)
    w = sparse_weight(rng, (out_channels, channels, kernel, kernel), density)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    conv = ConvAttrs((stride, stride), (pad,) * 4)
    _check((batch, channels, height, width), w, bias, conv, "relu", m_tile=m_tile,
           panel_cols=panel_cols, row_block=row_block, expanded=expanded,
           band_rows=band_rows)  # fmt: skip


BAND_CASES = [
    # x shape, weight shape, strides, band rows, knobs
    ((1, 6, 16, 16), (8, 6, 3, 3), (1, 1), 4, {}),  # 64 positions a band: whole tiles
    ((2, 5, 14, 14), (7, 5, 3, 3), (1, 1), 3, {}),  # 42 a band, the last 2 rows: tails
    ((1, 6, 17, 12), (5, 6, 3, 3), (2, 2), 2, {"expanded": True}),  # strided, 9 rows
    ((1, 6, 13, 10), (5, 6, 3, 3), (2, 2), 4, {"expanded": False}),  # row phases
    ((1, 9, 12, 12), (6, 9, 3, 3), (1, 1), 5, {"panel_cols": 10, "m_tile": 16}),  # panels
    ((1, 4, 10, 12), (6, 4, 5, 5), (1, 1), 1, {}),  # one row a band, 5x5 halo
]


@pytest.mark.parametrize("case", BAND_CASES, ids=lambda c: f"{c[0]}-{c[2]}-rows{c[3]}")
def test_bands_of_tap_planes_match_dense(case):
    """Tap planes filled a band of output rows at a time: each band's tiles, its own tail, the
    last band shorter, halo rows filled again for each band."""
    x_shape, w_shape, strides, band_rows, knobs = case
    rng = np.random.default_rng(17)
    w = sparse_weight(rng, w_shape, 0.4)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    pad = w_shape[2] // 2
    call = _check(x_shape, w, bias, ConvAttrs(strides, (pad,) * 4), "relu",
                  band_rows=band_rows, **knobs)  # fmt: skip
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    assert spec.banded and spec.nbands == -(-call.out_shape[2] // band_rows)


# runs of a kernel whose row blocks run on several threads: a race over a shared scratch (the
# merged tail's rows indexed by its own width overlapped the next row block's) failed 1 run in
# 1-3 at 2 threads
RACE_RUNS = 12


@pytest.mark.parametrize(
    "x_shape, w_shape, panel_cols, band_rows",
    [
        ((2, 12, 11, 9), (6, 12, 3, 3), None, 0),  # 1 panel
        ((2, 12, 11, 9), (6, 12, 3, 3), 7, 3),  # banded
        ((1, 40, 14, 14), (24, 40, 1, 1), 16, 0),  # 3 tiles, the 4-position tail merged
    ],
)
def test_residual_written_over_in_place(x_shape, w_shape, panel_cols, band_rows):
    """The in-place variant (``call_tir_inplace``): the output lands in the residual's buffer,
    and with several panels the partial sums wait in the scratch, not over the shortcut (a
    merged tail's too: the scratch holds the last tile's ``m_tile + tail`` positions)."""
    rng = np.random.default_rng(19)
    w = sparse_weight(rng, w_shape, 0.4)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    pad = w_shape[2] // 2
    conv = ConvAttrs(padding=(pad,) * 4)
    call = sparse_conv2d_panel(x_shape, w, bias, conv, None, TARGET, panel_cols=panel_cols,
                               band_rows=band_rows)  # fmt: skip
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    assert spec.npanels > 1 or panel_cols is None
    fused = panel_conv_kernel(PanelConvSpec(**{**spec.__dict__, "residual": True,
                                               "activation": "relu", "inplace": True}))  # fmt: skip
    assert len(fused.params) == 6  # no y
    x = rng.standard_normal(x_shape).astype(np.float32)
    shortcut = rng.standard_normal(call.out_shape).astype(np.float32)
    f = build_kernel(KernelCall(fused, "fused", (), call.out_shape), TARGET)["main"]
    expected = np.maximum(conv_ref(x, w, bias, conv.strides, conv.padding) + shortcut, 0)
    args = [tvm.runtime.tensor(x), *[tvm.runtime.tensor(c) for c in call.consts]]
    for _ in range(RACE_RUNS):  # row blocks on threads share the scratch: every run the same
        out = tvm.runtime.tensor(shortcut)
        f(*args, out)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_in_place_needs_a_residual():
    rng = np.random.default_rng(2)
    call = sparse_conv2d_panel((1, 4, 8, 8), sparse_weight(rng, (4, 4, 1, 1), 0.5))
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    with pytest.raises(ValueError, match="needs one"):
        panel_conv_kernel(PanelConvSpec(**{**spec.__dict__, "inplace": True}))


@pytest.mark.parametrize(
    "x_shape, strides, banded",
    [
        ((1, 64, 56, 56), (1, 1), True),  # ResNet-50 layer1: 2.5 MiB of planes, 8-row bands
        ((1, 128, 56, 56), (2, 2), True),  # layer2's stride-2 conv: 3.6 MiB expanded
        ((1, 256, 14, 14), (1, 1), False),  # 0.7 MiB: filled whole
        ((1, 512, 7, 7), (1, 1), False),  # one tile: a band would be a fraction of one
    ],
)
def test_bands_where_the_planes_pass_l2(x_shape, strides, banded):
    c = x_shape[1]
    call = sparse_conv2d_panel(x_shape, sparse_weight(np.random.default_rng(1), (c, c, 3, 3), 0.01),
                               None, ConvAttrs(strides, (1, 1, 1, 1)), "relu", TARGET)  # fmt: skip
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    assert spec.banded == banded
    assert default_band_rows(spec) == spec.band_rows
    if banded:
        planes = spec.plane_spec
        assert 4 * planes.planes * planes.plane_size <= 1 << 20


FLAT_FILL_CASES = [
    # x shape, weight shape, padding (top, left, bottom, right), knobs
    ((2, 5, 12, 16), (6, 5, 3, 3), (1, 1, 1, 1), {}),  # two samples: each its own base
    ((1, 4, 9, 20), (7, 4, 3, 5), (0, 2, 2, 2), {"expanded": True}),  # 3x5, no top padding
    ((1, 3, 11, 16), (5, 3, 5, 3), (3, 0, 1, 2), {"expanded": False}),  # shifts 0..2, right
    ((1, 6, 14, 24), (8, 6, 3, 3), (1, 2, 1, 0), {"band_rows": 5, "expanded": False}),
    ((1, 2, 16, 20), (3, 2, 2, 4), (1, 1, 0, 2), {"band_rows": 7, "expanded": True}),
]


@pytest.mark.parametrize("case", FLAT_FILL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_planes_filled_straight_from_the_input_match_dense(case):
    """Stride 1 with the output as wide as the input: each plane is filled as one shifted run
    of the input (``flat_planes_macro``), the columns the shift wraps in and the rows past the
    input zeroed; any padding split (no top row, all on the right), expanded or tap columns,
    in bands, two samples."""
    from tvm_sparse.schedules.sparse_conv_planes_x86 import flat_fill_applies

    x_shape, w_shape, padding, knobs = case
    rng = np.random.default_rng(23)
    w = sparse_weight(rng, w_shape, 0.5)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    call = _check(x_shape, w, bias, ConvAttrs((1, 1), padding), None, **knobs)
    spec = PanelConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    assert flat_fill_applies(spec.plane_spec)


@pytest.mark.parametrize(
    "x_shape, x2_shape, x2_strides, o",
    [
        ((1, 16, 14, 14), (1, 24, 14, 14), (1, 1), 40),  # ResNet's layer1.0: the same grid
        ((2, 16, 7, 7), (2, 8, 14, 14), (2, 2), 24),  # a downsampling shortcut: stride 2
        ((1, 16, 8, 8), (1, 8, 15, 15), (2, 2), 12),  # odd input: ceil(15 / 2) = 8
    ],
)
def test_second_input_adds_its_conv(x_shape, x2_shape, x2_strides, o):
    """``second_input``: conv(x, w[:, :C]) + conv(x2, w[:, C:], stride) + bias in one kernel,
    with x2's channels after x's in the scratch."""
    rng = np.random.default_rng(31)
    ca, cb = x_shape[1], x2_shape[1]
    w = sparse_weight(rng, (o, ca + cb, 1, 1), 0.3)
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x2 = rng.standard_normal(x2_shape).astype(np.float32)
    call = sparse_conv2d_panel(x_shape, w, bias, ConvAttrs(), "relu", TARGET, panel_cols=8,
                               second_input=(x2_shape, x2_strides))  # fmt: skip
    f = build_kernel(call, TARGET)["main"]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, np.float32))
    f(tvm.runtime.tensor(x), tvm.runtime.tensor(x2), *[tvm.runtime.tensor(c) for c in call.consts],
      out)  # fmt: skip
    expected = np.maximum(
        conv_ref(x, w[:, :ca], bias, (1, 1), (0, 0, 0, 0))
        + conv_ref(x2, w[:, ca:], None, x2_strides, (0, 0, 0, 0)),
        0,
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_second_input_needs_a_1x1_conv_on_its_grid():
    w = np.ones((4, 12, 1, 1), np.float32)
    with pytest.raises(ValueError, match="second input"):
        sparse_conv2d_panel((1, 8, 7, 7), w, None, ConvAttrs(), None, TARGET,
                            second_input=((1, 4, 7, 7), (2, 2)))  # fmt: skip
