"""k-winners-take-all in linear time: radix select of the k-th largest value, as block-free TIR.

Why this exists: an exported k-WTA is ``TopK -> [k-1] -> GreaterOrEqual -> Where``, and TVM lowers
``topk`` to a full sort of every sample (O(n log n), the bulk of the GSC CNN's dense time). Only
the k-th largest value is needed, and an exact one is found in O(n) by radix select.

Per sample (one row of ``x[batch, n]``; rows run in parallel when ``batch > 1``):

1. Key. Every ranked value ``v`` (``x`` or ``x * boost``) maps to an order-preserving uint32: the
   float's bits with the sign bit set for ``v >= 0`` and all bits inverted for ``v < 0``. ``-0.0``
   takes the key of ``+0.0`` (they compare equal), and every NaN the largest key (below).
2. Top digit. One pass stores the keys in a local ``[n]`` list and histograms their top
   ``hi_bits``; a scan from the largest bin finds the bin holding the k-th largest key and how
   many keys rank above it.
3. Candidates. A second pass compacts the list in place to the keys of that bin (branch free:
   store always, advance the count on a match), without recomputing keys or the boost product.
   For floats of one sign and exponent range this leaves a few percent of ``n``.
4. Low digits. Each further ``lo_bits`` of the key is histogrammed over the candidates only,
   scanned the same way, and the list is filtered to the chosen digit. After the last digit
   the k-th largest key is known exactly; it is turned back into its float ``t``.
5. Write. ``out = where(v >= t, x, 0)`` with the float comparison ONNX's GreaterOrEqual makes,
   so ties with the k-th value all win (more than ``k`` units can survive).

Three passes over ``n`` (read x, read keys, write out), whatever ``k``.

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

from .kernel import KernelCall

_SIGN = 0x80000000
# (hi_bits, lo_bits): the top digit reads every value; the low digits read only the candidates.
# 2048 bins keep the candidate list small for large n; 256 bins keep the scans cheap for small n.
_DIGITS_LARGE = (11, 7)
_DIGITS_SMALL = (8, 8)
_LARGE_N = 8192
# relax OpPatternKind kOpaque: fusion leaves the kernel alone, and AnnotateTIROpPattern does not
# analyze it (its reshape check asserts block-based TIR on two-argument functions)
_OPAQUE = 8
_LANES = 8  # AVX2: 8 float32 / uint32 per vector


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


def _kwta_func(batch: int, n: int, boosted: bool, hi_bits: int, lo_bits: int, parallel: bool,
               x_shape: tuple[int, ...], pool: _Pool | None):  # fmt: skip
    """The PrimFunc ``(x, [boost,] rank, out)`` for static sizes; ``rank[0]`` is k.

    ``x`` has any shape ``[batch, ...]`` holding ``n`` values per sample (read flat, so the
    reshape in front of a k-WTA costs nothing). Without ``pool`` ``out`` is ``[batch, n]``; with
    it ``out`` is the max-pooled ``[batch, C, OH, OW]`` of the k-WTA result seen as
    ``[batch, C, H, W]``.
    """
    nhi = 1 << hi_bits
    nlo = 1 << lo_bits
    shift_hi = 32 - hi_bits
    ndigits = shift_hi // lo_bits
    rows = T.parallel if parallel else T.serial
    nvec = n // _LANES
    ntail = n - nvec * _LANES
    out_shape = (batch, n) if pool is None else (batch, pool.c, *pool.out_hw)

    def ranked(xf, boost, b, i):
        return xf[b * n + i] * boost[i] if boosted else xf[b * n + i]

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
    def select_row(xf, boost, rank, b, prefix):
        hist = T.alloc_buffer((max(nhi, nlo),), "int32", scope="global")
        cand = T.alloc_buffer((n,), "uint32", scope="global")
        state = T.alloc_buffer((4,), "int32", scope="local")
        # Step 2. Histogram of the top digit over every value.
        zero(hist, nhi)
        top_digit(xf, boost, b, cand, hist)
        state[0] = rank[0]
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

    @T.macro
    def write_flat(xf, boost, of, b, t):
        # Step 5. Keep every value ranked >= the k-th (float compare: NaN never kept).
        for i0 in range(nvec):
            for lane in T.vectorized(_LANES):
                i: T.let = i0 * _LANES + lane
                of[b * n + i] = T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))
        for it in range(ntail):
            i: T.let = nvec * _LANES + it
            of[b * n + i] = T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    if pool is not None:
        pc, (ih, iw), (oh, ow) = pool.c, pool.in_hw, pool.out_hw
        (ph, pw), (sh, sw) = pool.size, pool.strides

    def kept(xf, boost, b, i, t):
        return T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    @T.macro
    def write_pooled(xf, boost, of, b, t):
        # Step 5 fused with the max-pool: each window's kept values, maxed, written once.
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
                    m = rowmax[q * sw]
                    for dj in range(pw - 1):
                        m = T.max(m, rowmax[q * sw + dj + 1])
                    of[((b * pc + c) * oh + r) * ow + q] = m

    nout = 1
    for s_ in out_shape:
        nout *= s_

    if boosted:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            boost: T.Buffer((n,), "float32"),
            rank: T.Buffer((1,), "int32"),
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
            rank: T.Buffer((1,), "int32"),
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


def _build(batch: int, n: int, k: int, boost, digits, x_shape, pool: _Pool | None) -> KernelCall:
    """The KernelCall shared by ``kwta_kernel`` and ``kwta_maxpool_kernel``."""
    hi_bits, lo_bits = digits or (_DIGITS_LARGE if n >= _LARGE_N else _DIGITS_SMALL)
    if not (1 <= hi_bits <= 16 and 1 <= lo_bits <= 16 and (32 - hi_bits) % lo_bits == 0):
        raise ValueError(f"digits {digits} must be <= 16 bits each and split 32 bits evenly")
    x_shape = (batch, n) if x_shape is None else tuple(int(d) for d in x_shape)
    if x_shape[0] != batch or int(np.prod(x_shape[1:])) != n:
        raise ValueError(f"input shape {x_shape} does not hold {batch} rows of {n} values")
    # k travels as data, not baked in: one kernel per (batch, n) serves every k, and a second
    # input keeps RewriteDataflowReshape from probing a one-input call_tir for a reshape (its
    # analysis asserts block-based TIR and fails on these plain loops)
    consts: tuple[np.ndarray, ...] = (np.array([k], dtype=np.int32),)
    if boost is not None:
        boost = np.ascontiguousarray(np.asarray(boost, dtype=np.float32).reshape(-1))
        if boost.size != n:
            raise ValueError(f"boost has {boost.size} values, expected n={n}")
        consts = (boost, *consts)
    func = _kwta_func(batch, n, boost is not None, hi_bits, lo_bits, batch > 1, x_shape, pool)
    func = (
        func.with_attr("tirx.is_scheduled", True)
        .with_attr("tirx.noalias", True)
        .with_attr("op_pattern", _OPAQUE)
    )
    info = {
        "kind": "kwta",
        "k": k,
        "n": n,
        "boosted": boost is not None,
        "digits": (hi_bits, lo_bits),
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
) -> KernelCall:
    """k-WTA over ``x[batch, n]``: keep ``x`` where (``x * boost``) >= its k-th largest, else 0.

    The kernel is called ``(x, [boost,] rank, out)``: ``boost`` (``[n]``, from any shape of ``n``
    values) is the per-unit boost factor nupic.torch ranks by, ``rank = [k]`` (int32); both are
    the returned constants. ``digits`` = (top digit bits, low digit
    bits) with ``(32 - top) % low == 0``; the default depends on ``n``. ``x_shape`` (default
    ``(batch, n)``) is the shape ``x`` arrives in, any ``[batch, ...]`` of ``n`` values per row
    read in row-major order: the flattening reshape in front of a k-WTA is then free. The
    output is ``[batch, n]``. ``target`` is accepted for the builder contract; the kernel is
    plain TIR and LLVM picks the instructions.
    """
    del target
    batch, n, k = int(batch), int(n), int(k)
    _check_sizes(batch, n, k)
    return _build(batch, n, k, boost, digits, x_shape, None)


def kwta_maxpool_kernel(
    x_shape: tuple[int, ...],
    chw: tuple[int, int, int],
    k: int,
    pool_size: tuple[int, int],
    strides: tuple[int, int] | None = None,
    boost: np.ndarray | None = None,
    target: tvm.target.Target | None = None,
    digits: tuple[int, int] | None = None,
) -> KernelCall:
    """k-WTA over each sample of ``x`` seen as ``[C, H, W]``, then a 2-d max-pool, in one kernel.

    Equals ``max_pool2d(reshape(kwta(x, k, boost), [B, C, H, W]), pool_size, strides)`` (NCHW, no
    padding, floor mode): the write pass of the k-WTA maxes each window's kept values and writes
    only the pooled ``[B, C, OH, OW]``, so the full-size k-WTA result is never stored or re-read.
    ``x`` is any ``[B, ...]`` holding ``C * H * W`` values per sample (row-major); other
    arguments as ``kwta_kernel``.
    """
    del target
    x_shape = tuple(int(d) for d in x_shape)
    c, h, w = (int(d) for d in chw)
    ph, pw = (int(p) for p in pool_size)
    sh, sw = (int(s) for s in (strides or pool_size))
    batch, n, k = x_shape[0], c * h * w, int(k)
    _check_sizes(batch, n, k)
    if min(ph, pw, sh, sw) < 1 or ph > h or pw > w:
        raise ValueError(f"pool {pool_size} / strides {strides} do not fit a {h}x{w} plane")
    return _build(batch, n, k, boost, digits, x_shape, _Pool(c, (h, w), (ph, pw), (sh, sw)))
