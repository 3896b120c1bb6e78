"""Multi-head attention ``softmax(scale * Q K^T + mask) V`` as one hand-scheduled x86 kernel.

Why: unfused, a BERT layer's attention is five TVM kernels (Q K^T with scale and mask, softmax,
P V) plus permute and reshape copies: ~0.55 ms per MiniLM layer at 1 thread (seq 128, 12 heads
of 32), a third of it copies and round trips of the ``[h, s, s]`` scores through memory. Here
every head reads ``q``, ``k``, ``v`` where they lie (row-major ``[b, s, h, d]``, any shape), and
the scores of a few rows at a time never leave L1: ~0.34 ms, of which the two matmuls at the
FMA peak would take 0.25.

Per (batch, head), in parallel over both:

1. Scratch copies: ``kt[d, sp] = scale * log2(e) * K_h^T`` (8 x 8 shuffle transposes; ``sp`` is
   ``s`` rounded up to 8, the padding zero) and ``vh[s, d] = V_h`` (contiguous: the rows of
   ``V_h`` lie ``h * d`` floats apart, a stride that maps them onto a few L1 sets).
2. For each block of ``mr`` query rows (``default_rows``: 5 on AVX2, 6-12 on AVX-512):

   a. Scores: an ``mr x nr`` register tile (``mr`` broadcast rows of ``Q_h``, two vectors of
      ``kt``: ``nr`` is 16 on AVX2, 32 on AVX-512) accumulated over ``d`` from the mask,
      stored to a ``[mr, sp]`` scratch while 8-lane row maxima take it in. Padding columns get
      ``-inf``.
   b. Softmax as ``relax.nn.softmax`` computes it: ``exp(x - max(x))`` and its sum, the
      block's rows side by side. The scores are in log2 units, so ``exp`` is
      ``_exp2_nonpositive``: a 2^x for ``x <= 0`` cheaper than any general ``exp``. A row
      whose mask is all ``-3.4e38`` has ``x - max = 0`` everywhere and comes out uniform; a NaN
      anywhere in a row makes the whole row NaN.
   c. ``P V``: an ``mr x nr`` tile of the output (``mr`` broadcast probabilities, ``nr`` columns
      of a ``vh`` row) accumulated over the keys and scaled by ``1 / sum`` on the way out.

10 of the 16 ymm registers hold accumulators on AVX2, 12-24 of 32 zmm on AVX-512 (on AVX2, 6
rows and 12 measured ~1.5% slower, the score and mask in natural units with the log2(e) multiply in
the exp ~3% slower); rows past the last full block run as a smaller block. The mask enters in
log2 units too, clamped to the float32 minimum, so the usual ``-3.4e38`` does not overflow to
``-inf`` (which would turn a fully masked row into NaN); a mask below -2.4e38 thus reads as
-2.4e38.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..target import num_cores, vector_lanes
from ._transpose8 import HALVES_HI, HALVES_LO, PAIRS_HI, PAIRS_LO
from ._transpose8 import UNPACK_HI as _HI
from ._transpose8 import UNPACK_LO as _LO
from .kernel import KernelCall, finish_opaque

_LANES = 8  # the key transposes' block and the softmax's vectors (8 x 8 shuffles)
_NR = 16  # columns of a register tile on AVX2: two ymm vectors (attention_kernel's ``nr``)
_NEG_INF = -math.inf
# 2^x for x <= 0: x = n + r (|r| <= 1/2); 2^r by a degree-5 polynomial, the Chebyshev
# interpolant on [-1/2, 1/2] in float32 with c0 set to 1 (numpy's
# Chebyshev.interpolate(np.exp2, 5).convert()): relative error 2.1e-7, 2^0 exactly 1
_LOG2E = 1.44269504088896341
_EXP2_POLY = (1.0, 0.6931471824645996, 0.2402210682630539, 0.055503569543361664,
              0.009676031768321991, 0.0013390863314270973)  # fmt: skip
_EXP2_LO = -124.0  # clamp: 2^n then stays a normal float, so the exponent add is exact
_ROUND = 12582912.0  # 1.5 * 2^23: x + _ROUND rounds x to an integer held in the low bits
_FLT_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class AttentionShape:
    """The static sizes of one attention call: ``batch`` x ``heads`` heads of ``seq`` x ``dim``."""

    batch: int
    seq: int
    heads: int
    dim: int

    @property
    def hidden(self) -> int:
        return self.heads * self.dim


@dataclass(frozen=True)
class Layout:
    """Where one head's rows lie in a flat buffer: element ``c`` of row ``i`` of head ``h`` of
    batch ``b`` is at ``offset + b * batch + h * head + i * row + c`` (the columns contiguous).

    ``packed`` is the ``[b, s, h, d]`` row-major layout the default shapes hold; others come
    from reading through slices, permutes and reshapes (e.g. ``q`` straight out of a packed
    ``[s, 3 * h * d]`` in-projection, or ``[b * h, s, d]`` activations)."""

    offset: int
    batch: int
    head: int
    row: int

    @staticmethod
    def packed(shape: AttentionShape) -> Layout:
        return Layout(0, shape.seq * shape.hidden, shape.dim, shape.hidden)

    def at(self, b, h, i):
        """The flat index of element 0 of row ``i`` of head ``h`` of batch ``b``."""
        return self.offset + b * self.batch + h * self.head + i * self.row

    def extent(self, shape: AttentionShape) -> int:
        """One past the largest flat index read or written (strides are non-negative)."""
        last = self.at(shape.batch - 1, shape.heads - 1, shape.seq - 1)
        return last + shape.dim


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _exp2_nonpositive(x, lanes: int):
    """2^x for ``x <= 0`` (or NaN), ``lanes`` wide: the softmax's ``exp``, in log2 units.

    The kernel keeps its scores multiplied by log2(e), so ``exp(x - max)`` is
    ``2^(x' - max')`` and the range reduction is exact float adds: ``n = round(x')`` by the
    1.5 * 2^23 trick, ``r = x' - n``, no multiply by log2(e) and no ``ln 2`` split. 2^n is an
    integer add to the exponent bits (the low bits of ``x' + 1.5 * 2^23`` shifted up), 2^r a
    degree-5 polynomial in Estrin's form: a chain of 3 FMAs where Horner's has 5. That leaves
    6 multiply/FMA operations per vector where ``vector_math.exp_f32`` (any input) takes 11:
    the FMA ports are what the two matmuls around the softmax keep busy, and the dependency
    chain is what limits how many exps are in flight. Below 2^-124 the result is 2^-124
    (5e-38) instead of less: no float32 row sum (>= 1) can tell. The clamp is a select that
    keeps NaN, and NaN flows through the arithmetic (its exponent add may change the payload,
    never the NaN).
    """

    def f(value):
        return T.broadcast(T.float32(value), lanes)

    i32 = f"int32x{lanes}"
    f32 = f"float32x{lanes}"

    def bind(value, name, body):  # let name = value in body(name): computed once
        var = tvm.tirx.Var(name, f32)
        return tvm.tirx.Let(var, value, body(var))

    def from_r2(r, r2, t):
        c0, c1, c2, c3, c4, c5 = (f(v) for v in _EXP2_POLY)
        poly = (c1 * r + c0) + r2 * ((c3 * r + c2) + r2 * (c5 * r + c4))
        two_n = T.shift_left(T.reinterpret(i32, t), T.broadcast(T.int32(23), lanes))
        return T.reinterpret(f32, T.reinterpret(i32, poly) + two_n)

    def from_t(c, t):
        def from_r(r):
            return bind(r * r, "exp_r2", lambda r2: from_r2(r, r2, t))

        return bind(c - (t - f(_ROUND)), "exp_r", from_r)

    def from_c(c):
        return bind(c + f(_ROUND), "exp_t", lambda t: from_t(c, t))

    def from_x(v):
        return bind(T.Select(v < f(_EXP2_LO), f(_EXP2_LO), v), "exp_c", from_c)

    return bind(x, "exp_x", from_x)


def _mask_strides(mask_shape: tuple[int, ...], shape: AttentionShape) -> tuple[int, int, int]:
    """Element strides of the mask over (batch, head, query row); 0 where it broadcasts.

    The mask is ``[..., s]`` right-aligned against ``[b, h, s, s]`` (numpy broadcasting); its
    key axis must be full (``s``), the others full or 1.
    """
    full = (shape.batch, shape.heads, shape.seq, shape.seq)
    if len(mask_shape) > 4 or len(mask_shape) < 1 or mask_shape[-1] != shape.seq:
        raise ValueError(f"mask shape {mask_shape} does not broadcast to {full} along keys")
    dims = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    strides = []
    stride = 1
    for dim, want in zip(reversed(dims), reversed(full)):
        if dim not in (1, want):
            raise ValueError(f"mask shape {mask_shape} does not broadcast to {full}")
        strides.append(stride if dim == want else 0)
        stride *= dim
    _, row, head, batch = strides
    return batch, head, row


def _vec(buf, start, lanes):
    return buf[T.ramp(start, 1, lanes)]


def _log2_units(m, lanes):
    # mask * log2(e), the float32 minimum (the usual -3.4e38) kept finite: a row masked
    # out entirely then holds equal scores and comes out uniform, as it does unfused
    def f(value):
        return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)

    scaled = m * f(_LOG2E)
    return T.Select(scaled < f(-_FLT_MAX), f(-_FLT_MAX), scaled)


def _lanes_max(buf, at):
    return T.max(
        T.max(T.max(buf[at], buf[at + 1]), T.max(buf[at + 2], buf[at + 3])),
        T.max(T.max(buf[at + 4], buf[at + 5]), T.max(buf[at + 6], buf[at + 7])),
    )


def _lanes_sum(buf, at):
    return ((buf[at] + buf[at + 1]) + (buf[at + 2] + buf[at + 3])) + (
        (buf[at + 4] + buf[at + 5]) + (buf[at + 6] + buf[at + 7])
    )


def _head_copies_macros(shape: AttentionShape, scale: float, kl: Layout, vl: Layout):
    """Step 1's macros: ``transpose_keys`` (``kt = scale * log2(e) * K_h^T``, zero padded to
    ``sp`` keys) and ``copy_values`` (``vh = V_h``, contiguous)."""
    s, d = shape.seq, shape.dim
    sp = _round_up(s, _LANES)
    fscale = T.float32(scale * _LOG2E)  # scores in log2 units (see _exp2_nonpositive)

    @T.macro
    def copy_values(vf, vh, b, h):
        # Step 1b. vh[j, c] = V[b, j, h, c]: contiguous, where the rows of V_h are hd apart (a
        # power-of-two multiple that maps them onto a few L1 sets, evicting each other).
        for j in range(s):
            for c0 in T.unroll(d // _LANES):
                vh[T.ramp(j * d + c0 * _LANES, 1, _LANES)] = _vec(
                    vf, vl.at(b, h, j) + c0 * _LANES, _LANES
                )

    def key_row(kf, b, h, j, c0):
        return _vec(kf, kl.at(b, h, j) + c0, _LANES)

    @T.macro
    def transpose8(kf, kt, b, h, j0, c0):
        # kt[c0 + i, j0 : j0 + 8] = scale * K[b, j0 : j0 + 8, h, c0 + i]: an 8 x 8 block in three
        # stages of two-input shuffles (unpck*ps, shufps, vperm2f128), 24 in all
        t0: T.let = T.Shuffle([key_row(kf, b, h, j0, c0), key_row(kf, b, h, j0 + 1, c0)], _LO)
        t1: T.let = T.Shuffle([key_row(kf, b, h, j0, c0), key_row(kf, b, h, j0 + 1, c0)], _HI)
        t2: T.let = T.Shuffle([key_row(kf, b, h, j0 + 2, c0), key_row(kf, b, h, j0 + 3, c0)], _LO)
        t3: T.let = T.Shuffle([key_row(kf, b, h, j0 + 2, c0), key_row(kf, b, h, j0 + 3, c0)], _HI)
        t4: T.let = T.Shuffle([key_row(kf, b, h, j0 + 4, c0), key_row(kf, b, h, j0 + 5, c0)], _LO)
        t5: T.let = T.Shuffle([key_row(kf, b, h, j0 + 4, c0), key_row(kf, b, h, j0 + 5, c0)], _HI)
        t6: T.let = T.Shuffle([key_row(kf, b, h, j0 + 6, c0), key_row(kf, b, h, j0 + 7, c0)], _LO)
        t7: T.let = T.Shuffle([key_row(kf, b, h, j0 + 6, c0), key_row(kf, b, h, j0 + 7, c0)], _HI)
        u0: T.let = T.Shuffle([t0, t2], PAIRS_LO)
        u1: T.let = T.Shuffle([t0, t2], PAIRS_HI)
        u2: T.let = T.Shuffle([t1, t3], PAIRS_LO)
        u3: T.let = T.Shuffle([t1, t3], PAIRS_HI)
        u4: T.let = T.Shuffle([t4, t6], PAIRS_LO)
        u5: T.let = T.Shuffle([t4, t6], PAIRS_HI)
        u6: T.let = T.Shuffle([t5, t7], PAIRS_LO)
        u7: T.let = T.Shuffle([t5, t7], PAIRS_HI)
        scale8: T.let = T.broadcast(fscale, _LANES)
        kt[T.ramp(c0 * sp + j0, 1, _LANES)] = T.Shuffle([u0, u4], HALVES_LO) * scale8
        kt[T.ramp((c0 + 1) * sp + j0, 1, _LANES)] = T.Shuffle([u1, u5], HALVES_LO) * scale8
        kt[T.ramp((c0 + 2) * sp + j0, 1, _LANES)] = T.Shuffle([u2, u6], HALVES_LO) * scale8
        kt[T.ramp((c0 + 3) * sp + j0, 1, _LANES)] = T.Shuffle([u3, u7], HALVES_LO) * scale8
        kt[T.ramp((c0 + 4) * sp + j0, 1, _LANES)] = T.Shuffle([u0, u4], HALVES_HI) * scale8
        kt[T.ramp((c0 + 5) * sp + j0, 1, _LANES)] = T.Shuffle([u1, u5], HALVES_HI) * scale8
        kt[T.ramp((c0 + 6) * sp + j0, 1, _LANES)] = T.Shuffle([u2, u6], HALVES_HI) * scale8
        kt[T.ramp((c0 + 7) * sp + j0, 1, _LANES)] = T.Shuffle([u3, u7], HALVES_HI) * scale8

    @T.macro
    def transpose_keys(kf, kt, b, h):
        # Step 1. kt[c, j] = scale * K[b, j, h, c], 8 x 8 blocks, then the last s % 8 keys one
        # by one; padding columns zero.
        for jb in range(s // _LANES):
            for cb in range(d // _LANES):
                transpose8(kf, kt, b, h, jb * _LANES, cb * _LANES)
        for j in range(s % _LANES):
            for c in range(d):
                kt[c * sp + s - s % _LANES + j] = kf[kl.at(b, h, s - s % _LANES + j) + c] * fscale
        for c in range(d):
            for j in range(sp - s):
                kt[c * sp + s + j] = T.float32(0)

    return transpose_keys, copy_values


def _scores_macro(shape: AttentionShape, mask_shape, mr: int, nr: int, ql: Layout):
    """Step 2a's macro: the scores of ``rows`` query rows into ``sc``, row maxima into ``rmax``."""
    s, d = shape.seq, shape.dim
    sp = _round_up(s, _LANES)
    has_mask = mask_shape is not None
    mb, mh, mi = _mask_strides(mask_shape, shape) if has_mask else (0, 0, 0)
    s_full = s // nr  # nr-column score tiles entirely inside the real columns
    s_rest = sp - s_full * nr  # then one tile of a multiple of 8 columns, partial when sp > s
    rest_partial = s_full * nr + s_rest > s
    ninf = T.float32(_NEG_INF)

    @T.macro
    def score_tile(qf, mf, kt, sc, rmax, b, h, r0, rows, j0, lanes, partial):
        # Step 2a. sc[r, j0 : j0 + lanes] = q_r . kt[:, j0 : j0 + lanes] (+ mask) for `rows`
        # rows, and the running row maxima (8 lanes per row) take the tile in.
        acc = T.alloc_buffer((mr * nr,), "float32", scope="global")
        for r in T.unroll(rows):
            if has_mask and not partial:  # the mask is where the sums start
                acc[T.ramp(r * nr, 1, lanes)] = _log2_units(
                    _vec(mf, b * mb + h * mh + (r0 + r) * mi + j0, lanes), lanes
                )
            else:
                acc[T.ramp(r * nr, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for c in range(d):
            for r in T.unroll(rows):
                acc[T.ramp(r * nr, 1, lanes)] = acc[T.ramp(r * nr, 1, lanes)] + T.broadcast(
                    qf[ql.at(b, h, r0 + r) + c], lanes
                ) * _vec(kt, c * sp + j0, lanes)
        if partial:  # the tile reaches into the padding: the real columns one by one
            for r in T.unroll(rows):
                for jj in range(s - j0):
                    if has_mask:
                        sc[r * sp + j0 + jj] = acc[r * nr + jj] + _log2_units(
                            mf[b * mb + h * mh + (r0 + r) * mi + j0 + jj], 1
                        )
                    else:
                        sc[r * sp + j0 + jj] = acc[r * nr + jj]
                for jj in range(j0 + lanes - s):
                    sc[r * sp + s + jj] = ninf
                for u in T.unroll(lanes // _LANES):
                    rmax[T.ramp(r * _LANES, 1, _LANES)] = T.max(
                        rmax[T.ramp(r * _LANES, 1, _LANES)],
                        _vec(sc, r * sp + j0 + u * _LANES, _LANES),
                    )
        else:
            for r in T.unroll(rows):
                for u in T.unroll(lanes // _LANES):
                    val: T.let = _vec(acc, r * nr + u * _LANES, _LANES)
                    sc[T.ramp(r * sp + j0 + u * _LANES, 1, _LANES)] = val
                    rmax[T.ramp(r * _LANES, 1, _LANES)] = T.max(
                        rmax[T.ramp(r * _LANES, 1, _LANES)], val
                    )

    @T.macro
    def scores(qf, mf, kt, sc, rmax, b, h, r0, rows):
        for r in T.unroll(rows):
            rmax[T.ramp(r * _LANES, 1, _LANES)] = T.broadcast(ninf, _LANES)
        for t in range(s_full):
            score_tile(qf, mf, kt, sc, rmax, b, h, r0, rows, t * nr, nr, False)
        if s_rest > 0:
            score_tile(qf, mf, kt, sc, rmax, b, h, r0, rows, s_full * nr, s_rest, rest_partial)

    return scores


def _softmax_macro(shape: AttentionShape, mr: int):
    """Step 2b's macro: ``sc[r, :] = exp(sc[r, :] - max)`` and ``inv[r] = 1 / sum``."""
    sp = _round_up(shape.seq, _LANES)

    @T.macro
    def softmax(sc, rmax, inv, rows):
        # Step 2b. sc[r, :] = exp(sc[r, :] - max), inv[r] = 1 / sum, the block's rows side by
        # side: independent exp and sum chains for the core to overlap (one row at a time ran
        # ~5% slower end to end, two at a time ~3%).
        mxb = T.alloc_buffer((mr * _LANES,), "float32", scope="global")
        part = T.alloc_buffer((mr * _LANES,), "float32", scope="global")
        for r in T.unroll(rows):
            mxb[T.ramp(r * _LANES, 1, _LANES)] = T.broadcast(_lanes_max(rmax, r * _LANES), _LANES)
            part[T.ramp(r * _LANES, 1, _LANES)] = T.broadcast(T.float32(0), _LANES)
        for j in range(sp // _LANES):
            for r in T.unroll(rows):
                sc[T.ramp(r * sp + j * _LANES, 1, _LANES)] = _exp2_nonpositive(
                    _vec(sc, r * sp + j * _LANES, _LANES) - _vec(mxb, r * _LANES, _LANES), _LANES
                )
                part[T.ramp(r * _LANES, 1, _LANES)] = _vec(part, r * _LANES, _LANES) + _vec(
                    sc, r * sp + j * _LANES, _LANES
                )
        for r in T.unroll(rows):
            inv[r] = T.float32(1) / _lanes_sum(part, r * _LANES)

    return softmax


def _values_macro(shape: AttentionShape, mr: int, nr: int, ol: Layout):
    """Step 2c's macro: ``out[rows] = (sc @ V_h) * inv``, ``nr`` columns a tile."""
    s, d = shape.seq, shape.dim
    sp = _round_up(s, _LANES)

    @T.macro
    def value_tile(vh, of, sc, inv, b, h, r0, rows, c0, lanes):
        # Step 2c. out[r, c0 : c0 + lanes] = (sc[r, :] @ V_h[:, c0 : c0 + lanes]) * inv[r].
        acc = T.alloc_buffer((mr * nr,), "float32", scope="global")
        for r in T.unroll(rows):
            acc[T.ramp(r * nr, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for j in range(s):
            for r in T.unroll(rows):
                acc[T.ramp(r * nr, 1, lanes)] = acc[T.ramp(r * nr, 1, lanes)] + T.broadcast(
                    sc[r * sp + j], lanes
                ) * _vec(vh, j * d + c0, lanes)
        for r in T.unroll(rows):
            of[T.ramp(ol.at(b, h, r0 + r) + c0, 1, lanes)] = acc[
                T.ramp(r * nr, 1, lanes)
            ] * T.broadcast(inv[r], lanes)

    @T.macro
    def weighted_values(vh, of, sc, inv, b, h, r0, rows):
        for t in range(d // nr):
            value_tile(vh, of, sc, inv, b, h, r0, rows, t * nr, nr)
        if d % nr > 0:
            value_tile(vh, of, sc, inv, b, h, r0, rows, d - d % nr, d % nr)

    return weighted_values


def _attention_func(shape: AttentionShape, q_shape, k_shape, v_shape, mask_shape, out_shape,
                    layouts: tuple[Layout, Layout, Layout, Layout], scale: float, mr: int,
                    parallel: bool, nr: int = _NR):  # fmt: skip
    """The PrimFunc ``(q, k, v, [mask,] out)`` for static sizes (see the module docstring);
    ``layouts``: where the heads lie in ``q``, ``k``, ``v`` and ``out``."""
    nb, s, nh, d = shape.batch, shape.seq, shape.heads, shape.dim
    sp = _round_up(s, _LANES)
    has_mask = mask_shape is not None
    mask_size = int(np.prod(mask_shape)) if has_mask else 1
    tasks = T.parallel if parallel else T.serial
    q_size, k_size, v_size, o_size = (
        int(np.prod(x)) for x in (q_shape, k_shape, v_shape, out_shape)
    )
    ql, kl, vl, ol = layouts
    transpose_keys, copy_values = _head_copies_macros(shape, scale, kl, vl)
    scores = _scores_macro(shape, mask_shape, mr, nr, ql)
    softmax = _softmax_macro(shape, mr)
    weighted_values = _values_macro(shape, mr, nr, ol)

    @T.macro
    def row_block(qf, vh, mf, of, kt, sc, rmax, inv, b, h, r0, rows):
        scores(qf, mf, kt, sc, rmax, b, h, r0, rows)
        softmax(sc, rmax, inv, rows)
        weighted_values(vh, of, sc, inv, b, h, r0, rows)

    @T.macro
    def head(qf, kf, vf, mf, of, bh):
        b: T.let = bh // nh
        h: T.let = bh % nh
        kt = T.alloc_buffer((d * sp,), "float32", scope="global")
        vh = T.alloc_buffer((s * d,), "float32", scope="global")
        sc = T.alloc_buffer((mr * sp,), "float32", scope="global")
        rmax = T.alloc_buffer((mr * _LANES,), "float32", scope="global")
        inv = T.alloc_buffer((mr,), "float32", scope="global")
        transpose_keys(kf, kt, b, h)
        copy_values(vf, vh, b, h)
        for blk in range(s // mr):
            row_block(qf, vh, mf, of, kt, sc, rmax, inv, b, h, blk * mr, mr)
        if s % mr > 0:
            row_block(qf, vh, mf, of, kt, sc, rmax, inv, b, h, s - s % mr, s % mr)

    if has_mask:

        @T.prim_func
        def kernel(
            q: T.Buffer(q_shape, "float32"),
            k: T.Buffer(k_shape, "float32"),
            v: T.Buffer(v_shape, "float32"),
            mask: T.Buffer(mask_shape, "float32"),
            out: T.Buffer(out_shape, "float32"),
        ):
            qf = T.decl_buffer((q_size,), "float32", data=q.data)
            kf = T.decl_buffer((k_size,), "float32", data=k.data)
            vf = T.decl_buffer((v_size,), "float32", data=v.data)
            mf = T.decl_buffer((mask_size,), "float32", data=mask.data)
            of = T.decl_buffer((o_size,), "float32", data=out.data)
            for bh in tasks(nb * nh):
                head(qf, kf, vf, mf, of, bh)

    else:

        @T.prim_func
        def kernel(
            q: T.Buffer(q_shape, "float32"),
            k: T.Buffer(k_shape, "float32"),
            v: T.Buffer(v_shape, "float32"),
            out: T.Buffer(out_shape, "float32"),
        ):
            qf = T.decl_buffer((q_size,), "float32", data=q.data)
            kf = T.decl_buffer((k_size,), "float32", data=k.data)
            vf = T.decl_buffer((v_size,), "float32", data=v.data)
            of = T.decl_buffer((o_size,), "float32", data=out.data)
            for bh in tasks(nb * nh):
                head(qf, kf, vf, None, of, bh)

    return kernel


def default_rows(dim: int, wide: bool) -> int:
    """Query rows per register tile (``mr``). On AVX-512 (32 zmm) 12 rows x 2 vectors: the
    scores' 12 broadcasts + 2 loads feed 24 FMAs instead of 7 loads feeding 10, and this core
    sustains ~1.3 zmm loads per cycle, so d = 64 heads ran 9% faster than at 5 rows (BERT-base
    shape, seq 128 and 384, Xeon with AVX-512); at d = 32 the short reductions favour 6 (3%).
    On AVX2 (16 ymm) 5 rows, measured best there."""
    if not wide:
        return 5
    return 12 if dim >= 64 else 6


def _check(shape: AttentionShape, name: str, given: tuple[int, ...], layout: Layout):
    given = tuple(int(x) for x in given)
    strides = (layout.offset, layout.batch, layout.head, layout.row)
    if min(strides) < 0 or layout.extent(shape) > int(np.prod(given)):
        raise ValueError(f"{name} shape {given} does not hold {shape} laid out as {layout}")
    return given


def attention_kernel(
    shape: AttentionShape,
    scale: float,
    *,
    mask_shape: tuple[int, ...] | None = None,
    q_shape: tuple[int, ...] | None = None,
    k_shape: tuple[int, ...] | None = None,
    v_shape: tuple[int, ...] | None = None,
    out_shape: tuple[int, ...] | None = None,
    layouts: tuple[Layout | None, ...] | None = None,
    target: tvm.target.Target | None = None,
    mr: int | None = None,
    parallel: bool | None = None,
    nr: int | None = None,
) -> KernelCall:
    """Fused multi-head attention: ``out[b, i, h*d + c] = sum_j P[b, h, i, j] v[b, j, h*d + c]``.

    ``P = softmax(scale * Q_h K_h^T + mask, axis=-1)`` with ``Q_h[i, c] = q[b, i, h*d + c]`` (the
    same for ``k``, ``v``). ``q``, ``k``, ``v`` and ``out`` may arrive in any shape holding
    ``[b, s, h, d]`` in row-major order (``[b, s, h*d]`` by default); ``mask`` (float32, additive)
    in any shape that broadcasts to ``[b, h, s, s]`` with a full key axis. The kernel is called
    ``(q, k, v, [mask,] out)``; there are no constants. ``dim`` must be a multiple of 8.
    ``layouts`` (q, k, v, out; None: ``Layout.packed``) place the heads elsewhere in those
    buffers: strided views the caller has proven, e.g. the q, k and v thirds of one packed
    in-projection output, or ``[b * h, s, d]``; ``out`` is then written at its layout and must
    lie within its ``b * s * h * d`` elements (a permutation of them: every one is written).
    ``parallel`` (default: the target has more than one core) runs the (batch, head) pairs in
    parallel. ``nr``: columns of the ``mr x nr`` register tiles, two vectors of the target (16
    on AVX2; 32 on AVX-512, where ``mr`` rows x 2 zmm accumulators cover two 512-bit FMA pipes
    that one zmm per row would leave half idle).
    """
    if min(shape.batch, shape.seq, shape.heads, shape.dim) < 1:
        raise ValueError(f"attention sizes must be >= 1, got {shape}")
    if shape.dim % _LANES:
        raise ValueError(f"head dim {shape.dim} is not a multiple of {_LANES}")
    wide = vector_lanes(target) >= 16
    max_rows = 12 if wide else 6  # mr x 2 accumulators + 2 loads + 1 broadcast in the registers
    if mr is None:
        mr = default_rows(shape.dim, wide)
    if not 1 <= mr <= max_rows:
        raise ValueError(f"mr must be 1..{max_rows} rows on this target, got {mr}")
    nr = nr or (32 if wide else _NR)
    if nr % _LANES or nr < _LANES:
        raise ValueError(f"nr must be a multiple of {_LANES}, got {nr}")
    default = (shape.batch, shape.seq, shape.hidden)
    layouts = tuple(x or Layout.packed(shape) for x in (layouts or (None,) * 4))
    if len(layouts) != 4:
        raise ValueError(f"layouts: one per q, k, v, out, got {len(layouts)}")
    if layouts[3].extent(shape) > shape.batch * shape.seq * shape.hidden:
        raise ValueError(f"out layout {layouts[3]} is not within the [b, s, h * d] it writes")
    named = (("q", q_shape), ("k", k_shape), ("v", v_shape), ("out", out_shape))
    shapes = [
        _check(shape, name, given or default, layout)
        for (name, given), layout in zip(named, layouts)
    ]
    if int(np.prod(shapes[3])) != shape.batch * shape.seq * shape.hidden:
        raise ValueError(f"out shape {shapes[3]} does not hold {shape}")
    if mask_shape is not None:
        mask_shape = tuple(int(x) for x in mask_shape)
        _mask_strides(mask_shape, shape)
    if parallel is None:
        parallel = num_cores(target) > 1 and shape.batch * shape.heads > 1
    func = _attention_func(
        shape, *shapes[:3], mask_shape, shapes[3], layouts, float(scale), mr, parallel, nr
    )
    func = finish_opaque(func)
    name = f"attention_h{shape.heads}_s{shape.seq}_d{shape.dim}"
    info = {"kind": "attention", "shape": shape, "scale": float(scale), "mask": mask_shape,
            "tile": (mr, nr), "layouts": layouts}  # fmt: skip
    return KernelCall(func=func, name=name, consts=(), out_shape=shapes[3], info=info)
