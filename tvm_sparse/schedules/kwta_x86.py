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


def _kwta_func(batch: int, n: int, boosted: bool, hi_bits: int, lo_bits: int, parallel: bool):
    """The PrimFunc ``(x, [boost,] rank, out)`` for static sizes; ``rank[0]`` is k."""
    nhi = 1 << hi_bits
    nlo = 1 << lo_bits
    nbins = max(nhi, nlo)
    shift_hi = 32 - hi_bits
    ndigits = shift_hi // lo_bits
    rows = T.parallel if parallel else T.serial

    def ranked(x, boost, b, i):
        return x[b, i] * boost[i] if boosted else x[b, i]

    @T.macro
    def scan(hist, nb, state):
        # state[0]: rank still needed inside the chosen bins (k at first); state[1]: chosen bin
        state[1] = -1
        for jj in range(nb):
            j: T.let = nb - 1 - jj
            if state[1] < 0:
                if hist[j] >= state[0]:
                    state[1] = j
                else:
                    state[0] = state[0] - hist[j]

    @T.macro
    def select_row(x, boost, rank, out, b):
        hist = T.alloc_buffer((nbins,), "int32", scope="global")
        cand = T.alloc_buffer((n,), "uint32", scope="global")
        state = T.alloc_buffer((4,), "int32", scope="global")
        prefix = T.alloc_buffer((1,), "uint32", scope="global")
        # Step 2. Histogram of the top digit over every value.
        for j in range(nhi):
            hist[j] = 0
        for i in range(n):
            key: T.let = _key(ranked(x, boost, b, i))
            cand[i] = key
            hd: T.let = T.Cast("int32", key >> T.uint32(shift_hi))
            hist[hd] = hist[hd] + 1
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
            for j in range(nlo):
                hist[j] = 0
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
        # Step 5. Keep every value ranked >= the k-th (float compare: NaN never kept).
        t: T.let = _value_of_key(prefix[0])
        for i in range(n):
            out[b, i] = T.Select(ranked(x, boost, b, i) >= t, x[b, i], T.float32(0))

    if boosted:

        @T.prim_func
        def kernel(
            x: T.Buffer((batch, n), "float32"),
            boost: T.Buffer((n,), "float32"),
            rank: T.Buffer((1,), "int32"),
            out: T.Buffer((batch, n), "float32"),
        ):
            for b in rows(batch):
                select_row(x, boost, rank, out, b)

    else:

        @T.prim_func
        def kernel(
            x: T.Buffer((batch, n), "float32"),
            rank: T.Buffer((1,), "int32"),
            out: T.Buffer((batch, n), "float32"),
        ):
            for b in rows(batch):
                select_row(x, None, rank, out, b)

    return kernel


def kwta_kernel(
    batch: int,
    n: int,
    k: int,
    boost: np.ndarray | None = None,
    target: tvm.target.Target | None = None,
    digits: tuple[int, int] | None = None,
) -> KernelCall:
    """k-WTA over ``x[batch, n]``: keep ``x`` where (``x * boost``) >= its k-th largest, else 0.

    The kernel is called ``(x, [boost,] rank, out)``: ``boost`` (``[n]``, from any shape of ``n``
    values) is the per-unit boost factor nupic.torch ranks by, ``rank = [k]`` (int32); both are
    the returned constants. ``digits`` = (top digit bits, low digit
    bits) with ``(32 - top) % low == 0``; the default depends on ``n``. ``target`` is accepted
    for the builder contract; the kernel is plain TIR and LLVM picks the instructions.
    """
    del target
    batch, n, k = int(batch), int(n), int(k)
    if batch < 1 or n < 1:
        raise ValueError(f"k-WTA needs batch >= 1 and n >= 1, got batch={batch}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k-WTA needs 1 <= k <= n, got k={k}, n={n}")
    hi_bits, lo_bits = digits or (_DIGITS_LARGE if n >= _LARGE_N else _DIGITS_SMALL)
    if not (1 <= hi_bits <= 16 and 1 <= lo_bits <= 16 and (32 - hi_bits) % lo_bits == 0):
        raise ValueError(f"digits {digits} must be <= 16 bits each and split 32 bits evenly")
    # k travels as data, not baked in: one kernel per (batch, n) serves every k, and a second
    # input keeps RewriteDataflowReshape from probing a one-input call_tir for a reshape (its
    # analysis asserts block-based TIR and fails on these plain loops)
    consts: tuple[np.ndarray, ...] = (np.array([k], dtype=np.int32),)
    if boost is not None:
        boost = np.ascontiguousarray(np.asarray(boost, dtype=np.float32).reshape(-1))
        if boost.size != n:
            raise ValueError(f"boost has {boost.size} values, expected n={n}")
        consts = (boost, *consts)
    func = _kwta_func(batch, n, boost is not None, hi_bits, lo_bits, parallel=batch > 1)
    func = (
        func.with_attr("tirx.is_scheduled", True)
        .with_attr("tirx.noalias", True)
        .with_attr("op_pattern", _OPAQUE)
    )
    return KernelCall(
        func=func,
        name=f"kwta_{n}_k{k}",
        consts=consts,
        out_shape=(batch, n),
        info={
            "kind": "kwta",
            "k": k,
            "n": n,
            "boosted": boost is not None,
            "digits": (hi_bits, lo_bits),
        },
    )
