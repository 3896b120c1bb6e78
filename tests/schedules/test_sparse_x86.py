"""Sparse-dense kernels against dense numpy: shapes, densities, blocks, batches, NaN/Inf."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse.formats.bsr import BSR
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d
from tvm_sparse.schedules.sparse_panel_x86 import RECORDS_AHEAD, batch_tile, panel_call
from tvm_sparse.schedules.sparse_x86 import bsr_linear, csr_linear
from tvm_sparse.target import resolve_target

from .reference import conv_ref, linear_ref, sparse_weight

TARGET = resolve_target("llvm")


def check(call, x, expected):
    out = run_kernel(call, TARGET, x)
    assert out.shape == call.out_shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("m", [1, 3, 16, 64])
@pytest.mark.parametrize("density", [0.0, "one", 0.01, 0.5, 1.0])
def test_csr_linear_matches_dense(m, density):
    rng = np.random.default_rng(hash((m, str(density))) % 2**32)
    shape = (37, 70)
    w = sparse_weight(rng, shape, density)
    x = rng.standard_normal((m, shape[1])).astype(np.float32)
    check(csr_linear(m, w, target=TARGET), x, linear_ref(x, w))


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_csr_linear_bias_activation(m, activation):
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, (24, 40), 0.2)
    bias = rng.standard_normal(24).astype(np.float32)
    x = rng.standard_normal((m, 40)).astype(np.float32)
    call = csr_linear(m, w, bias, activation, TARGET)
    check(call, x, linear_ref(x, w, bias, activation))


@pytest.mark.parametrize("m", [1, 16])
def test_all_zero_weight_gives_bias(m):
    bias = np.linspace(-1, 1, 10, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal((m, 12)).astype(np.float32)
    out = run_kernel(csr_linear(m, np.zeros((10, 12), np.float32), bias, "relu", TARGET), TARGET, x)
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (m, 10)))


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_nan_inf_weights_propagate_like_dense(m, kind):
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (16, 24), 0.3)
    w[2, 5], w[7, 0], w[11, 23] = np.nan, np.inf, -np.inf
    x = rng.standard_normal((m, 24)).astype(np.float32)
    x[:, 23] = 0.0  # -inf * 0 is NaN in the dense product too
    ref = linear_ref(x, w)
    call = (
        csr_linear(m, w, target=TARGET)
        if kind == "csr"
        else bsr_linear(m, w, (4, 1), target=TARGET)
    )
    out = run_kernel(call, TARGET, x)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("block", [(1, 8), (4, 1), (8, 1), (16, 1), (3, 5)])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_bsr_linear_matches_dense(block, m):
    rng = np.random.default_rng(11)
    shape = (45, 67)  # not a multiple of any block: padding on both sides
    w = sparse_weight(rng, shape, 0.3, block)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((m, shape[1])).astype(np.float32)
    call = bsr_linear(m, w, block, bias, "relu", TARGET)
    assert call.info["format"]["block"] == block
    check(call, x, linear_ref(x, w, bias, "relu"))


def test_panel_kernel_many_column_panels():
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (50, 300), 0.1)
    x = rng.standard_normal((20, 300)).astype(np.float32)
    call = csr_linear(20, w, target=TARGET, panel_cols=32, m_tile=8)
    assert call.info["panels"] == 10
    check(call, x, linear_ref(x, w))


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("row_block", [16, 24, None])
@pytest.mark.parametrize("k", [48, 64])
def test_panel_kernel_row_blocks_and_register_transposes(activation, row_block, k):
    """k % 16 == 0 takes the shuffle transposes of x (16 columns a step); a row block of a
    multiple of 16 outputs that divides the output takes them for y (a vector epilogue, GELU
    included); row_block=24 leaves a short last block and the scalar write."""
    rng = np.random.default_rng(13)
    w = sparse_weight(rng, (64, k), 0.2)
    w[5] = 0.0  # an empty row: its slots have no blocks
    bias = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((16, k)).astype(np.float32)
    call = csr_linear(16, w, bias, activation, TARGET, panel_cols=16, m_tile=8, row_block=row_block)
    assert call.info["kernel"] == "panel" and call.info["panels"] == k // 16
    check(call, x, linear_ref(x, w, bias, activation))


PANEL_DENSITIES = [0.0, "one", 0.01, 0.1, 0.5, 1.0]


@pytest.mark.parametrize("m", [5, 64, 130])
@pytest.mark.parametrize("density", PANEL_DENSITIES)
def test_panel_kernel_batches_and_densities(m, density):
    """Batches that are and are not multiples of the tile (5: one short tile; 64: the register
    transposes and per-panel x; 130: three tiles, the last one mostly padding) over densities
    from empty to full; three panels, so the yT round trip (and its prefetch from 4 blocks per
    slot on) runs; bias and activation vary with the case."""
    rng = np.random.default_rng(hash((m, str(density))) % 2**32)
    shape = (40, 96)
    w = sparse_weight(rng, shape, density)
    case = PANEL_DENSITIES.index(density)
    activation = [None, "relu", "gelu"][case % 3]
    bias = rng.standard_normal(shape[0]).astype(np.float32) if case % 2 else None
    x = rng.standard_normal((m, shape[1])).astype(np.float32)
    call = csr_linear(m, w, bias, activation, TARGET, panel_cols=32)
    assert call.info["kernel"] == "panel" and call.info["panels"] == 3
    assert call.info["x_per_panel"] == (m == 64)
    assert call.info["prefetch"] == (np.count_nonzero(w) >= 4 * 3 * shape[0])
    check(call, x, linear_ref(x, w, bias, activation))


@pytest.mark.parametrize(
    "m, m_tile, k",
    [(17, None, 64), (33, 16, 64), (49, None, 64), (49, 64, 70), (100, None, 70), (100, 64, 64)],
)
def test_panel_kernel_partial_last_batch_tile(m, m_tile, k):
    """A batch that is not a multiple of the tile (a sequence of 49 steps, 100 tokens): whole
    8-row groups of x take the register transposes, the rest and the padding lanes are filled
    one by one (zeros); y is written by the same transposes with each row's store guarded.
    k = 70 takes the element-by-element x path; bias, GELU and NaN ride along."""
    rng = np.random.default_rng(m * 100 + k)
    w = sparse_weight(rng, (64, k), 0.2)
    w[9, 3] = np.nan
    bias = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    call = csr_linear(m, w, bias, "gelu", TARGET, m_tile=m_tile, panel_cols=32)
    assert call.info["m_tile"] == batch_tile(m, m_tile) and m % call.info["m_tile"]
    check(call, x, linear_ref(x, w, bias, "gelu"))


@pytest.mark.parametrize(
    "m, wanted, widest, tile",
    [
        (64, None, 64, 64), (384, None, 64, 64),  # the batch is whole 64-lane tiles
        (49, None, 64, 32), (100, None, 64, 32), (197, None, 64, 32), (48, None, 64, 32),
        (24, None, 64, 32), (16, None, 64, 16), (5, None, 64, 8),  # no wider than needed
        (49, 48, 64, 32), (49, 56, 64, 32), (100, 64, 64, 64),  # powers of two only
        (100, None, 16, 16), (64, None, 8, 8),  # BSR: 64 / r lanes
    ],
)  # fmt: skip
def test_batch_tile_is_a_power_of_two(m, wanted, widest, tile):
    assert batch_tile(m, wanted, widest) == tile


@pytest.mark.parametrize(
    "row_block, per_panel", [(None, True), (16, False)], ids=["x-per-panel", "x-upfront"]
)
def test_panel_kernel_x_transpose_paths_with_nan_inf(row_block, per_panel):
    """One row block transposes x panel by panel (two tiles, a short last panel); several row
    blocks transpose it up front. NaN / Inf weights reach the output through the int64 records
    exactly where the dense product has them."""
    rng = np.random.default_rng(21)
    w = sparse_weight(rng, (48, 80), 0.5)  # 40 blocks per row: the prefetch path
    w[3, 7], w[20, 79], w[33, 40] = np.nan, np.inf, -np.inf
    bias = rng.standard_normal(48).astype(np.float32)
    x = rng.standard_normal((32, 80)).astype(np.float32)
    x[:, 40] = 0.0  # -inf * 0 is NaN in the dense product too
    call = csr_linear(32, w, bias, "relu", TARGET, m_tile=16, panel_cols=32, row_block=row_block)
    assert call.info["panels"] == 3 and call.info["prefetch"]
    assert call.info["x_per_panel"] == per_panel
    out = run_kernel(call, TARGET, x)
    ref = linear_ref(x, w, bias, "relu")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("ahead", [0, 1, RECORDS_AHEAD])
def test_panel_kernel_prefetches_its_records_ahead(ahead):
    """Each CSR slot prefetches the record lines ``ahead`` records on (clamped to the last
    record: 1 ahead reaches past the end from the last slots); the output is the same with and
    without, and the kernel holds the prefetch only when asked."""
    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (64, 96), 0.1)
    bias = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((16, 96)).astype(np.float32)
    call = panel_call("csr_linear", 16, BSR.from_dense(w, (1, 1)), bias, True, "relu", 16, 32,
                      None, False, rec_ahead=ahead)  # fmt: skip
    assert call.info["records_ahead"] == ahead
    script = call.func.script()
    assert ("llvm.prefetch" in script) == (ahead > 0 or call.info["prefetch"])
    assert ("address_of(recs[at])" in script) == (ahead > 0)
    check(call, x, linear_ref(x, w, bias, "relu"))


def test_bsr_panels_prefetch_no_records():
    w = sparse_weight(np.random.default_rng(2), (32, 64), 0.3)
    call = bsr_linear(8, w, (2, 2), target=TARGET)
    assert call.info["records_ahead"] == 0
    assert csr_linear(8, w, target=TARGET).info["records_ahead"] == RECORDS_AHEAD


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("row_batch", [1, 2, 4])
def test_row_kernel_small_batches(m, row_batch):
    """The row kernel serves ``row_batch`` batch rows per decoded chunk; leftovers are dropped."""
    rng = np.random.default_rng(m * 10 + row_batch)
    w = sparse_weight(rng, (19, 45), 0.3)
    bias = rng.standard_normal(19).astype(np.float32)
    x = rng.standard_normal((m, 45)).astype(np.float32)
    call = csr_linear(m, w, bias, "relu", TARGET, min_batch=99, row_batch=row_batch)
    assert call.info["kernel"] == "csr_rows"
    check(call, x, linear_ref(x, w, bias, "relu"))


def test_int32_indices_when_columns_exceed_int16():
    rng = np.random.default_rng(2)
    w = sparse_weight(rng, (3, 40000), 0.001)
    w[0, 39999] = 2.0
    x = rng.standard_normal((1, 40000)).astype(np.float32)
    call = csr_linear(1, w, target=TARGET)
    assert call.info["format"]["index_dtype"] == "int32"
    check(call, x, linear_ref(x, w))
    call3 = csr_linear(3, w, target=TARGET)  # row kernel at batch 3, two indices per word
    x3 = rng.standard_normal((3, 40000)).astype(np.float32)
    check(call3, x3, linear_ref(x3, w))


def test_row_kernel_on_generic_x86():
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (20, 33), 0.3)
    x = rng.standard_normal((1, 33)).astype(np.float32)
    generic = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
    call = csr_linear(1, w, target=generic)
    assert call.info["kernel"] == "csr_rows"
    out = run_kernel(call, generic, x)
    np.testing.assert_allclose(out, linear_ref(x, w), rtol=1e-4, atol=1e-4)


def test_info_reports_cost():
    w = sparse_weight(np.random.default_rng(0), (64, 64), 0.25)
    info = csr_linear(4, w, target=TARGET).info
    assert info["nnz"] == np.count_nonzero(w)
    assert info["macs_sparse"] >= 4 * info["nnz"] and info["bytes"] > 0


CONV_CASES = [
    # x shape, weight shape, density, strides, padding, dilation, activation
    ((1, 64, 14, 14), (64, 64, 5, 5), 0.2, (1, 1), (0, 0, 0, 0), (1, 1), None),
    ((1, 1, 32, 32), (64, 1, 5, 5), 0.5, (1, 1), (0, 0, 0, 0), (1, 1), "relu"),
    ((2, 3, 9, 11), (5, 3, 3, 3), 0.4, (2, 1), (1, 2, 0, 1), (1, 2), "gelu"),
    ((1, 4, 8, 8), (6, 4, 3, 3), 0.0, (1, 1), (1, 1, 1, 1), (1, 1), "relu"),
    ((2, 3, 7, 30), (4, 3, 3, 3), 0.5, (1, 1), (1, 0, 2, 3), (2, 1), None),  # Wp > 96: tiles
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_sparse_conv2d_matches_dense(case):
    x_shape, w_shape, density, strides, padding, dilation, activation = case
    rng = np.random.default_rng(9)
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    call = sparse_conv2d(
        x_shape, w, bias, ConvAttrs(strides, padding, dilation), activation, TARGET
    )
    ref = conv_ref(x, w, bias, strides, padding, dilation, activation)
    check(call, x, ref)


@pytest.mark.parametrize("tile", [None, (2, 0), (1, 0), (4, 6), (1, 1)])
def test_sparse_conv2d_tiles_agree(tile):
    """The wide tile (rows over the padded width) and the classic tile give the same output."""
    rng = np.random.default_rng(11)
    w = sparse_weight(rng, (7, 3, 3, 3), 0.4)
    bias = rng.standard_normal(7).astype(np.float32)
    x = rng.standard_normal((2, 3, 8, 12)).astype(np.float32)
    pads = (1, 2, 1, 0)
    call = sparse_conv2d(x.shape, w, bias, ConvAttrs(padding=pads), "relu", TARGET, tile=tile)
    if tile is None:
        assert call.info["layout"] == "flat"  # unit row stride defaults to the flat layout
    check(call, x, conv_ref(x, w, bias, (1, 1), pads, (1, 1), "relu"))


def test_sparse_conv2d_rejects_bad_tiles():
    w = np.ones((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="tile"):
        sparse_conv2d((1, 1, 8, 8), w, conv=ConvAttrs(strides=(2, 2)), tile=(4, 0))
    with pytest.raises(ValueError, match="tile"):
        sparse_conv2d((1, 1, 8, 8), w, tile=(4, 4))


def test_sparse_conv2d_rejects_groups():
    with pytest.raises(ValueError, match="groups"):
        sparse_conv2d((1, 4, 8, 8), np.ones((4, 2, 3, 3), np.float32), conv=ConvAttrs(groups=2))


def test_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        csr_linear(1, np.eye(4, dtype=np.float32), activation="tanh")


def to_tiles(a: np.ndarray, m_tile: int) -> np.ndarray:
    """[m, features] -> the panel kernels' tile layout [m / m_tile, features, m_tile]."""
    m, f = a.shape
    return np.ascontiguousarray(a.reshape(m // m_tile, m_tile, f).transpose(0, 2, 1))


@pytest.mark.parametrize("layout", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize(
    "m, density, block, panel_cols",
    [
        (64, 0.1, (1, 1), 32),  # three panels: y accumulates in place across them
        (128, "one", (1, 1), None),  # two tiles, one panel
        (32, 0.0, (1, 1), 32),  # empty weight: bias only, written by the last panel
        (64, 1.0, (1, 1), 48),
        (64, 0.3, (2, 4), 32),  # BSR blocks
    ],
)
def test_panel_kernel_tile_layouts(layout, m, density, block, panel_cols):
    """x read, y written, or both in the transposed tile layout: the same values as the row
    layout, for every activation (chosen by the case) and with the x-per-panel path (m=64)."""
    x_tiles, y_tiles = layout
    rng = np.random.default_rng(hash((m, str(density), block)) % 2**32)
    shape = (48, 96)
    w = sparse_weight(rng, shape, density, block)
    activation = [None, "relu", "gelu"][m % 3]
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    x = rng.standard_normal((m, shape[1])).astype(np.float32)
    if block == (1, 1):
        base = csr_linear(m, w, bias, activation, TARGET, panel_cols=panel_cols)
    else:
        base = bsr_linear(m, w, block, bias, activation, TARGET, panel_cols=panel_cols)
    m_tile = base.info["m_tile"]
    call = base.relayout(x_tiles, y_tiles)
    assert (call.info["x_layout"], call.info["y_layout"]) == (
        "tiles" if x_tiles else "rows",
        "tiles" if y_tiles else "rows",
    )
    assert not (x_tiles and call.info["x_per_panel"])
    assert call.info["prefetch"] is False or not y_tiles
    ref = linear_ref(x, w, bias, activation)
    out = run_kernel(call, TARGET, to_tiles(x, m_tile) if x_tiles else x)
    assert out.shape == call.out_shape
    expected = to_tiles(ref, m_tile) if y_tiles else ref
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu", "sigmoid"])
@pytest.mark.parametrize("m, m_tile", [(64, 64), (40, 16), (48, 32), (16, 8)])
def test_heavy_epilogue_at_16_lanes_equals_8(activation, m, m_tile):
    """A heavy activation written to y's tiles at 16 lanes gives the 8-lane kernel's values
    and the reference's; an 8-row tile and the row layout keep 8 lanes, and a partial last
    tile (40 rows in 16s) stores only its rows."""
    rng = np.random.default_rng(m * 7 + m_tile)
    w = sparse_weight(rng, (64, 48), 0.2)
    w[3] = 0.0  # an empty row: bias and activation only
    bias = rng.standard_normal(64).astype(np.float32)
    x = rng.standard_normal((m, 48)).astype(np.float32) * 2
    ref = linear_ref(x, w, bias, activation)
    bsr = BSR.from_dense(w, (1, 1))
    outs = {}
    for lanes in (8, 16):
        call = panel_call("csr_linear", m, bsr, bias, True, activation, m_tile, None, 16, True,
                          epilogue_lanes=lanes)  # fmt: skip
        assert call.info["epilogue_lanes"] == 8  # rows: after the 8 x 8 transposes
        outs[lanes, "rows"] = run_kernel(call, TARGET, x)
        if call.relayout is not None:
            tiled = call.relayout(False, True)
            assert tiled.info["epilogue_lanes"] == (lanes if m_tile % lanes == 0 else 8)
            outs[lanes, "tiles"] = run_kernel(tiled, TARGET, x)
    for (_, layout), out in outs.items():
        expected = to_tiles(ref, m_tile) if layout == "tiles" else ref
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out, outs[8, layout], rtol=1e-6, atol=1e-7)


def test_tile_layout_needs_whole_tiles():
    """A batch that is no multiple of the tile has no tile form (the layout would need padding);
    the row kernel (small batches) has none either."""
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (16, 32), 0.2)
    assert csr_linear(70, w, target=TARGET).relayout is None
    assert csr_linear(2, w, target=TARGET).relayout is None
    assert csr_linear(64, w, target=TARGET).relayout is not None


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_panel_kernel_fma_loop_takes_the_targets_width(isa):
    """The panel kernel's inner loop is one ``m_tile``-lane vector expression: LLVM emits zmm
    FMAs for it on AVX-512 and ymm on AVX2 (built on any machine; run where this CPU can)."""
    from .isa import ZMM, asm_of, count, isa_target, run_target

    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (96, 128), 0.1)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    call = csr_linear(64, w, target=isa_target(isa), min_batch=2, parallel=False)
    assert call.info["kernel"] == "panel"
    asm = asm_of(call, isa_target(isa))
    assert (count(r"vfmadd\w+\s+[^\n]*" + ZMM, asm) > 0) == (isa == "avx512")
    out = run_kernel(call, run_target(isa), x)
    np.testing.assert_allclose(out, linear_ref(x, w), rtol=1e-4, atol=1e-4)
