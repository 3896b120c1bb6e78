"""k-winners-take-all in linear time: radix select of the k-th largest value, as block-free TIR.

Why this exists: an exported k-WTA is ``TopK -> [k-1] -> GreaterOrEqual -> Where``, and TVM lowers
``topk`` to a full sort of every sample (O(n log n), the bulk of the GSC CNN's dense time). Only
the k-th largest value is needed, and an exact one is found in O(n) by radix select.

Per sample (one row of ``x[batch, n]``; rows run in parallel when ``batch > 1``):

1. Key. Every ranked value ``v`` (``x`` or ``x * boost``) maps to an order-preserving uint32: the
   float's bits with the sign bit set for ``v >= 0`` and all bits inverted for ``v < 0``. ``-0.0``
   takes the key of ``+0.0`` (they compare equal), and every NaN a key above ``+inf``'s (below).
2. Bracket (sampled path, AVX2 + BMI2, rows of ``>= 64 * stride`` values). The keys of every
   ``stride``-th value (positions ``j * stride + stride // 2``) are ranked by a two-level
   histogram (11 + 7 bits) to find key bounds ``lo <= hi`` around where the k-th largest should
   fall: ``k * m / n`` of the ``m`` sampled keys, plus or minus ``margin`` standard deviations of
   that count. The bounds are clamped to ``[-inf, +inf]``.
3. Count and compact. One vectorized pass over every value, on floats: count the values above
   ``hi`` (NaN included) and append those in ``[lo, hi]`` to a candidate list (``movmsk``, an
   8-byte lane table, ``permps``, one unaligned store: no branch). If ``above < k <= above +
   candidates`` the k-th largest of the row is the ``(k - above)``-th of the candidates: a radix
   select, 8 bits a digit from the bounds' first differing bit, finds it (a few percent of
   ``n`` on typical activations). Otherwise (a sample far from its row, NaN-heavy rows) the
   row falls back to the full radix select below, so the result is exact either way.
4. Full radix select (small rows, no AVX2, or the fallback). One pass stores every key and
   histograms its top ``hi_bits``; a scan from the largest bin finds the bin holding the k-th
   largest key; the list is compacted to that bin (branch free) and each further ``lo_bits``
   digit is histogrammed, scanned and filtered the same way over the candidates only.
5. Write. The k-th largest key is turned back into its float ``t``, and ``out = where(v >= t,
   x, 0)`` with the float comparison ONNX's GreaterOrEqual makes, so ties with the k-th value
   all win (more than ``k`` units can survive). Fused with a max-pool, each output row of the
   pool is one vector expression: the window rows' kept values maxed lane-wise, the window
   columns gathered by shuffles.

Two passes over ``n`` on the sampled path (count/compact, write), three on the full one. A boost
that is constant per channel plane (nupic's KWinners2d) is passed as one factor per plane when
the plane holds a multiple of 8 values, so neither pass streams an ``[n]`` boost array.

NaN, matched to onnxruntime's TopK + GreaterOrEqual + Where: a NaN ranks above ``+inf`` (of
either sign bit) but never survives (``NaN >= t`` is false); when a row holds ``k`` or more NaNs
the k-th value is NaN and the whole row becomes 0. (``models.kwta_reference`` uses numpy's
partition, which ranks NaN last: the two differ on rows with NaNs. TVM's topk lowering is a third
behaviour, not matched.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..target import has_cpu_features
from .kernel import KernelCall, finish_opaque

_SIGN = 0x80000000
# (hi_bits, lo_bits): the top digit reads every value; the low digits read only the candidates.
# 2048 bins keep the candidate list small for large n; 256 bins keep the scans cheap for small n.
_DIGITS_LARGE = (11, 7)
_DIGITS_SMALL = (8, 8)
_LARGE_N = 8192
_LANES = 8  # AVX2: 8 float32 / uint32 per vector
# The sampled bracket: its keys' top digit, then a sub-digit inside the two bracketing bins
# (11 + 7 bits: a bound sits within 2^-9 of its value, relative)
_SAMPLE_BITS = 11
_NSUB = 128
_SUB_SHIFT = 32 - _SAMPLE_BITS - 7
_MARGIN = 3.0  # sigmas of the sampled rank's spread on each side of the bracket
_MIN_SAMPLE = 64  # fewer sampled values bracket too loosely to pay
_CMP_GE_OQ, _CMP_NLE_UQ = 13, 6  # vcmpps predicates: >= (NaN false), not <= (NaN true)
_KEY_NEG_INF, _KEY_POS_INF = 0x00800000, 0xFF800000
_VEC_POOL_WIDTH = 64  # rows up to this wide are pooled as one vector expression
# state[] slots of a row: 0-3 are the radix select's (rank, bin, count, new count)
(_R_HI, _R_LO, _B_HI, _B_LO, _ABOVE, _BIN, _REM_HI, _REM_LO, _NS, _BASE, _NC, _NHI, _SHIFT,
 _DONE) = range(4, 18)  # fmt: skip
_NSTATE = 18


@dataclass(frozen=True)
class _Pool:
    """A max-pool fused into the k-WTA write: NCHW, no padding, no dilation, floor mode."""

    c: int
    in_hw: tuple[int, int]
    size: tuple[int, int]
    strides: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        return (
            (self.in_hw[0] - self.size[0]) // self.strides[0] + 1,
            (self.in_hw[1] - self.size[1]) // self.strides[1] + 1,
        )


def _key(v):
    """The order-preserving uint32 key of float32 ``v``, without branches.

    ``0x80000000 + v`` read as a sign-magnitude integer: ``-0.0`` and ``+0.0`` share a key and
    every NaN (any sign) keys above ``+inf``. Selects on the sign compile to branches that the
    random signs of activations mispredict half the time; the shifts and masks do not.
    """
    bits = T.reinterpret("int32", v)
    mag = bits & T.int32(0x7FFFFFFF)
    nan = (T.int32(0x7F800000) - mag) >> 31  # -1 for NaN, else 0 (arithmetic shift)
    sign = (bits >> 31) & (nan ^ T.int32(-1))  # -1 for negative non-NaN, else 0
    return T.reinterpret("uint32", ((mag ^ sign) - sign) ^ T.int32(-_SIGN))


def _value_of_key(key):
    """The float32 whose key is ``key`` (NaN for the keys above ``+inf``)."""
    signed = T.reinterpret("int32", key ^ T.uint32(_SIGN))
    bits = T.Select(signed >= 0, signed, (T.int32(0) - signed) | T.int32(-_SIGN))
    return T.reinterpret("float32", bits)


def _cmp(v, scalar, predicate: int):
    """AVX ``vcmpps`` of float32x8 ``v`` with a broadcast scalar: all-ones lanes where true."""
    return T.call_llvm_pure_intrin(
        "float32x8", "llvm.x86.avx.cmp.ps.256", v, T.broadcast(scalar, _LANES), T.int8(predicate)
    )


def _lane_table() -> np.ndarray:
    """For each 8-bit mask, the indices of its set bits, packed first (8 bytes a mask)."""
    table = np.zeros((256, 8), np.uint8)
    for mask in range(256):
        lanes = [i for i in range(8) if mask >> i & 1]
        table[mask, : len(lanes)] = lanes
    return table.reshape(-1)


def _bcast(value, lanes: int = _LANES):
    return T.broadcast(value, lanes)


def _kwta_func(batch: int, n: int, boosted: bool, hi_bits: int, lo_bits: int, parallel: bool,
               x_shape: tuple[int, ...], pool: _Pool | None, stride: int,
               margin: float, fallback: bool, block: int):  # fmt: skip
    """The PrimFunc ``(x, [boost,] rank, out)`` for static sizes; ``rank[0]`` is k.

    ``x`` has any shape ``[batch, ...]`` holding ``n`` values per sample (read flat, so the
    reshape in front of a k-WTA costs nothing). Without ``pool`` ``out`` is ``[batch, n]``; with
    it ``out`` is the max-pooled ``[batch, C, OH, OW]`` of the k-WTA result seen as
    ``[batch, C, H, W]``. ``stride`` > 0 turns on the sampled bracket (AVX2 only; ``rank[1:]``
    then holds the lane table's bytes); without ``fallback`` a row whose bracket misses is
    written as zeros (tests: which path ran). ``boost`` holds one factor per ``block`` values.
    """
    nhi = 1 << hi_bits
    nlo = 1 << lo_bits
    shift_hi = 32 - hi_bits
    ndigits = shift_hi // lo_bits
    rows = T.parallel if parallel else T.serial
    nvec = n // _LANES
    ntail = n - nvec * _LANES
    out_shape = (batch, n) if pool is None else (batch, pool.c, *pool.out_hw)
    sampled = stride > 0
    m = n // stride if sampled else 0
    nhist = max(nhi, nlo, 1 << _SAMPLE_BITS if sampled else 0)

    def ranked(xf, boost, b, i):
        if not boosted:
            return xf[b * n + i]
        return xf[b * n + i] * (boost[i] if block == 1 else boost[i // block])

    def ranked_vec(xf, boost, b, i, lanes=_LANES):
        # with a blocked boost the caller's lanes lie in one block (block % lanes == 0)
        v = xf[T.ramp(b * n + i, 1, lanes)]
        if not boosted:
            return v
        if block == 1:
            return v * boost[T.ramp(i, 1, lanes)]
        return v * T.broadcast(boost[i // block], lanes)

    @T.macro
    def zero(hist, nb):
        # 8 bins a store where possible: TIR caps a vector at 32767 lanes
        for j0 in range(nb // _LANES):
            for lane in T.vectorized(_LANES):
                hist[j0 * _LANES + lane] = 0
        for j in range(nb % _LANES):
            hist[nb - nb % _LANES + j] = 0

    @T.macro
    def scan(hist, nb, state):
        # state[0]: rank still needed (k at first) -> rank inside the chosen bin; state[1]: bin.
        # The k-th largest key exists, so the walk down from the largest bin stops at a bin.
        state[1] = nb - 1
        while hist[state[1]] < state[0]:
            state[0] = state[0] - hist[state[1]]
            state[1] = state[1] - 1

    # ---------------------------------------------------------------- full radix select
    @T.macro
    def top_digit(xf, boost, b, cand, hist):
        # keys 8 at a time (AVX2: 8 lanes of shifts and masks), their top digits counted by
        # scalar increments (interleaved copies of the histogram, against chains of increments
        # of one bin, measured no faster)
        for i0 in range(nvec):
            for lane in T.vectorized(_LANES):
                cand[i0 * _LANES + lane] = _key(ranked(xf, boost, b, i0 * _LANES + lane))
            for lane in T.unroll(_LANES):
                hd: T.let = T.Cast("int32", cand[i0 * _LANES + lane] >> T.uint32(shift_hi))
                hist[hd] = hist[hd] + 1
        for it in range(ntail):
            cand[nvec * _LANES + it] = _key(ranked(xf, boost, b, nvec * _LANES + it))
            hd: T.let = T.Cast("int32", cand[nvec * _LANES + it] >> T.uint32(shift_hi))
            hist[hd] = hist[hd] + 1

    @T.macro
    def select_full(xf, boost, k, b, prefix, cand, hist, state):
        # Step 2. Histogram of the top digit over every value.
        zero(hist, nhi)
        top_digit(xf, boost, b, cand, hist)
        state[0] = k
        scan(hist, nhi, state)
        prefix[0] = T.Cast("uint32", state[1]) << T.uint32(shift_hi)
        # Step 3. Candidates: the keys in the chosen top bin.
        state[2] = 0
        for i in range(n):
            ki: T.let = cand[i]
            cand[state[2]] = ki
            state[2] = state[2] + T.Cast(
                "int32", (ki >> T.uint32(shift_hi)) == T.Cast("uint32", state[1])
            )
        # Step 4. The low digits, over the candidates only.
        for d in range(ndigits):
            shift: T.let = T.Cast("uint32", shift_hi - (d + 1) * lo_bits)
            zero(hist, nlo)
            for c in range(state[2]):
                ld: T.let = T.Cast("int32", (cand[c] >> shift) & T.uint32(nlo - 1))
                hist[ld] = hist[ld] + 1
            scan(hist, nlo, state)
            prefix[0] = prefix[0] | (T.Cast("uint32", state[1]) << shift)
            if d < ndigits - 1:
                state[3] = 0
                for c in range(state[2]):
                    kc: T.let = cand[c]
                    cand[state[3]] = kc
                    state[3] = state[3] + T.Cast(
                        "int32", ((kc >> shift) & T.uint32(nlo - 1)) == T.Cast("uint32", state[1])
                    )
                state[2] = state[3]

    # ---------------------------------------------------------------- sampled bracket
    @T.macro
    def walk(hist, top, state, rank_at, bin_at):
        # state[bin_at] = the bin (from ``top`` down) holding the state[rank_at]-th largest;
        # state[rank_at] becomes the rank inside that bin
        state[bin_at] = top
        while hist[state[bin_at]] < state[rank_at]:
            state[rank_at] = state[rank_at] - hist[state[bin_at]]
            state[bin_at] = state[bin_at] - 1

    @T.macro
    def bracket(xf, boost, k, b, skeys, hist, state, bounds):
        # Step 2a. Keys of every stride-th value.
        for j in range(m):
            skeys[j] = _key(ranked(xf, boost, b, j * stride + stride // 2))
        # Step 2b. Sample ranks r_hi < r_lo around k's expected rank, +-margin sigmas.
        mean: T.let = T.Cast("float64", k) * T.float64(m / n)
        sd: T.let = T.sqrt(  # >= 0: k * (1 / n) may round above 1 at k = n
            T.max(mean * (T.float64(1) - T.Cast("float64", k) * T.float64(1 / n)), T.float64(0))
        )
        state[_R_HI] = T.Cast("int32", T.floor(mean - T.float64(margin) * sd - T.float64(1)))
        state[_R_LO] = T.Cast("int32", T.ceil(mean + T.float64(margin) * sd + T.float64(1)))
        # Step 2c. Their top-digit bins (-1: no bound on that side).
        zero(hist, 1 << _SAMPLE_BITS)
        for j in range(m):
            sd1: T.let = T.Cast("int32", skeys[j] >> T.uint32(32 - _SAMPLE_BITS))
            hist[sd1] = hist[sd1] + 1
        state[_B_HI] = -1
        state[_B_LO] = -1
        state[_ABOVE] = 0
        state[_BIN] = (1 << _SAMPLE_BITS) - 1
        if state[_R_HI] >= 1:
            while state[_ABOVE] + hist[state[_BIN]] < state[_R_HI]:
                state[_ABOVE] = state[_ABOVE] + hist[state[_BIN]]
                state[_BIN] = state[_BIN] - 1
            state[_B_HI] = state[_BIN]
            state[_REM_HI] = state[_R_HI] - state[_ABOVE]
        if state[_R_LO] <= m:
            while state[_ABOVE] + hist[state[_BIN]] < state[_R_LO]:
                state[_ABOVE] = state[_ABOVE] + hist[state[_BIN]]
                state[_BIN] = state[_BIN] - 1
            state[_B_LO] = state[_BIN]
            state[_REM_LO] = state[_R_LO] - state[_ABOVE]
        # Step 2d. The next digit of the sampled keys in those bins: b_hi's in hist[0:nsub],
        # b_lo's in hist[nsub:2 nsub] (or with b_hi's when the bins are one).
        state[_NS] = 0
        for j in range(m):
            kj: T.let = skeys[j]
            top: T.let = T.Cast("int32", kj >> T.uint32(32 - _SAMPLE_BITS))
            skeys[state[_NS]] = kj
            state[_NS] = state[_NS] + T.Cast(
                "int32", T.Or(top == state[_B_HI], top == state[_B_LO])
            )
        zero(hist, 2 * _NSUB)
        for j in range(state[_NS]):
            kj: T.let = skeys[j]
            top: T.let = T.Cast("int32", kj >> T.uint32(32 - _SAMPLE_BITS))
            sub: T.let = T.Cast("int32", (kj >> T.uint32(_SUB_SHIFT)) & T.uint32(_NSUB - 1))
            at: T.let = T.Select(top == state[_B_HI], sub, sub + _NSUB)
            hist[at] = hist[at] + 1
        # Step 2e. Key bounds: hi = the top of b_hi's sub-bin holding rank r_hi (fewer than r_hi
        # sampled keys lie above it), lo = the bottom of b_lo's sub-bin holding r_lo.
        bounds[1] = T.uint32(0xFFFFFFFF)
        if state[_B_HI] >= 0:
            walk(hist, _NSUB - 1, state, _REM_HI, _BIN)
            bounds[1] = (
                (T.Cast("uint32", state[_B_HI]) << T.uint32(32 - _SAMPLE_BITS))
                + (T.Cast("uint32", state[_BIN] + 1) << T.uint32(_SUB_SHIFT))
                - T.uint32(1)
            )  # wraps to 0xFFFFFFFF past the last sub-bin
        bounds[0] = T.uint32(1)  # no key is below 0x00800000 (-inf): 1 loses nothing
        if state[_B_LO] >= 0:
            state[_BASE] = T.Select(state[_B_LO] == state[_B_HI], 0, _NSUB)
            walk(hist, state[_BASE] + _NSUB - 1, state, _REM_LO, _BIN)
            bounds[0] = T.max(
                (T.Cast("uint32", state[_B_LO]) << T.uint32(32 - _SAMPLE_BITS))
                + (T.Cast("uint32", state[_BIN] - state[_BASE]) << T.uint32(_SUB_SHIFT)),
                T.uint32(1),
            )
        # Step 2f. Bounds within [-inf, +inf]: count_and_compact compares floats, NaN counts as
        # above (a bracket in the NaN keys misses unless the k-th value is +inf)
        bounds[0] = T.min(T.max(bounds[0], T.uint32(_KEY_NEG_INF)), T.uint32(_KEY_POS_INF))
        bounds[1] = T.min(T.max(bounds[1], T.uint32(_KEY_NEG_INF)), T.uint32(_KEY_POS_INF))

    @T.macro
    def count_and_compact(xf, boost, rank, b, cand, state, bounds):
        # Step 3. One pass over every value, 8 lanes a step, on floats (no keys): count the
        # values above the bracket (NaN included: unordered compare), append those inside it
        # to cand as floats (movmsk -> 8 lane indices from a table -> permps -> store 8).
        lo: T.let = _value_of_key(bounds[0])
        hi: T.let = _value_of_key(bounds[1])
        candf = T.decl_buffer((n + _LANES,), "float32", data=cand.data)
        table = T.decl_buffer((4 + 8 * 256,), "uint8", data=rank.data)
        acc = T.alloc_buffer((_LANES,), "int32", scope="local")
        acc[T.ramp(0, 1, _LANES)] = _bcast(T.int32(0))
        state[_NC] = 0
        for i0 in range(nvec):
            v: T.let = ranked_vec(xf, boost, b, i0 * _LANES)
            above: T.let = _cmp(v, hi, _CMP_NLE_UQ)
            acc[T.ramp(0, 1, _LANES)] = acc[T.ramp(0, 1, _LANES)] - T.reinterpret("int32x8", above)
            mask: T.let = T.call_llvm_pure_intrin(
                "int32",
                "llvm.x86.avx.movmsk.ps.256",
                T.reinterpret(
                    "float32x8",
                    T.reinterpret("int32x8", _cmp(v, lo, _CMP_GE_OQ))
                    & (T.reinterpret("int32x8", above) ^ _bcast(T.int32(-1))),
                ),
            )
            candf[T.ramp(state[_NC], 1, _LANES)] = T.call_llvm_pure_intrin(
                "float32x8",
                "llvm.x86.avx2.permps",
                v,
                T.Cast("int32x8", table[T.ramp(4 + mask * 8, 1, _LANES)]),
            )
            state[_NC] = state[_NC] + T.popcount(mask)
        state[_NHI] = 0
        for lane in T.unroll(_LANES):
            state[_NHI] = state[_NHI] + acc[lane]
        for it in range(ntail):
            vt: T.let = ranked(xf, boost, b, nvec * _LANES + it)
            candf[state[_NC]] = vt
            state[_NHI] = state[_NHI] + T.Cast("int32", T.Not(vt <= hi))
            state[_NC] = state[_NC] + T.Cast("int32", T.And(vt >= lo, vt <= hi))
        # the candidates' keys, in place
        for c0 in range((state[_NC] + _LANES - 1) // _LANES):
            for lane in T.vectorized(_LANES):
                cand[c0 * _LANES + lane] = _key(candf[c0 * _LANES + lane])

    @T.macro
    def select_bracket(k, prefix, cand, hist, state, bounds):
        # Step 4. Radix select, 8 bits a digit, over the bracket's candidates, from the highest
        # bit where its bounds differ (the bits above are the bounds' common prefix).
        nbits: T.let = 32 - T.clz(bounds[0] ^ bounds[1] | T.uint32(1))
        prefix[0] = T.Cast(
            "uint32",
            (T.Cast("uint64", bounds[0]) >> T.Cast("uint64", nbits)) << T.Cast("uint64", nbits),
        )
        state[_SHIFT] = T.max(nbits - 8, 0)
        state[0] = k - state[_NHI]
        state[2] = state[_NC]
        state[_DONE] = 0
        while state[_DONE] == 0:
            shift: T.let = T.Cast("uint32", state[_SHIFT])
            zero(hist, 256)
            for c in range(state[2]):
                ld: T.let = T.Cast("int32", (cand[c] >> shift) & T.uint32(255))
                hist[ld] = hist[ld] + 1
            scan(hist, 256, state)
            prefix[0] = prefix[0] | (T.Cast("uint32", state[1]) << shift)
            if state[_SHIFT] == 0:
                state[_DONE] = 1
            else:
                state[3] = 0
                for c in range(state[2]):
                    kc: T.let = cand[c]
                    cand[state[3]] = kc
                    state[3] = state[3] + T.Cast(
                        "int32", ((kc >> shift) & T.uint32(255)) == T.Cast("uint32", state[1])
                    )
                state[2] = state[3]
                state[_SHIFT] = T.max(state[_SHIFT] - 8, 0)

    @T.macro
    def select_row(xf, boost, rank, b, prefix):
        hist = T.alloc_buffer((nhist,), "int32", scope="global")
        cand = T.alloc_buffer((n + _LANES,), "uint32", scope="global")
        state = T.alloc_buffer((_NSTATE,), "int32", scope="local")
        if sampled:
            skeys = T.alloc_buffer((m,), "uint32", scope="global")
            bounds = T.alloc_buffer((2,), "uint32", scope="local")
            bracket(xf, boost, rank[0], b, skeys, hist, state, bounds)
            count_and_compact(xf, boost, rank, b, cand, state, bounds)
            if T.And(state[_NHI] < rank[0], rank[0] <= state[_NHI] + state[_NC]):
                select_bracket(rank[0], prefix, cand, hist, state, bounds)
            elif fallback:
                select_full(xf, boost, rank[0], b, prefix, cand, hist, state)
            else:
                prefix[0] = T.uint32(0xFFFFFFFF)  # NaN: the row is written as zeros
        else:
            select_full(xf, boost, rank[0], b, prefix, cand, hist, state)

    def kept_vec(xf, boost, b, i, t, lanes):
        return T.Select(
            ranked_vec(xf, boost, b, i, lanes) >= _bcast(t, lanes),
            xf[T.ramp(b * n + i, 1, lanes)],
            _bcast(T.float32(0), lanes),
        )

    @T.macro
    def write_flat(xf, boost, of, b, t):
        # Step 5. Keep every value ranked >= the k-th (float compare: NaN never kept).
        for i0 in range(nvec):
            of[T.ramp(b * n + i0 * _LANES, 1, _LANES)] = kept_vec(
                xf, boost, b, i0 * _LANES, t, _LANES
            )
        for it in range(ntail):
            i: T.let = nvec * _LANES + it
            of[b * n + i] = T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    if pool is not None:
        pc, (ih, iw), (oh, ow) = pool.c, pool.in_hw, pool.out_hw
        (ph, pw), (sh, sw) = pool.size, pool.strides

    def kept(xf, boost, b, i, t):
        return T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    def pooled_row(xf, boost, b, c, r, t):
        # one output row as vector expressions: the window rows' kept values maxed lane-wise,
        # then each window's columns picked by shuffles and maxed (kept values are never NaN)
        base = c * ih * iw + r * sh * iw
        rowmax = kept_vec(xf, boost, b, base, t, iw)
        for di in range(1, ph):
            rowmax = T.max(rowmax, kept_vec(xf, boost, b, base + di * iw, t, iw))
        pooled = T.Shuffle([rowmax], [q * sw for q in range(ow)])
        for dj in range(1, pw):
            pooled = T.max(pooled, T.Shuffle([rowmax], [q * sw + dj for q in range(ow)]))
        return pooled

    @T.macro
    def write_pooled(xf, boost, of, b, t):
        # Step 5 fused with the max-pool: each window's kept values, maxed, written once.
        if iw <= _VEC_POOL_WIDTH and ow > 1:
            for c in range(pc):
                for r in range(oh):
                    of[T.ramp(((b * pc + c) * oh + r) * ow, 1, ow)] = pooled_row(
                        xf, boost, b, c, r, t
                    )
        else:
            rowmax = T.alloc_buffer((iw,), "float32", scope="global")
            for c in range(pc):
                for r in range(oh):
                    for w in T.vectorized(iw):
                        rowmax[w] = kept(xf, boost, b, c * ih * iw + r * sh * iw + w, t)
                    for di in range(ph - 1):
                        for w in T.vectorized(iw):
                            rowmax[w] = T.max(
                                rowmax[w],
                                kept(xf, boost, b, c * ih * iw + (r * sh + di + 1) * iw + w, t),
                            )
                    for q in range(ow):
                        m_ = rowmax[q * sw]
                        for dj in range(pw - 1):
                            m_ = T.max(m_, rowmax[q * sw + dj + 1])
                        of[((b * pc + c) * oh + r) * ow + q] = m_

    nrank = 1 + (8 * 256 // 4 if sampled else 0)
    nout = 1
    for s_ in out_shape:
        nout *= s_

    if boosted:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            boost: T.Buffer((n // block,), "float32"),
            rank: T.Buffer((nrank,), "int32"),
            out: T.Buffer(out_shape, "float32"),
        ):
            xf = T.decl_buffer((batch * n,), "float32", data=x.data)
            of = T.decl_buffer((nout,), "float32", data=out.data)
            for b in rows(batch):
                prefix = T.alloc_buffer((1,), "uint32", scope="local")
                select_row(xf, boost, rank, b, prefix)
                t: T.let = _value_of_key(prefix[0])
                if pool is None:
                    write_flat(xf, boost, of, b, t)
                else:
                    write_pooled(xf, boost, of, b, t)

    else:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            rank: T.Buffer((nrank,), "int32"),
            out: T.Buffer(out_shape, "float32"),
        ):
            xf = T.decl_buffer((batch * n,), "float32", data=x.data)
            of = T.decl_buffer((nout,), "float32", data=out.data)
            for b in rows(batch):
                prefix = T.alloc_buffer((1,), "uint32", scope="local")
                select_row(xf, None, rank, b, prefix)
                t: T.let = _value_of_key(prefix[0])
                if pool is None:
                    write_flat(xf, None, of, b, t)
                else:
                    write_pooled(xf, None, of, b, t)

    return kernel


def _check_sizes(batch: int, n: int, k: int) -> None:
    if batch < 1 or n < 1:
        raise ValueError(f"k-WTA needs batch >= 1 and n >= 1, got batch={batch}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k-WTA needs 1 <= k <= n, got k={k}, n={n}")


def _simd(target) -> bool:
    """AVX2 (the sampled bracket's compares and lane permutes); ``None`` means this host."""
    return has_cpu_features("llvm" if target is None else target, "avx2")


def _sample_stride(n: int, stride: int | None, simd: bool) -> int:
    """The sampled bracket's stride (0: off): every 32nd value for large rows, every 16th else."""
    if stride is None:
        stride = 32 if n >= _LARGE_N else 16
    if stride < 0:
        raise ValueError(f"sample_stride must be >= 0, got {stride}")
    if not simd or stride == 0 or n // stride < _MIN_SAMPLE:
        return 0
    return int(stride)


def _block_lengths(x_shape: tuple[int, ...], pool: _Pool | None) -> list[int]:
    """Block lengths a boost may be constant over, longest first: a channel's plane, a row."""
    if pool is not None:
        return [pool.in_hw[0] * pool.in_hw[1], pool.in_hw[1]]
    return [int(np.prod(x_shape[j:])) for j in range(1, len(x_shape))]


def _boost_block(boost: np.ndarray, lengths: list[int]) -> int:
    """The longest of ``lengths`` (a multiple of 8) over whose blocks ``boost`` is constant.

    nupic's KWinners2d boosts per channel: the kernel then reads one factor per plane and
    broadcasts it, instead of streaming an ``[n]`` array beside ``x`` in each pass.
    """
    for length in lengths:
        if length % _LANES == 0 and boost.size % length == 0:
            blocks = boost.reshape(-1, length)
            if np.array_equal(blocks, np.repeat(blocks[:, :1], length, axis=1)):
                return length
    return 1


def _build(batch: int, n: int, k: int, boost, digits, x_shape, pool: _Pool | None, target,
           sample_stride: int | None, margin: float, fallback: bool) -> KernelCall:  # fmt: skip
    """The KernelCall shared by ``kwta_kernel`` and ``kwta_maxpool_kernel``."""
    hi_bits, lo_bits = digits or (_DIGITS_LARGE if n >= _LARGE_N else _DIGITS_SMALL)
    if not (1 <= hi_bits <= 16 and 1 <= lo_bits <= 16 and (32 - hi_bits) % lo_bits == 0):
        raise ValueError(f"digits {digits} must be <= 16 bits each and split 32 bits evenly")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 sigmas, got {margin}")
    x_shape = (batch, n) if x_shape is None else tuple(int(d) for d in x_shape)
    if x_shape[0] != batch or int(np.prod(x_shape[1:])) != n:
        raise ValueError(f"input shape {x_shape} does not hold {batch} rows of {n} values")
    stride = _sample_stride(n, sample_stride, _simd(target))
    block = 1
    # k travels as data, not baked in: one kernel per (batch, n) serves every k, and a second
    # input keeps RewriteDataflowReshape from probing a one-input call_tir for a reshape (its
    # analysis asserts block-based TIR and fails on these plain loops)
    rank = np.array([k], dtype=np.int32)
    if stride:  # the compaction's lane table rides after k (one signature for both paths)
        rank = np.concatenate([rank, _lane_table().view(np.int32)])
    consts: tuple[np.ndarray, ...] = (rank,)
    if boost is not None:
        boost = np.ascontiguousarray(np.asarray(boost, dtype=np.float32).reshape(-1))
        if boost.size != n:
            raise ValueError(f"boost has {boost.size} values, expected n={n}")
        block = _boost_block(boost, _block_lengths(x_shape, pool))
        consts = (np.ascontiguousarray(boost[::block]), *consts)
    func = _kwta_func(
        batch, n, boost is not None, hi_bits, lo_bits, batch > 1, x_shape, pool, stride,
        float(margin), bool(fallback), block,
    )  # fmt: skip
    func = finish_opaque(func)
    info = {
        "kind": "kwta",
        "k": k,
        "n": n,
        "boosted": boost is not None,
        "digits": (hi_bits, lo_bits),
        "sample_stride": stride,
        "boost_block": block,
    }
    out_shape = (batch, n)
    name = f"kwta_{n}_k{k}"
    if pool is not None:
        out_shape = (batch, pool.c, *pool.out_hw)
        name = f"kwta_maxpool_{n}_k{k}"
        info.update(pool_size=pool.size, pool_strides=pool.strides)
    return KernelCall(func=func, name=name, consts=consts, out_shape=out_shape, info=info)


def kwta_kernel(
    batch: int,
    n: int,
    k: int,
    boost: np.ndarray | None = None,
    target: tvm.target.Target | None = None,
    digits: tuple[int, int] | None = None,
    *,
    x_shape: tuple[int, ...] | None = None,
    sample_stride: int | None = None,
    margin: float = _MARGIN,
    fallback: bool = True,
) -> KernelCall:
    """k-WTA over ``x[batch, n]``: keep ``x`` where (``x * boost``) >= its k-th largest, else 0.

    The kernel is called ``(x, [boost,] rank, out)``: ``boost`` (``[n]``, from any shape of ``n``
    values) is the per-unit boost factor nupic.torch ranks by, ``rank = [k, ...]`` (int32: k,
    then the sampled path's lane table); both are the returned constants, and a boost constant
    per plane of ``x_shape`` travels as one factor per plane (``info["boost_block"]``).
    ``digits`` = (top digit bits, low digit bits) with ``(32 - top) % low == 0``; the default
    depends on ``n``. ``x_shape`` (default
    ``(batch, n)``) is the shape ``x`` arrives in, any ``[batch, ...]`` of ``n`` values per row
    read in row-major order: the flattening reshape in front of a k-WTA is then free. The
    output is ``[batch, n]``.

    ``target`` (default: this host) decides whether the sampled bracket, which calls AVX2
    intrinsics, may be used. ``sample_stride`` is its sampling stride (default by ``n``; 0 turns
    it off), ``margin`` its half-width in standard deviations of the sampled rank; neither
    changes the result, only which path finds it. ``fallback=False`` is for tests: a row whose
    bracket misses is written as zeros instead of re-running the full select.
    """
    batch, n, k = int(batch), int(n), int(k)
    _check_sizes(batch, n, k)
    return _build(
        batch, n, k, boost, digits, x_shape, None, target, sample_stride, margin, fallback
    )


def kwta_maxpool_kernel(
    x_shape: tuple[int, ...],
    chw: tuple[int, int, int],
    k: int,
    pool_size: tuple[int, int],
    strides: tuple[int, int] | None = None,
    boost: np.ndarray | None = None,
    target: tvm.target.Target | None = None,
    digits: tuple[int, int] | None = None,
    *,
    sample_stride: int | None = None,
    margin: float = _MARGIN,
    fallback: bool = True,
) -> KernelCall:
    """k-WTA over each sample of ``x`` seen as ``[C, H, W]``, then a 2-d max-pool, in one kernel.

    Equals ``max_pool2d(reshape(kwta(x, k, boost), [B, C, H, W]), pool_size, strides)`` (NCHW, no
    padding, floor mode): the write pass of the k-WTA maxes each window's kept values and writes
    only the pooled ``[B, C, OH, OW]``, so the full-size k-WTA result is never stored or re-read.
    ``x`` is any ``[B, ...]`` holding ``C * H * W`` values per sample (row-major); other
    arguments as ``kwta_kernel``. Pool rows up to 64 wide are written as vectors.
    """
    x_shape = tuple(int(d) for d in x_shape)
    c, h, w = (int(d) for d in chw)
    ph, pw = (int(p) for p in pool_size)
    sh, sw = (int(s) for s in (strides or pool_size))
    batch, n, k = x_shape[0], c * h * w, int(k)
    _check_sizes(batch, n, k)
    if min(ph, pw, sh, sw) < 1 or ph > h or pw > w:
        raise ValueError(f"pool {pool_size} / strides {strides} do not fit a {h}x{w} plane")
    pool = _Pool(c, (h, w), (ph, pw), (sh, sw))
    return _build(
        batch, n, k, boost, digits, x_shape, pool, target, sample_stride, margin, fallback
    )
