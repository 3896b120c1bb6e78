"""Sparse-weight x dense-activation kernels for x86 CPUs (AVX2 + FMA), as block-free TIR.

Every builder takes the dense float32 weight (torch / Gemm-transB layout ``[N, K]``, conv OIHW),
packs it into the layout its kernel streams, and returns a ``KernelCall`` whose PrimFunc takes
``(activation, *consts, out)``. The kernels are written as plain TIR loops over static shapes
(closures over Python ints), because their reduction extents are data dependent.

Three kernels, picked by shape:

- ``rows`` (CSR, batch < ``min_batch``): one output row is a dot product of the row's non-zeros
  with ``x`` gathered at their columns. Rows are padded to chunks of 8 non-zeros; a chunk's
  indices are split out of int64 words in general-purpose registers and its 8 activations are
  loaded as scalars into one vector for an 8-wide FMA (twice as fast as ``vgatherdps`` on Zen 3).
- ``panel`` (CSR or BSR, batch >= ``min_batch``): ``x`` is transposed inside the kernel to
  ``xT[K, m]`` so one weight non-zero multiplies a contiguous vector of batch values:
  ``yT[n, :] += w[n, k] * xT[k, :]``, with the ``yT`` tile held in registers.
- ``block`` (BSR, small batch): one block row at a time, vectorized over the block.

``sparse_conv2d`` (the direct sparse convolution) lives in ``sparse_conv_x86`` and is
re-exported here.

Padding entries (zeros added to fill a vector) multiply activations the row already reads, so a
finite activation gives exactly the dense result (up to summation order); NaN / Inf weights
propagate as they would in the dense product.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.bsr import BSR
from ..formats.csr import CSR
from ._epilogue import ACTIVATIONS
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info
from .sparse_conv_x86 import sparse_conv2d
from .vector_math import install_llvm_lowering

# --------------------------------------------------------------------------- helpers


# 8 x 8 transpose in three stages of two-input shuffles, each one AVX instruction:
# unpcklps / unpckhps, shufps, vperm2f128 (24 in all). One shuffle of eight vectors (the
# obvious form) makes LLVM emit ~40 shuffles and spills.
_UNPACK_LO = [0, 8, 1, 9, 4, 12, 5, 13]
_UNPACK_HI = [2, 10, 3, 11, 6, 14, 7, 15]
_PAIRS_LO = [0, 1, 8, 9, 4, 5, 12, 13]
_PAIRS_HI = [2, 3, 10, 11, 6, 7, 14, 15]
_HALVES_LO = [0, 1, 2, 3, 8, 9, 10, 11]
_HALVES_HI = [4, 5, 6, 7, 12, 13, 14, 15]


@T.macro
def _transpose8(src, r0, c0, dst, d0, stride):
    """``dst[d0 + stride j : d0 + stride j + 8] = src[r0 : r0 + 8, c0 + j]``: column j as a
    vector (``stride`` 8 packs the columns into a scratch, a row length writes them in place)."""
    t0: T.let = T.Shuffle([src[r0, T.ramp(c0, 1, 8)], src[r0 + 1, T.ramp(c0, 1, 8)]], _UNPACK_LO)
    t1: T.let = T.Shuffle([src[r0, T.ramp(c0, 1, 8)], src[r0 + 1, T.ramp(c0, 1, 8)]], _UNPACK_HI)
    t2: T.let = T.Shuffle(
        [src[r0 + 2, T.ramp(c0, 1, 8)], src[r0 + 3, T.ramp(c0, 1, 8)]], _UNPACK_LO
    )
    t3: T.let = T.Shuffle(
        [src[r0 + 2, T.ramp(c0, 1, 8)], src[r0 + 3, T.ramp(c0, 1, 8)]], _UNPACK_HI
    )
    t4: T.let = T.Shuffle(
        [src[r0 + 4, T.ramp(c0, 1, 8)], src[r0 + 5, T.ramp(c0, 1, 8)]], _UNPACK_LO
    )
    t5: T.let = T.Shuffle(
        [src[r0 + 4, T.ramp(c0, 1, 8)], src[r0 + 5, T.ramp(c0, 1, 8)]], _UNPACK_HI
    )
    t6: T.let = T.Shuffle(
        [src[r0 + 6, T.ramp(c0, 1, 8)], src[r0 + 7, T.ramp(c0, 1, 8)]], _UNPACK_LO
    )
    t7: T.let = T.Shuffle(
        [src[r0 + 6, T.ramp(c0, 1, 8)], src[r0 + 7, T.ramp(c0, 1, 8)]], _UNPACK_HI
    )
    s0: T.let = T.Shuffle([t0, t2], _PAIRS_LO)
    s1: T.let = T.Shuffle([t0, t2], _PAIRS_HI)
    s2: T.let = T.Shuffle([t1, t3], _PAIRS_LO)
    s3: T.let = T.Shuffle([t1, t3], _PAIRS_HI)
    s4: T.let = T.Shuffle([t4, t6], _PAIRS_LO)
    s5: T.let = T.Shuffle([t4, t6], _PAIRS_HI)
    s6: T.let = T.Shuffle([t5, t7], _PAIRS_LO)
    s7: T.let = T.Shuffle([t5, t7], _PAIRS_HI)
    dst[T.ramp(d0, 1, 8)] = T.Shuffle([s0, s4], _HALVES_LO)
    dst[T.ramp(d0 + 1 * stride, 1, 8)] = T.Shuffle([s1, s5], _HALVES_LO)
    dst[T.ramp(d0 + 2 * stride, 1, 8)] = T.Shuffle([s2, s6], _HALVES_LO)
    dst[T.ramp(d0 + 3 * stride, 1, 8)] = T.Shuffle([s3, s7], _HALVES_LO)
    dst[T.ramp(d0 + 4 * stride, 1, 8)] = T.Shuffle([s0, s4], _HALVES_HI)
    dst[T.ramp(d0 + 5 * stride, 1, 8)] = T.Shuffle([s1, s5], _HALVES_HI)
    dst[T.ramp(d0 + 6 * stride, 1, 8)] = T.Shuffle([s2, s6], _HALVES_HI)
    dst[T.ramp(d0 + 7 * stride, 1, 8)] = T.Shuffle([s3, s7], _HALVES_HI)


def _plus_bias(v, bias_v, has_bias: bool):
    """``v + bias_v`` when the kernel has a bias (both TIR expressions of the same lanes)."""
    return v + bias_v if has_bias else v


def _prefetch(buf, row, col):
    """Prefetch the cache line of ``buf[row, col]`` into L1 for reading (``prefetcht0``)."""
    return T.call_llvm_intrin(
        "void", "llvm.prefetch.p0", T.address_of(buf[row, col]), T.int32(0), T.int32(3), T.int32(1)
    )


# --------------------------------------------------------------------------- packing


def pack_gather_rows(csr: CSR, lanes: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR with every row padded to a multiple of ``lanes`` entries.

    Returns ``(values, columns, chunk_ptr)``: row ``i`` owns chunks ``chunk_ptr[i]..[i+1]`` of
    ``lanes`` entries each. Padding entries are 0.0 at the row's last column, so they read an
    activation the row reads anyway.
    """
    counts = csr.row_nnz()
    padded = counts + (-counts) % lanes
    starts = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    total = int(starts[-1])
    values = np.zeros(total, dtype=np.float32)
    columns = np.zeros(total, dtype=csr.indices.dtype)
    rows = csr.row_ids()
    offset = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1].astype(np.int64), counts)
    dest = starts[rows] + offset
    values[dest] = csr.data
    columns[dest] = csr.indices
    for i in np.nonzero(padded > counts)[0]:  # pad with the row's last column
        columns[starts[i] + counts[i] : starts[i + 1]] = csr.indices[csr.indptr[i + 1] - 1]
    chunk_ptr = (starts // lanes).astype(np.int32)
    return values, columns, chunk_ptr


def _block_values(bsr: BSR, vec_rows: bool) -> np.ndarray:
    """Block values flattened; each block transposed to [c, r] when the kernel vectorizes rows."""
    data = bsr.data.transpose(0, 2, 1) if vec_rows else bsr.data
    return np.ascontiguousarray(data.reshape(-1), dtype=np.float32)


# --------------------------------------------------------------------------- kernels


def _index_words(cols: np.ndarray) -> tuple[np.ndarray, int]:
    """Column indices reinterpreted as int64 words: ``(words, indices per word)``.

    The row kernel loads one word and splits it with shifts in general-purpose registers, so
    every non-zero costs one load (its activation) instead of two.
    """
    per_word = 8 // cols.itemsize
    return np.ascontiguousarray(cols).view(np.int64), per_word


def _word_index(word, lane: int, per_word: int):
    """Index ``lane`` of an int64 word of ``per_word`` unsigned packed indices, as int32."""
    bits = 64 // per_word
    mask = T.int64((1 << bits) - 1)
    if lane == 0:
        return T.Cast("int32", T.bitwise_and(word, mask))
    return T.Cast("int32", T.bitwise_and(T.shift_right(word, T.int64(bits * lane)), mask))


def _rows_kernel(m, n, k, nchunks, per_word, nbias, has_bias, activation, unroll, mb, parallel):
    """CSR rows x dense x: one output is a dot product of a row's non-zeros with gathered x.

    Rows are padded to chunks of 8 non-zeros. A chunk's eight column indices come from two
    (int16) or four (int32) int64 loads split with shifts, the eight activations are loaded as
    scalars into a vector, and one 8-wide FMA consumes them: one load per non-zero, no
    ``vpextrw``. On Zen 3 this runs about twice as fast as ``vgatherdps`` (measured 0.11 vs
    0.21 ms for 2048x2048 at 10%). ``unroll`` chunks are in flight per batch row with
    ``unroll`` independent accumulators; ``mb`` batch rows share each decoded chunk.
    """
    nval = max(nchunks * 8, 8)
    nwords = max(nval // per_word, 1)
    rows = T.parallel if parallel else T.serial
    wpc = 8 // per_word  # int64 words per chunk
    lanes = 8 * unroll
    nbo = -(-m // mb)

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        words: T.Buffer((nwords,), "int64"),
        ptr: T.Buffer((n + 1,), "int32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        for i in rows(n):
            lo: T.let = ptr[i]
            hi: T.let = ptr[i + 1]
            for bo in range(nbo):
                acc = T.alloc_buffer((mb * lanes,), "float32", scope="global")
                for lane in T.vectorized(mb * lanes):
                    acc[lane] = T.float32(0)
                for c in range((hi - lo) // unroll):
                    at: T.let = (lo + c * unroll) * 8
                    idx = T.alloc_buffer((lanes,), "int32", scope="global")
                    for u in T.unroll(unroll * wpc):
                        wd: T.let = words[at // per_word + u]
                        for j in T.unroll(per_word):
                            idx[u * per_word + j] = _word_index(wd, j, per_word)
                    for bi in T.unroll(mb):
                        xv = T.alloc_buffer((lanes,), "float32", scope="global")
                        for j in T.unroll(lanes):
                            xv[j] = x[T.min(bo * mb + bi, m - 1), idx[j]]
                        for u in T.unroll(unroll):
                            acc[T.ramp(bi * lanes + u * 8, 1, 8)] = (
                                acc[T.ramp(bi * lanes + u * 8, 1, 8)]
                                + vals[T.ramp(at + u * 8, 1, 8)] * xv[T.ramp(u * 8, 1, 8)]
                            )
                for c in range(lo + (hi - lo) // unroll * unroll, hi):
                    idx1 = T.alloc_buffer((8,), "int32", scope="global")
                    for u in T.unroll(wpc):
                        wd1: T.let = words[c * wpc + u]
                        for j in T.unroll(per_word):
                            idx1[u * per_word + j] = _word_index(wd1, j, per_word)
                    for bi in T.unroll(mb):
                        xv1 = T.alloc_buffer((8,), "float32", scope="global")
                        for j in T.unroll(8):
                            xv1[j] = x[T.min(bo * mb + bi, m - 1), idx1[j]]
                        acc[T.ramp(bi * lanes, 1, 8)] = (
                            acc[T.ramp(bi * lanes, 1, 8)]
                            + vals[T.ramp(c * 8, 1, 8)] * xv1[T.ramp(0, 1, 8)]
                        )
                for bi in T.unroll(mb):
                    # tree reduction: a serial 16-add chain per row costs more than the row
                    for u in T.unroll(unroll - 1):
                        acc[T.ramp(bi * lanes, 1, 8)] = (
                            acc[T.ramp(bi * lanes, 1, 8)]
                            + acc[T.ramp(bi * lanes + u * 8 + 8, 1, 8)]
                        )
                    acc[T.ramp(bi * lanes, 1, 4)] = (
                        acc[T.ramp(bi * lanes, 1, 4)] + acc[T.ramp(bi * lanes + 4, 1, 4)]
                    )
                    acc[T.ramp(bi * lanes, 1, 2)] = (
                        acc[T.ramp(bi * lanes, 1, 2)] + acc[T.ramp(bi * lanes + 2, 1, 2)]
                    )
                    if bo * mb + bi < m:
                        if has_bias:
                            y[bo * mb + bi, i] = _epilogue(
                                acc[bi * lanes] + acc[bi * lanes + 1] + bias[i], activation
                            )
                        else:
                            y[bo * mb + bi, i] = _epilogue(
                                acc[bi * lanes] + acc[bi * lanes + 1], activation
                            )

    return kernel


def _panel_kernel(m, n, k, block, nblocks, npanels, panel_w, row_block, dtypes, nbias,
                  has_bias, activation, m_tile, parallel, prefetch, x_per_panel,
                  x_tiles=False, y_tiles=False):  # fmt: skip
    """BSR (CSR = 1x1 blocks) x dense x with x transposed: yT[row, :] += w * xT[col, :].

    ``xT`` is a zero-padded [Kp, Mp] scratch (flat, tile-major), so padded batch lanes and
    padded block columns read zeros; with ``x_per_panel`` it holds one panel of one tile,
    transposed right before the panel's slots (see ``_x_per_panel``). Block rows are grouped in
    row blocks of ``row_block`` and the weight columns in ``npanels`` panels of ``panel_w``
    columns; slot ``s`` of (row block ``rb``, panel ``p``) is block row
    ``rows[slot]`` with blocks ``seg[slot] .. seg[slot + 1]`` (see ``pack_row_panels``), where
    ``slot = rb * row_block * npanels + p * rl + s`` and ``rl`` is the row block's length.
    A tile of ``r x m_tile`` partial sums lives in registers within a slot and in ``yT``
    between panels; a row block's ``yT`` (``row_block * r * m_tile`` floats) stays in cache
    while all panels pass, and is written to ``y`` as soon as the last panel is done. The
    slots of a panel are sorted by length, so the loop over a slot's blocks exits where the
    branch predictor expects (random lengths cost a misprediction per slot).

    CSR weights come as one int64 record per non-zero (``panel_records``): a single integer
    load gives both the value (moved to a vector register and broadcast, no second load) and
    the ``xT`` offset (pre-scaled, no shift). The inner loop is bound by the load ports (eight
    ``xT`` vectors per non-zero), so the load saved per non-zero is ~5% of the layer. The
    ``yT`` row of the slot two ahead is prefetched when slots are long enough (``prefetch``):
    it was evicted to L2 since the last panel.

    ``x_tiles`` / ``y_tiles``: x comes in, or y goes out, already transposed in the tile layout
    ``[m / m_tile, features, m_tile]`` (``tiles_shape``), which is xT / yT itself. Between two
    panel kernels this drops the producer's y transpose and the consumer's x transpose (2048x2048
    at batch 64: 0.98 -> 0.94 ms with both, A/B); with ``y_tiles`` the partial sums accumulate in y
    itself and the last panel's slot writes act(acc + bias) in place, with no transposing pass.
    """
    r, c = block
    idx_dtype, ptr_dtype, row_dtype = dtypes
    packed = (r, c) == (1, 1)
    nbr = -(-n // r)
    kp = -(-k // c) * c
    mp = -(-m // m_tile) * m_tile
    ntiles = mp // m_tile
    rc = r * c
    nval = max(nblocks * rc, 1)
    nidx = max(nblocks, 1)
    kblocks = -(-kp // 16)
    nrb = -(-nbr // row_block)
    nslots = max(npanels * nbr, 1)
    rb_out = row_block * r  # output rows per row block
    nq = -(-rb_out // 16)  # groups of 16 output rows per row block
    nline = -(-m_tile // 16)  # cache lines of one yT row
    rows = T.parallel if parallel else T.serial
    exact_x = m == mp and k == kp and k % 16 == 0 and m_tile % 8 == 0
    exact_y = rb_out % 16 == 0 and n % rb_out == 0 and m % m_tile == 0 and m_tile % 8 == 0
    nxt = panel_w * m_tile if x_per_panel else ntiles * kp * m_tile
    if x_tiles or y_tiles:
        assert m == mp and k == kp and n == nbr * r and m_tile % 8 == 0
    assert not (x_tiles and x_per_panel)
    x_shape = (ntiles, k, m_tile) if x_tiles else (m, k)
    y_shape = (ntiles, n, m_tile) if y_tiles else (m, n)

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
                            _transpose8(x, bb * 8, kb * 16, xt, at, m_tile)
                            _transpose8(x, bb * 8, kb * 16 + 8, xt, at + 8 * m_tile, m_tile)
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
        for t in range(ntiles):
            for rb in rows(nrb):
                rl: T.let = T.min(row_block, nbr - rb * row_block)
                ybase: T.let = t * n if y_tiles else 0
                for p in range(npanels):
                    if x_per_panel:  # this panel of this tile into the panel-sized xT
                        for bb in range(m_tile // 8):
                            for kb in range(T.min(panel_w, k - p * panel_w) // 16):
                                _transpose8(
                                    x,
                                    t * m_tile + bb * 8,
                                    p * panel_w + kb * 16,
                                    xt,
                                    kb * 16 * m_tile + bb * 8,
                                    m_tile,
                                )
                                _transpose8(
                                    x,
                                    t * m_tile + bb * 8,
                                    p * panel_w + kb * 16 + 8,
                                    xt,
                                    (kb * 16 + 8) * m_tile + bb * 8,
                                    m_tile,
                                )
                    for s in range(rl):
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
                                ahead: T.let = T.Cast(
                                    "int32", slot_rows[T.min(slot + 2, nslots - 1)]
                                )
                                for a in T.unroll(r):
                                    for h in T.unroll(nline):
                                        T.evaluate(_prefetch(yt, ybase + ahead * r + a, h * 16))
                            for a in T.unroll(r):
                                for v in T.vectorized(m_tile):
                                    acc[a * m_tile + v] = yt[ybase + ib * r + a, v]
                        if packed:
                            xbase: T.let = T.Cast(
                                "int64", -p * panel_w * m_tile if x_per_panel else t * kp * m_tile
                            )
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
                                                acc[a * m_tile + v]
                                                + w * xt[(t * kp + col + e) * m_tile + v]
                                            )
                        if y_tiles and p == npanels - 1:  # the finished row, straight to y
                            for a in T.unroll(r):
                                for vb in T.unroll(m_tile // 8):
                                    y[t, ib * r + a, T.ramp(vb * 8, 1, 8)] = _epilogue(
                                        _plus_bias(
                                            acc[T.ramp(a * m_tile + vb * 8, 1, 8)],
                                            T.broadcast(bias[ib * r + a], 8),
                                            has_bias,
                                        ),
                                        activation,
                                        8,
                                    )
                        else:
                            for a in T.unroll(r):
                                for v in T.vectorized(m_tile):
                                    yt[ybase + ib * r + a, v] = acc[a * m_tile + v]
                # the row block's yT -> y, 16 outputs (one cache line of a y row) at a time
                if y_tiles:
                    pass  # the last panel's slots wrote y
                elif exact_y:  # 8 x 8 register transposes
                    for q in range(rb_out // 16):
                        for vb in range(m_tile // 8):
                            o: T.let = rb * rb_out + q * 16
                            tr = T.alloc_buffer((128,), "float32", scope="local")
                            _transpose8(yt, o, vb * 8, tr, 0, 8)
                            _transpose8(yt, o + 8, vb * 8, tr, 64, 8)
                            for j in T.unroll(8):
                                for h in T.unroll(2):
                                    y[t * m_tile + vb * 8 + j, T.ramp(o + h * 8, 1, 8)] = _epilogue(
                                        _plus_bias(
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
                                        _plus_bias(yt[o1, v], bias[o1], has_bias), activation
                                    )

    if packed:

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


def _block_kernel(m, n, k, block, nblocks, idx_dtype, ptr_dtype, nbias, has_bias, activation,
                  parallel):  # fmt: skip
    """BSR x dense x at small batch: vectorized over the block's longer side.

    Wide blocks (c >= r) load c contiguous activations and keep r x c partial sums; tall blocks
    (r > c, values stored [c, r]) broadcast one activation over r outputs.
    """
    r, c = block
    nbr = -(-n // r)
    kp = -(-k // c) * c
    rc = r * c
    nval = max(nblocks * rc, 1)
    nidx = max(nblocks, 1)
    vec_rows = r > c
    rows = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        cols: T.Buffer((nidx,), idx_dtype),
        ptr: T.Buffer((nbr + 1,), ptr_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        xp = T.alloc_buffer((m, kp), "float32", scope="global")
        for bb in range(m):
            for kk in range(kp):
                xp[bb, kk] = T.if_then_else(kk < k, x[bb, T.min(kk, k - 1)], T.float32(0))
        for ib in rows(nbr):
            lo: T.let = T.Cast("int32", ptr[ib])
            hi: T.let = T.Cast("int32", ptr[ib + 1])
            for b in range(m):
                acc = T.alloc_buffer((rc,), "float32", scope="global")
                for lane in T.vectorized(rc):
                    acc[lane] = T.float32(0)
                for j in range(lo, hi):
                    col: T.let = T.Cast("int32", cols[j]) * c
                    if vec_rows:
                        for e in T.unroll(c):
                            xv: T.let = xp[b, col + e]
                            for a in T.vectorized(r):
                                acc[e * r + a] = acc[e * r + a] + vals[j * rc + e * r + a] * xv
                    else:
                        for a in T.unroll(r):
                            for e in T.vectorized(c):
                                acc[a * c + e] = (
                                    acc[a * c + e] + vals[j * rc + a * c + e] * xp[b, col + e]
                                )
                for a in range(r):
                    if ib * r + a < n:
                        s = T.alloc_buffer((1,), "float32", scope="global")
                        s[0] = T.float32(0)
                        for e in T.unroll(c):
                            if vec_rows:
                                s[0] = s[0] + acc[e * r + a]
                            else:
                                s[0] = s[0] + acc[a * c + e]
                        if has_bias:
                            y[b, ib * r + a] = _epilogue(s[0] + bias[ib * r + a], activation)
                        else:
                            y[b, ib * r + a] = _epilogue(s[0], activation)

    return kernel


# --------------------------------------------------------------------------- builders


def csr_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    min_batch: int = 5,
    row_batch: int = 2,
    m_tile: int = 64,
    panel_cols: int | None = None,
    row_block: int | None = None,
    parallel: bool = True,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored CSR.

    Knobs: ``min_batch`` (from this batch on the transposed-panel kernel is used; below it the
    row kernel), ``row_batch`` (batch rows the row kernel serves per decoded chunk), ``m_tile``
    (batch lanes per register tile of the panel kernel), ``panel_cols`` (weight columns per
    panel; default keeps a panel's activations in L1), ``row_block`` (output rows whose partial
    sums stay in cache while all panels pass), ``parallel`` (row blocks over threads).
    """
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    csr = CSR.from_dense(weight)
    bias_arr, has_bias = _bias_const(bias, n)
    if m >= min_batch:
        bsr = BSR.from_dense(weight, (1, 1))
        return _panel_call(
            "csr_linear",
            m,
            bsr,
            bias_arr,
            has_bias,
            activation,
            m_tile,
            panel_cols,
            row_block,
            parallel,
        )
    vals, cols, chunk_ptr = pack_gather_rows(csr, 8)
    if vals.size == 0:  # keep buffers non-empty
        vals, cols = np.zeros(8, np.float32), np.zeros(8, csr.indices.dtype)
    chunk_ptr = chunk_ptr.astype(np.int32)
    nchunks = int(chunk_ptr[-1])
    words, per_word = _index_words(cols)
    unroll, mb = (2, 1) if m == 1 else (1, min(m, row_batch))
    func = _rows_kernel(
        m, n, k, nchunks, per_word, bias_arr.size, has_bias, activation, unroll, mb, parallel
    )
    info = _linear_info(
        "csr_rows", m, n, k, csr.nnz, nchunks * 8, vals.nbytes + cols.nbytes + chunk_ptr.nbytes,
        {"format": csr.stats(), "row_batch": mb},
    )  # fmt: skip
    return KernelCall(
        func=_finish(func),
        name="csr_linear",
        consts=(vals, words, chunk_ptr, bias_arr),
        out_shape=(m, n),
        info=info,
    )


def pack_panels(bsr: BSR, panel_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """BSR blocks regrouped by column panel, then block row: ``(values, cols, seg, npanels)``.

    ``panel_cols`` is the panel width in weight columns (rounded to whole blocks). ``seg`` has
    ``npanels * block_rows + 1`` entries; segment ``(p, ib)`` holds the blocks of block row
    ``ib`` whose columns fall in panel ``p``, in column order.
    """
    r, c = bsr.block
    nbr, nbc = bsr.block_shape
    per_panel = max(1, panel_cols // c)
    npanels = max(1, -(-nbc // per_panel))
    brow = np.repeat(np.arange(nbr), np.diff(bsr.indptr.astype(np.int64)))
    bcol = bsr.indices.astype(np.int64)
    panel = bcol // per_panel
    order = np.lexsort((bcol, brow, panel))
    counts = np.bincount(panel * nbr + brow, minlength=npanels * nbr)
    seg = np.concatenate([[0], np.cumsum(counts)])
    values = np.ascontiguousarray(bsr.data[order].reshape(-1), dtype=np.float32)
    return values, np.ascontiguousarray(bsr.indices[order]), as_index(seg), npanels


def pack_row_panels(
    bsr: BSR, panel_cols: int, row_block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """BSR blocks regrouped into slots: ``(values, cols, seg, slot_rows, npanels)``.

    Block rows are cut into row blocks of ``row_block``, columns into panels of ``panel_cols``
    (rounded to whole blocks). Slots run over row block, then panel, then the row block's rows
    sorted by how many blocks they have in that panel (stable), so a kernel looping over a
    slot's blocks sees runs of equal trip counts. Slot ``i`` is block row ``slot_rows[i]`` with
    blocks ``seg[i] .. seg[i + 1]`` in column order.
    """
    r, c = bsr.block
    nbr, nbc = bsr.block_shape
    per_panel = max(1, panel_cols // c)
    npanels = max(1, -(-nbc // per_panel))
    brow = np.repeat(np.arange(nbr), np.diff(bsr.indptr.astype(np.int64)))
    bcol = bsr.indices.astype(np.int64)
    panel = bcol // per_panel
    counts = np.bincount(panel * nbr + brow, minlength=npanels * nbr).reshape(npanels, nbr)
    # slot order: (row block, panel, count within the panel, row)
    row_ids = np.arange(nbr)
    rblk = row_ids // row_block
    slot_p = np.repeat(np.arange(npanels), nbr)
    slot_r = np.tile(row_ids, npanels)
    slot_n = counts.reshape(-1)
    slots = np.lexsort((slot_r, slot_n, slot_p, rblk[slot_r]))
    slot_p, slot_r = slot_p[slots], slot_r[slots]
    seg = np.concatenate([[0], np.cumsum(counts[slot_p, slot_r])])
    rank = np.empty(npanels * nbr, dtype=np.int64)  # slot of (panel, row)
    rank[slot_p * nbr + slot_r] = np.arange(npanels * nbr)
    order = np.lexsort((bcol, rank[panel * nbr + brow]))
    values = np.ascontiguousarray(bsr.data[order].reshape(-1), dtype=np.float32)
    if npanels * nbr == 0:
        slot_r = np.zeros(1, np.int64)
    return (
        values,
        np.ascontiguousarray(bsr.indices[order]),
        as_index(seg),
        as_index(slot_r),
        npanels,
    )


def panel_records(vals: np.ndarray, cols: np.ndarray, m_tile: int) -> np.ndarray:
    """CSR non-zeros as int64 records for the panel kernel: value bits low, xT offset high.

    The high word is ``col * m_tile``, the non-zero's row offset in a tile of the flat ``xT``
    scratch, so the kernel needs no shift; the low word is the float32 value's bit pattern
    (NaN payloads and infinities survive).
    """
    offsets = np.asarray(cols, dtype=np.int64) * m_tile
    if offsets.size and offsets.max() >= 2**31:
        raise ValueError("the panel kernel's xT offsets must fit int32 (K * m_tile < 2**31)")
    bits = np.ascontiguousarray(vals, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (offsets << 32) | bits


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
    exact = m % m_tile == 0 and m_tile % 8 == 0 and k % 16 == 0 and k % c == 0
    return (r, c) == (1, 1) and exact and row_block >= nbr and nbr <= 512 and panel_w % 16 == 0


def tiles_shape(m: int, features: int, m_tile: int) -> tuple[int, int, int]:
    """Shape of an activation [m, features] in the panel kernels' transposed tile layout."""
    return (m // m_tile, features, m_tile)


def _panel_call(name, m, bsr, bias_arr, has_bias, activation, m_tile, panel_cols, row_block,
                parallel):  # fmt: skip
    n, k = bsr.shape
    r, c = bsr.block
    m_tile = max(1, min(m_tile, -(-m // 8) * 8))
    # the tile layout needs whole tiles and whole blocks (xT / yT hold no padding then)
    tileable = m % m_tile == 0 and m_tile % 8 == 0 and k % c == 0 and n % r == 0
    if panel_cols is None:  # 128 columns x 64 lanes measured best (xT rows of a panel: 32 KiB)
        panel_cols = max(c, 8192 // m_tile)
    nbr = max(1, -(-n // r))
    if row_block is None:  # 512 rows x 64 lanes: the row block's yT (128 KiB) stays in L2
        row_block = max(1, 512 // r)
    row_block = max(1, min(row_block, nbr))
    vals, cols, seg, slot_rows, npanels = pack_row_panels(bsr, panel_cols, row_block)
    if activation == "gelu":  # the vector erf polynomial, not a libm call per element
        install_llvm_lowering()
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
        func = _panel_kernel(
            m, n, k, (r, c), bsr.nblocks, npanels, panel_w, row_block, dtypes, bias_arr.size,
            has_bias, activation, m_tile, parallel, prefetch, per_panel, x_tiles, y_tiles,
        )  # fmt: skip
        info = _linear_info(
            "panel", m, n, k, bsr.nnz, bsr.stored, weight_bytes,
            {"format": bsr.stats(), "m_tile": m_tile, "panels": npanels,
             "row_block": row_block, "prefetch": prefetch, "x_per_panel": per_panel,
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


def bsr_linear(
    m: int,
    weight: np.ndarray,
    block: tuple[int, int],
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    min_batch: int = 2,
    m_tile: int | None = None,
    panel_cols: int | None = None,
    row_block: int | None = None,
    parallel: bool = True,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored BSR with ``block=(r, c)``.

    Shapes that are not multiples of the block are padded inside. ``m_tile`` defaults to about
    64 / r batch lanes so the ``r x m_tile`` accumulator tile fits the 16 ymm registers.
    """
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    bsr = BSR.from_dense(weight, block)
    r, c = bsr.block
    bias_arr, has_bias = _bias_const(bias, n)
    if m >= min_batch:
        tile = m_tile or max(8, (64 // r) // 8 * 8)
        return _panel_call(
            "bsr_linear",
            m,
            bsr,
            bias_arr,
            has_bias,
            activation,
            tile,
            panel_cols,
            row_block,
            parallel,
        )
    vec_rows = r > c
    vals, cols, ptr = _block_values(bsr, vec_rows), np.asarray(bsr.indices), bsr.indptr
    if bsr.nblocks == 0:
        vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
    func = _block_kernel(
        m, n, k, (r, c), bsr.nblocks, str(cols.dtype), str(ptr.dtype), bias_arr.size, has_bias,
        activation, parallel,
    )  # fmt: skip
    info = _linear_info(
        "bsr_block", m, n, k, bsr.nnz, bsr.stored, vals.nbytes + cols.nbytes + ptr.nbytes,
        {"format": bsr.stats()},
    )  # fmt: skip
    return KernelCall(
        func=_finish(func),
        name="bsr_linear",
        consts=(vals, np.ascontiguousarray(cols), np.ascontiguousarray(ptr), bias_arr),
        out_shape=(m, n),
        info=info,
    )


__all__ = [
    "ACTIVATIONS",
    "bsr_linear",
    "csr_linear",
    "pack_gather_rows",
    "pack_panels",
    "tiles_shape",
    "pack_row_panels",
    "panel_records",
    "sparse_conv2d",
]
