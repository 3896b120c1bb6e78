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

The kernel is composed here from ``_kwta_bracket`` (steps 2-3), ``_kwta_radix`` (steps 2-4) and
``_kwta_write`` (step 5), over the keys and row state of ``_kwta_keys``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tvm
from tvm.script import tirx as T

from ..target import cpu_isa
from ._kwta_bracket import bracket_macro, count_and_compact_macro
from ._kwta_keys import (
    LANES,
    NC,
    NHI,
    NSTATE,
    SAMPLE_BITS,
    KwtaSpec,
    Pool,
    lane_table,
    value_of_key,
)
from ._kwta_local import LocalSpec, local_func
from ._kwta_radix import full_select_macro, select_bracket
from ._kwta_write import untie_macro, write_flat_macro, write_pooled_macro
from .kernel import KernelCall, finish_opaque

# (hi_bits, lo_bits): the top digit reads every value; the low digits read only the candidates.
# 2048 bins keep the candidate list small for large n; 256 bins keep the scans cheap for small n.
_DIGITS_LARGE = (11, 7)
_DIGITS_SMALL = (8, 8)
_LARGE_N = 8192
_MARGIN = 3.0  # sigmas of the sampled rank's spread on each side of the bracket
_MIN_SAMPLE = 64  # fewer sampled values bracket too loosely to pay


def _kwta_func(spec: KwtaSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, [boost,] rank, out)`` for static sizes; ``rank[0]`` is k.

    ``x`` has any shape ``[batch, ...]`` holding ``n`` values per sample (read flat, so the
    reshape in front of a k-WTA costs nothing). Without ``pool`` ``out`` is ``[batch, n]``; with
    it ``out`` is the max-pooled ``[batch, C, OH, OW]`` of the k-WTA result seen as
    ``[batch, C, H, W]``. ``stride`` > 0 turns on the sampled bracket (AVX2 only; ``rank[1:]``
    then holds the lane table's bytes); without ``fallback`` a row whose bracket misses is
    written as zeros (tests: which path ran). ``boost`` holds one factor per ``block`` values.
    """
    batch, n, x_shape, pool, fallback = spec.batch, spec.n, spec.x_shape, spec.pool, spec.fallback
    rows = T.parallel if spec.parallel else T.serial
    out_shape = spec.out_shape
    sampled = spec.sampled
    m = spec.nsample
    nhist = max(1 << spec.hi_bits, 1 << spec.lo_bits, 1 << SAMPLE_BITS if sampled else 0)
    select_full = full_select_macro(spec)
    bracket = bracket_macro(spec)
    count_and_compact = count_and_compact_macro(spec)
    write = write_flat_macro(spec) if pool is None else write_pooled_macro(spec)
    exact = spec.exact
    untie = untie_macro(spec)

    @T.macro
    def select_row(xf, boost, rank, b, prefix, tie):
        hist = T.alloc_buffer((nhist,), "int32", scope="global")
        cand = T.alloc_buffer((n + spec.lanes,), "uint32", scope="global")
        state = T.alloc_buffer((NSTATE,), "int32", scope="local")
        if sampled:
            skeys = T.alloc_buffer((m,), "uint32", scope="global")
            bounds = T.alloc_buffer((2,), "uint32", scope="local")
            bracket(xf, boost, rank[0], b, skeys, hist, state, bounds)
            count_and_compact(xf, boost, rank, b, cand, state, bounds)
            if T.And(state[NHI] < rank[0], rank[0] <= state[NHI] + state[NC]):
                select_bracket(rank[0], prefix, cand, hist, state, bounds)
            elif fallback:
                select_full(xf, boost, rank[0], b, prefix, cand, hist, state)
            else:
                prefix[0] = T.uint32(0xFFFFFFFF)  # NaN: the row is written as zeros
                if exact:
                    state[0] = 0
                    state[1] = 0
                    hist[0] = 0
        else:
            select_full(xf, boost, rank[0], b, prefix, cand, hist, state)
        if exact:
            # the last digit's scan leaves the rank inside the k-th key's bin (how many of the
            # values equal to the k-th are among the k) and the bin's count (how many there are)
            tie[0] = state[0]
            tie[1] = hist[state[1]]

    @T.macro
    def sample(xf, boost, rank, of, b):
        prefix = T.alloc_buffer((1,), "uint32", scope="local")
        if exact:
            tie = T.alloc_buffer((3,), "int32", scope="local")
            select_row(xf, boost, rank, b, prefix, tie)
            t: T.let = value_of_key(prefix[0])
            write(xf, boost, of, b, t)
            if tie[0] < tie[1]:
                untie(xf, boost, of, b, t, tie)
        else:
            select_row(xf, boost, rank, b, prefix, None)
            t: T.let = value_of_key(prefix[0])
            write(xf, boost, of, b, t)

    nrank = 1 + (8 * 256 // 4 if sampled else 0)
    nout = math.prod(out_shape)

    if spec.boosted:

        @T.prim_func
        def kernel(
            x: T.Buffer(x_shape, "float32"),
            boost: T.Buffer((n // spec.block,), "float32"),
            rank: T.Buffer((nrank,), "int32"),
            out: T.Buffer(out_shape, "float32"),
        ):
            xf = T.decl_buffer((batch * n,), "float32", data=x.data)
            of = T.decl_buffer((nout,), "float32", data=out.data)
            for b in rows(batch):
                sample(xf, boost, rank, of, b)

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
                sample(xf, None, rank, of, b)

    return kernel


@functools.lru_cache(maxsize=64)
def _finished(spec: KwtaSpec | LocalSpec) -> tvm.tirx.PrimFunc:
    """The kernel of ``spec``, built once per process: parsing the TVMScript of a global k-WTA
    takes 1-3 s, and k and the boost are data, so layers of one shape share it (PrimFuncs are
    immutable)."""
    func = local_func(spec) if isinstance(spec, LocalSpec) else _kwta_func(spec)
    return finish_opaque(func)


def _check_sizes(batch: int, n: int, k: int) -> None:
    if batch < 1 or n < 1:
        raise ValueError(f"k-WTA needs batch >= 1 and n >= 1, got batch={batch}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k-WTA needs 1 <= k <= n, got k={k}, n={n}")


def _simd(target) -> bool:
    """AVX2 (the sampled bracket's compares and lane permutes); ``None`` means this host."""
    return cpu_isa("llvm" if target is None else target).avx2


def _sample_stride(n: int, stride: int | None, simd: bool) -> int:
    """The sampled bracket's stride (0: off): every 32nd value for large rows, every 16th else."""
    if stride is None:
        stride = 32 if n >= _LARGE_N else 16
    if stride < 0:
        raise ValueError(f"sample_stride must be >= 0, got {stride}")
    if not simd or stride == 0 or n // stride < _MIN_SAMPLE:
        return 0
    return int(stride)


def _block_lengths(x_shape: tuple[int, ...], pool: Pool | None) -> list[int]:
    """Block lengths a boost may be constant over, longest first: a channel's plane, a row."""
    if pool is not None:
        return [pool.in_hw[0] * pool.in_hw[1], pool.in_hw[1]]
    return [int(np.prod(x_shape[j:])) for j in range(1, len(x_shape))]


def _boost_block(boost: np.ndarray, lengths: list[int], lanes: int = LANES) -> int:
    """The longest of ``lengths`` (a multiple of ``lanes``, so a vector of values lies in one
    block) over whose blocks ``boost`` is constant.

    nupic's KWinners2d boosts per channel: the kernel then reads one factor per plane and
    broadcasts it, instead of streaming an ``[n]`` array beside ``x`` in each pass.
    """
    for length in lengths:
        if length % lanes == 0 and boost.size % length == 0:
            blocks = boost.reshape(-1, length)
            if np.array_equal(blocks, np.repeat(blocks[:, :1], length, axis=1)):
                return length
    return 1


def _build(batch: int, n: int, k: int, boost, digits, x_shape, pool: Pool | None, target,
           sample_stride: int | None, margin: float, fallback: bool, exact: bool = False,
           out_shape: tuple[int, ...] | None = None) -> KernelCall:  # fmt: skip
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
    # 16 lanes and vcompressps on AVX-512; None (this host) keeps the AVX2 form, as before
    lanes = 16 if cpu_isa(target).compress else LANES
    block = 1
    # k travels as data, not baked in: one kernel per (batch, n) serves every k, and a second
    # input keeps RewriteDataflowReshape from probing a one-input call_tir for a reshape (its
    # analysis asserts block-based TIR and fails on these plain loops)
    rank = np.array([k], dtype=np.int32)
    if stride:  # the compaction's lane table rides after k (one signature for both paths)
        rank = np.concatenate([rank, lane_table().view(np.int32)])
    consts: tuple[np.ndarray, ...] = (rank,)
    if boost is not None:
        boost = np.ascontiguousarray(np.asarray(boost, dtype=np.float32).reshape(-1))
        if boost.size != n:
            raise ValueError(f"boost has {boost.size} values, expected n={n}")
        block = _boost_block(boost, _block_lengths(x_shape, pool), lanes)
        consts = (np.ascontiguousarray(boost[::block]), *consts)
    if exact and pool is not None:
        raise ValueError("exact k-WTA (ties broken by index) is not fused with a max-pool")
    out_dims = None if out_shape is None else tuple(int(d) for d in out_shape)
    if out_dims is not None and (out_dims[0] != batch or math.prod(out_dims) != batch * n):
        raise ValueError(f"output shape {out_shape} does not hold {batch} rows of {n} values")
    spec = KwtaSpec(
        batch, n, boost is not None, hi_bits, lo_bits, batch > 1, x_shape, pool, stride,
        float(margin), bool(fallback), block, bool(exact), out_dims, lanes,
    )  # fmt: skip
    func = _finished(spec)
    info = {
        "kind": "kwta",
        "k": k,
        "n": n,
        "boosted": boost is not None,
        "digits": (hi_bits, lo_bits),
        "sample_stride": stride,
        "boost_block": block,
        "exact": bool(exact),
        "lanes": lanes,
    }
    out_shape = spec.out_shape
    name = f"kwta_{n}_k{k}" + ("_exact" if exact else "")
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
    exact: bool = False,
    out_shape: tuple[int, ...] | None = None,
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
    output is ``[batch, n]``, or ``out_shape`` (any shape of those values, row-major).
    ``exact``: exactly k values win, of those equal to the k-th the lowest indices (what
    TopK's indices scattered into a mask keep); else every value >= the k-th wins.

    ``target`` (default: this host) decides whether the sampled bracket, which calls AVX2
    intrinsics, may be used. ``sample_stride`` is its sampling stride (default by ``n``; 0 turns
    it off), ``margin`` its half-width in standard deviations of the sampled rank; neither
    changes the result, only which path finds it. ``fallback=False`` is for tests: a row whose
    bracket misses is written as zeros instead of re-running the full select.
    """
    batch, n, k = int(batch), int(n), int(k)
    _check_sizes(batch, n, k)
    return _build(
        batch, n, k, boost, digits, x_shape, None, target, sample_stride, margin, fallback,
        exact, out_shape,
    )  # fmt: skip


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
    pool = Pool(c, (h, w), (ph, pw), (sh, sw))
    return _build(
        batch, n, k, boost, digits, x_shape, pool, target, sample_stride, margin, fallback
    )


def kwta_local_kernel(
    x_shape: tuple[int, ...],
    k: int,
    boost: np.ndarray | None = None,
    target: tvm.target.Target | None = None,
    *,
    exact: bool = False,
    out_shape: tuple[int, ...] | None = None,
) -> KernelCall:
    """Local k-WTA over an NCHW ``x``: at each location keep the channels whose ``x * boost``
    (or ``x``) is among the k largest of the C there (``KWinners2d(local=True)``), else 0.

    ``boost`` holds one factor per value of a sample (``C*H*W``, any shape of them, or ``[C]``
    per channel); ``exact`` breaks ties with the k-th by the lower channel (TopK's indices
    scattered), else every tie wins. ``out_shape`` defaults to ``x_shape`` (4-d). ``target`` is
    unused (plain vector TIR); kept for the builders' common signature.
    """
    del target
    x_shape = tuple(int(d) for d in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"local k-WTA needs an NCHW input, got shape {x_shape}")
    batch, c, h, w = x_shape
    _check_sizes(batch, c, int(k))
    if h * w == 1:  # one location: the channels are the whole sample
        return kwta_kernel(batch, c, k, boost, x_shape=x_shape, exact=exact,
                           out_shape=out_shape or x_shape)  # fmt: skip
    mode, consts = None, ()
    if boost is not None:
        boost = np.ascontiguousarray(np.asarray(boost, dtype=np.float32).reshape(-1))
        planes = boost.reshape(c, -1) if boost.size in (c, c * h * w) else None
        if planes is None:
            raise ValueError(f"boost has {boost.size} values, expected {c} or {c * h * w}")
        per_channel = np.array_equal(planes, np.repeat(planes[:, :1], planes.shape[1], axis=1))
        mode = "channel" if per_channel else "full"
        consts = (np.ascontiguousarray(planes[:, 0]) if per_channel else boost,)
    out_shape = x_shape if out_shape is None else tuple(int(d) for d in out_shape)
    if math.prod(out_shape) != math.prod(x_shape) or out_shape[0] != batch:
        raise ValueError(f"output shape {out_shape} does not match input shape {x_shape}")
    spec = LocalSpec(batch, c, h * w, int(k), mode, bool(exact), x_shape, out_shape)
    func = _finished(spec)
    rank = np.array([k], dtype=np.int32)
    info = {"kind": "kwta_local", "k": int(k), "n": c, "boosted": mode is not None,
            "boost_mode": mode, "exact": bool(exact), "chain": spec.m}  # fmt: skip
    name = f"kwta_local_{c}_k{k}" + ("_exact" if exact else "")
    return KernelCall(func=func, name=name, consts=(*consts, rank), out_shape=out_shape,
                      info=info)  # fmt: skip
