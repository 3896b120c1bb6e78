"""The transposed-panel kernel: BSR (CSR = 1x1 blocks) x dense x for batches of 2 and more.

``x`` is transposed inside the kernel to ``xT[K, m]`` so one weight non-zero multiplies a
contiguous vector of batch values: ``yT[n, :] += w[n, k] * xT[k, :]``, with the ``yT`` tile held
in registers. Block rows are grouped in row blocks of ``row_block`` and the weight columns in
``npanels`` panels of ``panel_w`` columns; slot ``s`` of (row block ``rb``, panel ``p``) is block
row ``rows[slot]`` with blocks ``seg[slot] .. seg[slot + 1]`` (see ``pack_row_panels``), where
``slot = rb * row_block * npanels + p * rl + s`` and ``rl`` is the row block's length. A tile of
``r x m_tile`` partial sums lives in registers within a slot and in ``yT`` between panels; a row
block's ``yT`` (``row_block * r * m_tile`` floats) stays in cache while all panels pass, and is
written to ``y`` as soon as the last panel is done. The slots of a panel are sorted by length,
so the loop over a slot's blocks exits where the branch predictor expects (random lengths cost
a misprediction per slot).

CSR weights come as one int64 record per non-zero (``panel_records``): a single integer load
gives both the value (moved to a vector register and broadcast, no second load) and the ``xT``
offset (pre-scaled, no shift). The inner loop is bound by the load ports (eight ``xT`` vectors
per non-zero), so the load saved per non-zero is ~5% of the layer. The ``yT`` row of the slot
two ahead is prefetched when slots are long enough (``prefetch``): it was evicted to L2 since
the last panel. Each CSR slot also prefetches the records ``RECORDS_AHEAD`` on: in a model the
weights come from L3 or DRAM.

``x_tiles`` / ``y_tiles``: x comes in, or y goes out, already transposed in the tile layout
``[m / m_tile, features, m_tile]`` (``tiles_shape``), which is xT / yT itself. Between two panel
kernels this drops the producer's y transpose and the consumer's x transpose (2048x2048 at
batch 64: 0.98 -> 0.94 ms with both, A/B); with ``y_tiles`` the partial sums accumulate in y
itself and the last panel's slot writes act(acc + bias) in place, with no transposing pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats.bsr import BSR
from ._epilogue import HEAVY_ACTIVATIONS, plus_bias
from ._epilogue import epilogue as _epilogue
from ._prefetch import prefetch as prefetch_line
from ._transpose8 import transpose8
from .kernel import KernelCall
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info
from .panel_packing import pack_row_panels, panel_records

RECORDS_PER_LINE = 8  # CSR records (int64: value and offset) per 64-byte cache line
# How far ahead (in records) a slot prefetches the records it will read: in a model a layer's
# weights were last read a whole inference ago and come from L3 or DRAM, in short runs (one a
# slot) that the hardware prefetcher does not get far enough ahead of. Four 2048x2048 layers at
# 10%, batch 64, chained: 850 us a layer without, 710 with (one layer's weights reused four
# times: 735 and 700; Zen 4).
RECORDS_AHEAD = 256


@dataclass(frozen=True)
class PanelKernelSpec:
    """Everything one panel kernel is specialized to: sizes, packing, layouts and knobs.

    ``block`` is (r, c) (1x1: CSR records); ``dtypes`` the (column index, segment pointer, slot
    row) dtypes of the packed weight; ``nbias`` the bias buffer's length (1 without a bias).
    """

    m: int
    n: int
    k: int
    block: tuple[int, int]
    nblocks: int
    npanels: int
    panel_w: int
    row_block: int
    dtypes: tuple[str, str, str]
    nbias: int
    has_bias: bool
    activation: str | None
    m_tile: int  # a power of two, at least 8 (``batch_tile``): whole 8x8 register transposes
    parallel: bool
    prefetch: bool
    x_per_panel: bool
    x_tiles: bool = False
    y_tiles: bool = False
    # CSR: each slot first prefetches the record lines this many records ahead (0: none)
    rec_ahead: int = 0
    # vector width of a heavy activation (GELU, SiLU...) written straight to y's tiles: 16 on
    # AVX-512
    epilogue_lanes: int = 8

    @property
    def act_lanes(self) -> int:
        """Lanes a heavy activation runs at in the last panel's slots (``y_tiles``):
        ``epilogue_lanes`` where the tile is whole vectors of it. BERT-base's FFN1 with GELU
        (3072x768 at 10%, 128 rows, Intel AVX-512): 1036-1054 us at 8 lanes, 690-811 at 16
        (the same values). The row layout's epilogue, after its 8 x 8 transposes, measured the
        same at either width, so it stays 8 wide."""
        if self.activation not in HEAVY_ACTIVATIONS or not self.y_tiles:
            return 8
        lanes = self.epilogue_lanes
        return lanes if self.m_tile % lanes == 0 else 8

    @property
    def packed(self) -> bool:
        """CSR: one int64 record per non-zero instead of values and columns."""
        return self.block == (1, 1)

    @property
    def nbr(self) -> int:
        return -(-self.n // self.block[0])

    @property
    def kp(self) -> int:
        """K padded to whole blocks."""
        return -(-self.k // self.block[1]) * self.block[1]

    @property
    def mp(self) -> int:
        """The batch padded to whole tiles."""
        return -(-self.m // self.m_tile) * self.m_tile

    @property
    def ntiles(self) -> int:
        return self.mp // self.m_tile

    @property
    def nrb(self) -> int:
        """Row blocks."""
        return -(-self.nbr // self.row_block)

    @property
    def nslots(self) -> int:
        return max(self.npanels * self.nbr, 1)

    @property
    def rb_out(self) -> int:
        """Output rows per row block."""
        return self.row_block * self.block[0]

    @property
    def loop(self):
        """The loop kind of the row blocks (and the up-front transposes)."""
        return T.parallel if self.parallel else T.serial


def _transpose_x_macro(spec: PanelKernelSpec):
    """Macro: all of x into the zero-padded, tile-major ``xT`` scratch before the first panel."""
    m, k, m_tile, kp, mp = spec.m, spec.k, spec.m_tile, spec.kp, spec.mp
    kblocks = -(-kp // 16)
    exact_x = k == kp and k % 16 == 0
    whole = m // 8 * 8  # batch rows the register transposes take; the rest and the padding
    rows = spec.loop  # lanes up to mp go element by element (zeros past m)

    @T.macro
    def transpose_x(x, xt):
        if exact_x:
            # no padding: 8 x 8 register transposes straight into xT, 16 columns (a cache line
            # of x) a step; 4 such steps per batch block, so each x row is read 256 contiguous
            # bytes at a time (one line per row and step left x's 64 row streams to the
            # prefetcher: 2x slower)
            for ko in rows(-(-(k // 16) // 4)):
                for bb in range(m // 8):
                    for ki in range(T.min(4, k // 16 - ko * 4)):
                        kb: T.let = ko * 4 + ki
                        at: T.let = (bb * 8 // m_tile * kp + kb * 16) * m_tile + bb * 8 % m_tile
                        transpose8(x, bb * 8, kb * 16, xt, at, m_tile)
                        transpose8(x, bb * 8, kb * 16 + 8, xt, at + 8 * m_tile, m_tile)
            if whole < mp:
                for kk in rows(k):
                    for bb in range(whole, mp):
                        xt[(bb // m_tile * kp + kk) * m_tile + bb % m_tile] = T.if_then_else(
                            bb < m, x[T.min(bb, m - 1), kk], T.float32(0)
                        )
        else:
            for kb in rows(kblocks):
                for bb in range(mp):
                    for kk in T.unroll(16):
                        if kb * 16 + kk < kp:
                            xt[(bb // m_tile * kp + kb * 16 + kk) * m_tile + bb % m_tile] = (
                                T.if_then_else(
                                    kb * 16 + kk < k and bb < m,
                                    x[T.min(bb, m - 1), T.min(kb * 16 + kk, k - 1)],
                                    T.float32(0),
                                )
                            )

    return transpose_x


def _transpose_panel_macro(spec: PanelKernelSpec):
    """Macro: panel ``p`` of tile ``t`` of x into the panel-sized ``xT`` (see ``_x_per_panel``)."""
    k, m_tile, panel_w = spec.k, spec.m_tile, spec.panel_w

    @T.macro
    def transpose_panel(x, xt, t, p):
        for bb in range(m_tile // 8):
            for kb in range(T.min(panel_w, k - p * panel_w) // 16):
                transpose8(
                    x,
                    t * m_tile + bb * 8,
                    p * panel_w + kb * 16,
                    xt,
                    kb * 16 * m_tile + bb * 8,
                    m_tile,
                )
                transpose8(
                    x,
                    t * m_tile + bb * 8,
                    p * panel_w + kb * 16 + 8,
                    xt,
                    (kb * 16 + 8) * m_tile + bb * 8,
                    m_tile,
                )

    return transpose_panel


def _slot_macro(spec: PanelKernelSpec):
    """Macro: one slot, ``yT[row] (+)= sum over its blocks of w * xT[col]`` in a register tile.

    The tile starts at 0 on the first panel and from ``yT`` after; with ``y_tiles`` the last
    panel writes the finished row straight to y.
    """
    r, c = spec.block
    rc = r * c
    m_tile, panel_w, kp, row_block = spec.m_tile, spec.panel_w, spec.kp, spec.row_block
    npanels, nslots = spec.npanels, spec.nslots
    packed, prefetch, x_per_panel, y_tiles = (
        spec.packed, spec.prefetch, spec.x_per_panel, spec.y_tiles
    )  # fmt: skip
    has_bias, activation = spec.has_bias, spec.activation
    nline = -(-m_tile // 16)  # cache lines of one yT row
    rec_ahead, nrec = spec.rec_ahead, max(spec.nblocks, 1)
    lanes = spec.act_lanes

    @T.macro
    def slot_pass(wts, cols, seg, slot_rows, bias, xt, yt, y, t, rb, p, rl, s, ybase):
        slot: T.let = rb * row_block * npanels + p * rl + s
        ib: T.let = T.Cast("int32", slot_rows[slot])
        lo: T.let = T.Cast("int32", seg[slot])
        hi: T.let = T.Cast("int32", seg[slot + 1])
        acc = T.alloc_buffer((r * m_tile,), "float32", scope="global")
        if p == 0:
            for lane in T.vectorized(r * m_tile):
                acc[lane] = T.float32(0)
        else:
            if prefetch:
                ahead: T.let = T.Cast("int32", slot_rows[T.min(slot + 2, nslots - 1)])
                for a in T.unroll(r):
                    for h in T.unroll(nline):
                        T.evaluate(prefetch_line(yt[ybase + ahead * r + a, h * 16]))
            for a in T.unroll(r):
                for v in T.vectorized(m_tile):
                    acc[a * m_tile + v] = yt[ybase + ib * r + a, v]
        if packed:
            xbase: T.let = T.Cast(
                "int64", -p * panel_w * m_tile if x_per_panel else t * kp * m_tile
            )
            if rec_ahead > 0:
                # two lines ``rec_ahead`` records on: a whole slot's records at 10% density
                # (12.8 a slot of 128 columns); a loop over the slot's own count of lines ran
                # 8% slower (its trip count changes from slot to slot: a mispredicted exit)
                for h in T.unroll(2):
                    at: T.let = T.min(lo + rec_ahead + h * RECORDS_PER_LINE, nrec - 1)
                    T.evaluate(prefetch_line(wts[at]))
            for j in range(lo, hi):
                rec: T.let = wts[j]
                off: T.let = T.shift_right(rec, T.int64(32)) + xbase
                w1: T.let = T.reinterpret("float32", T.Cast("int32", rec))
                for v in T.vectorized(m_tile):
                    acc[v] = acc[v] + w1 * xt[off + T.Cast("int64", v)]
        else:
            for j in range(lo, hi):
                col: T.let = T.Cast("int32", cols[j]) * c
                for e in T.unroll(c):
                    for a in T.unroll(r):
                        w: T.let = wts[j * rc + a * c + e]
                        for v in T.vectorized(m_tile):
                            acc[a * m_tile + v] = (
                                acc[a * m_tile + v] + w * xt[(t * kp + col + e) * m_tile + v]
                            )
        if y_tiles and p == npanels - 1:  # the finished row, straight to y
            for a in T.unroll(r):
                for vb in T.unroll(m_tile // lanes):
                    y[t, ib * r + a, T.ramp(vb * lanes, 1, lanes)] = _epilogue(
                        plus_bias(
                            acc[T.ramp(a * m_tile + vb * lanes, 1, lanes)],
                            T.broadcast(bias[ib * r + a], lanes),
                            has_bias,
                        ),
                        activation,
                        lanes,
                    )
        else:
            for a in T.unroll(r):
                for v in T.vectorized(m_tile):
                    yt[ybase + ib * r + a, v] = acc[a * m_tile + v]

    return slot_pass


def _write_row_block_macro(spec: PanelKernelSpec):
    """Macro: a finished row block's ``yT`` -> y with bias and activation, 16 outputs (one cache
    line of a y row) at a time; 8 x 8 register transposes where no padding is in the way."""
    m, n, m_tile, rb_out = spec.m, spec.n, spec.m_tile, spec.rb_out
    has_bias, activation = spec.has_bias, spec.activation
    # a partial last batch tile (m % m_tile) takes the same transposes, each row's store
    # guarded: element by element it ran 5-10x slower than the whole kernel (m = 49: 365 us
    # against 28 us at 32 rows; 1024x256 at 10%, Zen 4)
    exact_y = rb_out % 16 == 0 and n % rb_out == 0
    partial = m % m_tile != 0
    nq = -(-rb_out // 16)  # groups of 16 output rows per row block

    @T.macro
    def write_row_block(yt, bias, y, t, rb):
        if exact_y:
            for q in range(rb_out // 16):
                for vb in range(m_tile // 8):
                    o: T.let = rb * rb_out + q * 16
                    tr = T.alloc_buffer((128,), "float32", scope="local")
                    transpose8(yt, o, vb * 8, tr, 0, 8)
                    transpose8(yt, o + 8, vb * 8, tr, 64, 8)
                    for j in T.unroll(8):
                        if not partial or t * m_tile + vb * 8 + j < m:
                            for h in T.unroll(2):
                                y[t * m_tile + vb * 8 + j, T.ramp(o + h * 8, 1, 8)] = _epilogue(
                                    plus_bias(
                                        tr[T.ramp(h * 64 + j * 8, 1, 8)],
                                        bias[T.ramp(o + h * 8, 1, 8)],
                                        has_bias,
                                    ),
                                    activation,
                                    8,
                                )
        else:
            for q in range(nq):
                for v in range(m_tile):
                    for e in T.unroll(16):
                        o1: T.let = rb * rb_out + q * 16 + e
                        if q * 16 + e < rb_out and o1 < n and t * m_tile + v < m:
                            y[t * m_tile + v, o1] = _epilogue(
                                plus_bias(yt[o1, v], bias[o1], has_bias), activation
                            )

    return write_row_block


def panel_kernel(spec: PanelKernelSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, weights..., seg, slot_rows, bias, y)`` for ``spec``.

    ``xT`` is a zero-padded [Kp, Mp] scratch (flat, tile-major), so padded batch lanes and
    padded block columns read zeros; with ``x_per_panel`` it holds one panel of one tile,
    transposed right before the panel's slots (see ``_x_per_panel``).
    """
    m, n, k, m_tile = spec.m, spec.n, spec.k, spec.m_tile
    idx_dtype, ptr_dtype, row_dtype = spec.dtypes
    x_tiles, y_tiles, x_per_panel = spec.x_tiles, spec.y_tiles, spec.x_per_panel
    nbr, kp, mp, ntiles, nrb, nslots = (
        spec.nbr,
        spec.kp,
        spec.mp,
        spec.ntiles,
        spec.nrb,
        spec.nslots,
    )
    npanels, row_block, rb_out = spec.npanels, spec.row_block, spec.rb_out
    nval = max(spec.nblocks * spec.block[0] * spec.block[1], 1)
    nidx = max(spec.nblocks, 1)
    nbias = spec.nbias
    rows = spec.loop
    nxt = spec.panel_w * m_tile if x_per_panel else ntiles * kp * m_tile
    if x_tiles or y_tiles:
        assert m == mp and k == kp and n == nbr * spec.block[0]
    assert not (x_tiles and x_per_panel)
    x_shape = (ntiles, k, m_tile) if x_tiles else (m, k)
    y_shape = (ntiles, n, m_tile) if y_tiles else (m, n)
    transpose_x = _transpose_x_macro(spec)
    transpose_panel = _transpose_panel_macro(spec)
    slot_pass = _slot_macro(spec)
    write_row_block = _write_row_block_macro(spec)

    @T.macro
    def body(x, wts, cols, seg, slot_rows, bias, y):
        # tile-major: a tile's rows are contiguous, so a panel of them covers every L1 set (rows
        # of the full width would use 1 / ntiles of the sets and evict each other); flat, so a
        # record's pre-scaled offset indexes it directly
        if x_tiles:  # x is xT already
            xt = T.decl_buffer((nxt,), "float32", data=x.data)
        else:
            xt = T.alloc_buffer((nxt,), "float32", scope="global")
        if y_tiles:  # y is yT already: accumulate there (no yT scratch in L2 beside y)
            yt = T.decl_buffer((ntiles * n, m_tile), "float32", data=y.data)
        else:
            yt = T.alloc_buffer((nrb * rb_out, m_tile), "float32", scope="global")
        if not x_per_panel and not x_tiles:
            transpose_x(x, xt)
        for t in range(ntiles):
            for rb in rows(nrb):
                rl: T.let = T.min(row_block, nbr - rb * row_block)
                ybase: T.let = t * n if y_tiles else 0
                for p in range(npanels):
                    if x_per_panel:  # this panel of this tile into the panel-sized xT
                        transpose_panel(x, xt, t, p)
                    for s in range(rl):
                        slot_pass(wts, cols, seg, slot_rows, bias, xt, yt, y, t, rb, p, rl, s,
                                  ybase)  # fmt: skip
                if not y_tiles:  # with y_tiles the last panel's slots wrote y
                    write_row_block(yt, bias, y, t, rb)

    if spec.packed:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            recs: T.Buffer((nidx,), "int64"),
            seg: T.Buffer((npanels * nbr + 1,), ptr_dtype),
            slot_rows: T.Buffer((nslots,), row_dtype),
            bias: T.Buffer((nbias,), "float32"),
            y: T.Buffer(y_shape, "float32"),
        ):
            body(x, recs, recs, seg, slot_rows, bias, y)

    else:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            vals: T.Buffer((nval,), "float32"),
            cols: T.Buffer((nidx,), idx_dtype),
            seg: T.Buffer((npanels * nbr + 1,), ptr_dtype),
            slot_rows: T.Buffer((nslots,), row_dtype),
            bias: T.Buffer((nbias,), "float32"),
            y: T.Buffer(y_shape, "float32"),
        ):
            body(x, vals, cols, seg, slot_rows, bias, y)

    return kernel


def batch_tile(m: int, wanted: int | None, widest: int = 64) -> int:
    """The batch lanes of a panel tile: ``wanted`` (None: ``widest`` where it divides the
    batch, else 32), as a power of two of at least 8 and no wider than the batch needs.

    Why powers of two: a 48- or 56-lane tile (3 / 3.5 zmm) ran 3-4x slower than 32 lanes on
    the same rows (1024x256 at 10%, Zen 4: m = 48 186 us vs 53, m = 49 219 vs 59); and where
    the batch is not a multiple of 64, 32 lanes measured faster than 64 at every batch tried
    (40-197 rows; 768x768 at 100 and 197 rows: 254 vs 262, 454 vs 518 us)."""
    if wanted is None:
        wanted = widest if m % widest == 0 else min(widest, 32)
    tile = 8
    while tile * 2 <= wanted:
        tile *= 2
    while tile > 8 and tile // 2 >= m:
        tile //= 2
    return tile


def _x_per_panel(m, k, block, m_tile, nbr, row_block, panel_w) -> bool:
    """Whether the panel kernel transposes x one panel at a time, right before the panel's slots.

    Then xT is one panel (32 KiB at 64 lanes) that is hot in L1 when the slots start, instead of
    all of x transposed up front and read back from L2 / L3 panel by panel: 384x1536 at batch
    128 -5%, 384x384 -3% (A/B, one thread). Only for one row block of at most 512 rows (BERT's
    384): with more rows in one block (2048x2048 at row_block 2048, 1536x384) it measured 5-8%
    slower, and with several row blocks every block would transpose x again. CSR only (the
    records carry the offsets it rebases), and only where the register transposes apply.
    """
    r, c = block
    exact = m % m_tile == 0 and k % 16 == 0 and k % c == 0
    return (r, c) == (1, 1) and exact and row_block >= nbr and nbr <= 512 and panel_w % 16 == 0


def tiles_shape(m: int, features: int, m_tile: int) -> tuple[int, int, int]:
    """Shape of an activation [m, features] in the panel kernels' transposed tile layout."""
    return (m // m_tile, features, m_tile)


def panel_call(name: str, m: int, bsr: BSR, bias_arr: np.ndarray, has_bias: bool,
               activation: str | None, m_tile: int | None, panel_cols: int | None,
               row_block: int | None, parallel: bool, rec_ahead: int = RECORDS_AHEAD,
               widest_tile: int = 64, epilogue_lanes: int = 8) -> KernelCall:  # fmt: skip
    """The panel kernel for ``bsr`` at batch ``m``, packed once for every layout of x and y.

    ``relayout`` of the returned call rebuilds it reading x and / or writing y in the tile
    layout, sharing the packed weights. ``panel_cols`` / ``row_block`` None: the defaults that
    keep a panel of xT in L1 and a row block's yT in L2. ``m_tile`` None: ``batch_tile``'s rule
    up to ``widest_tile`` lanes. ``epilogue_lanes`` 16: a heavy activation written to y's
    tiles runs at 16 lanes (``PanelKernelSpec.act_lanes``).
    """
    n, k = bsr.shape
    r, c = bsr.block
    m_tile = batch_tile(m, m_tile, widest_tile)
    # the tile layout needs whole tiles and whole blocks (xT / yT hold no padding then)
    tileable = m % m_tile == 0 and k % c == 0 and n % r == 0
    if panel_cols is None:  # 128 columns x 64 lanes measured best (xT rows of a panel: 32 KiB)
        panel_cols = max(c, 8192 // m_tile)
    nbr = max(1, -(-n // r))
    if row_block is None:  # 512 rows x 64 lanes: the row block's yT (128 KiB) stays in L2
        row_block = max(1, 512 // r)
    row_block = max(1, min(row_block, nbr))
    vals, cols, seg, slot_rows, npanels = pack_row_panels(bsr, panel_cols, row_block)
    if bsr.nblocks == 0:
        vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
    dtypes = (str(cols.dtype), str(seg.dtype), str(slot_rows.dtype))
    panel_w = max(1, panel_cols // c) * c  # weight columns per panel, whole blocks
    weights = (panel_records(vals, cols, m_tile),) if (r, c) == (1, 1) else (vals, cols)
    weight_bytes = sum(a.nbytes for a in weights) + seg.nbytes + slot_rows.nbytes

    def build(x_tiles: bool = False, y_tiles: bool = False) -> KernelCall:
        """The kernel for one layout of x and y; the packed weights are shared by every layout."""
        if (x_tiles or y_tiles) and not tileable:
            raise ValueError(
                f"{name}: no tile layout for batch {m}, m_tile {m_tile}, block {r}x{c}"
            )
        # prefetching the yT row two slots ahead pays where a slot's blocks hide its latency; on
        # short slots (1% density: ~1 block) its extra load and 4 prefetches cost more (+4%);
        # and with y in the tile layout (yT is y itself) it measured 1.5-3.5% slower (A/B,
        # 2048x2048 at batch 64, 1536x384 at 128 rows)
        prefetch = bsr.nblocks >= 4 * npanels * nbr and not y_tiles
        per_panel = _x_per_panel(m, k, (r, c), m_tile, nbr, row_block, panel_w) and not x_tiles
        spec = PanelKernelSpec(
            m, n, k, (r, c), bsr.nblocks, npanels, panel_w, row_block, dtypes, bias_arr.size,
            has_bias, activation, m_tile, parallel, prefetch, per_panel, x_tiles, y_tiles,
            rec_ahead if (r, c) == (1, 1) else 0, epilogue_lanes,
        )  # fmt: skip
        func = panel_kernel(spec)
        info = _linear_info(
            "panel", m, n, k, bsr.nnz, bsr.stored, weight_bytes,
            {"format": bsr.stats(), "m_tile": m_tile, "panels": npanels,
             "row_block": row_block, "prefetch": prefetch, "records_ahead": spec.rec_ahead,
             "x_per_panel": per_panel, "epilogue_lanes": spec.act_lanes,
             "x_layout": "tiles" if x_tiles else "rows",
             "y_layout": "tiles" if y_tiles else "rows"},
        )  # fmt: skip
        return KernelCall(
            func=_finish(func),
            name=name,
            consts=(*weights, seg, slot_rows, bias_arr),
            out_shape=tiles_shape(m, n, m_tile) if y_tiles else (m, n),
            info=info,
            relayout=build if tileable else None,
        )

    return build()
