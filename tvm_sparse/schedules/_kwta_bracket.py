"""The sampled bracket of k-WTA (steps 2-3 of the sampled path, AVX2 + BMI2).

The keys of every ``stride``-th value bound where the k-th largest should fall; one vectorized
pass then counts the values above the bracket and compacts those inside it, so the radix select
runs over a few percent of the row.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ._kwta_keys import (
    ABOVE,
    B_HI,
    B_LO,
    BASE,
    BIN,
    CMP_GE_OQ,
    CMP_NLE_UQ,
    KEY_NEG_INF,
    KEY_POS_INF,
    LANES,
    NC,
    NHI,
    NS,
    NSUB,
    R_HI,
    R_LO,
    REM_HI,
    REM_LO,
    SAMPLE_BITS,
    SUB_SHIFT,
    KwtaSpec,
    bcast,
    cmp_ps,
    key_of,
    value_of_key,
)
from ._kwta_radix import walk, zero


def bracket_macro(spec: KwtaSpec):
    """Macro: key bounds ``bounds = [lo, hi]`` around the k-th largest of row ``b`` from a sample
    of every ``stride``-th value, ``margin`` standard deviations of the sampled rank wide."""
    n, stride, margin, m = spec.n, spec.stride, spec.margin, spec.nsample
    ranked = spec.ranked

    @T.macro
    def bracket(xf, boost, k, b, skeys, hist, state, bounds):
        # Step 2a. Keys of every stride-th value.
        for j in range(m):
            skeys[j] = key_of(ranked(xf, boost, b, j * stride + stride // 2))
        # Step 2b. Sample ranks r_hi < r_lo around k's expected rank, +-margin sigmas.
        mean: T.let = T.Cast("float64", k) * T.float64(m / n)
        sd: T.let = T.sqrt(  # >= 0: k * (1 / n) may round above 1 at k = n
            T.max(mean * (T.float64(1) - T.Cast("float64", k) * T.float64(1 / n)), T.float64(0))
        )
        state[R_HI] = T.Cast("int32", T.floor(mean - T.float64(margin) * sd - T.float64(1)))
        state[R_LO] = T.Cast("int32", T.ceil(mean + T.float64(margin) * sd + T.float64(1)))
        # Step 2c. Their top-digit bins (-1: no bound on that side).
        zero(hist, 1 << SAMPLE_BITS)
        for j in range(m):
            sd1: T.let = T.Cast("int32", skeys[j] >> T.uint32(32 - SAMPLE_BITS))
            hist[sd1] = hist[sd1] + 1
        state[B_HI] = -1
        state[B_LO] = -1
        state[ABOVE] = 0
        state[BIN] = (1 << SAMPLE_BITS) - 1
        if state[R_HI] >= 1:
            while state[ABOVE] + hist[state[BIN]] < state[R_HI]:
                state[ABOVE] = state[ABOVE] + hist[state[BIN]]
                state[BIN] = state[BIN] - 1
            state[B_HI] = state[BIN]
            state[REM_HI] = state[R_HI] - state[ABOVE]
        if state[R_LO] <= m:
            while state[ABOVE] + hist[state[BIN]] < state[R_LO]:
                state[ABOVE] = state[ABOVE] + hist[state[BIN]]
                state[BIN] = state[BIN] - 1
            state[B_LO] = state[BIN]
            state[REM_LO] = state[R_LO] - state[ABOVE]
        # Step 2d. The next digit of the sampled keys in those bins: b_hi's in hist[0:nsub],
        # b_lo's in hist[nsub:2 nsub] (or with b_hi's when the bins are one).
        state[NS] = 0
        for j in range(m):
            kj: T.let = skeys[j]
            top: T.let = T.Cast("int32", kj >> T.uint32(32 - SAMPLE_BITS))
            skeys[state[NS]] = kj
            state[NS] = state[NS] + T.Cast("int32", T.Or(top == state[B_HI], top == state[B_LO]))
        zero(hist, 2 * NSUB)
        for j in range(state[NS]):
            kj: T.let = skeys[j]
            top: T.let = T.Cast("int32", kj >> T.uint32(32 - SAMPLE_BITS))
            sub: T.let = T.Cast("int32", (kj >> T.uint32(SUB_SHIFT)) & T.uint32(NSUB - 1))
            at: T.let = T.Select(top == state[B_HI], sub, sub + NSUB)
            hist[at] = hist[at] + 1
        # Step 2e. Key bounds: hi = the top of b_hi's sub-bin holding rank r_hi (fewer than r_hi
        # sampled keys lie above it), lo = the bottom of b_lo's sub-bin holding r_lo.
        bounds[1] = T.uint32(0xFFFFFFFF)
        if state[B_HI] >= 0:
            walk(hist, NSUB - 1, state, REM_HI, BIN)
            bounds[1] = (
                (T.Cast("uint32", state[B_HI]) << T.uint32(32 - SAMPLE_BITS))
                + (T.Cast("uint32", state[BIN] + 1) << T.uint32(SUB_SHIFT))
                - T.uint32(1)
            )  # wraps to 0xFFFFFFFF past the last sub-bin
        bounds[0] = T.uint32(1)  # no key is below 0x00800000 (-inf): 1 loses nothing
        if state[B_LO] >= 0:
            state[BASE] = T.Select(state[B_LO] == state[B_HI], 0, NSUB)
            walk(hist, state[BASE] + NSUB - 1, state, REM_LO, BIN)
            bounds[0] = T.max(
                (T.Cast("uint32", state[B_LO]) << T.uint32(32 - SAMPLE_BITS))
                + (T.Cast("uint32", state[BIN] - state[BASE]) << T.uint32(SUB_SHIFT)),
                T.uint32(1),
            )
        # Step 2f. Bounds within [-inf, +inf]: count_and_compact compares floats, NaN counts as
        # above (a bracket in the NaN keys misses unless the k-th value is +inf)
        bounds[0] = T.min(T.max(bounds[0], T.uint32(KEY_NEG_INF)), T.uint32(KEY_POS_INF))
        bounds[1] = T.min(T.max(bounds[1], T.uint32(KEY_NEG_INF)), T.uint32(KEY_POS_INF))

    return bracket


def _tail_and_keys_macro(spec: KwtaSpec):
    """Macro: both forms' end of step 3: the values past the last whole vector one by one, then
    the candidates' keys in place. NaN counts as above (``v > hi or isnan``: TIR simplifies
    ``not (v <= hi)`` to an ordered ``>``, which NaN fails)."""
    nvec, ntail, ranked, lanes = spec.nvec, spec.ntail, spec.ranked, spec.lanes

    @T.macro
    def tail_and_keys(xf, boost, b, cand, candf, state, lo, hi):
        for it in range(ntail):
            vt: T.let = ranked(xf, boost, b, nvec * lanes + it)
            candf[state[NC]] = vt
            state[NHI] = state[NHI] + T.Cast("int32", T.Or(vt > hi, T.isnan(vt)))
            state[NC] = state[NC] + T.Cast("int32", T.And(vt >= lo, vt <= hi))
        for c0 in range((state[NC] + lanes - 1) // lanes):
            for lane in T.vectorized(lanes):
                cand[c0 * lanes + lane] = key_of(candf[c0 * lanes + lane])

    return tail_and_keys


def count_and_compact_macro(spec: KwtaSpec):
    """Macro: count row ``b``'s values above the bracket and compact those inside it to ``cand``
    (as keys); ``state[NHI]`` / ``state[NC]`` get the two counts. AVX-512 or AVX2 form."""
    if spec.compress:
        return _count_and_compact_avx512(spec)
    n, nvec = spec.n, spec.nvec
    ranked_vec = spec.ranked_vec
    tail_and_keys = _tail_and_keys_macro(spec)

    @T.macro
    def count_and_compact(xf, boost, rank, b, cand, state, bounds):
        # Step 3. One pass over every value, 8 lanes a step, on floats (no keys): count the
        # values above the bracket (NaN included: unordered compare), append those inside it
        # to cand as floats (movmsk -> 8 lane indices from a table -> permps -> store 8).
        lo: T.let = value_of_key(bounds[0])
        hi: T.let = value_of_key(bounds[1])
        candf = T.decl_buffer((n + LANES,), "float32", data=cand.data)
        table = T.decl_buffer((4 + 8 * 256,), "uint8", data=rank.data)
        acc = T.alloc_buffer((LANES,), "int32", scope="local")
        acc[T.ramp(0, 1, LANES)] = bcast(T.int32(0))
        state[NC] = 0
        for i0 in range(nvec):
            v: T.let = ranked_vec(xf, boost, b, i0 * LANES)
            above: T.let = cmp_ps(v, hi, CMP_NLE_UQ)
            acc[T.ramp(0, 1, LANES)] = acc[T.ramp(0, 1, LANES)] - T.reinterpret("int32x8", above)
            mask: T.let = T.call_llvm_pure_intrin(
                "int32",
                "llvm.x86.avx.movmsk.ps.256",
                T.reinterpret(
                    "float32x8",
                    T.reinterpret("int32x8", cmp_ps(v, lo, CMP_GE_OQ))
                    & (T.reinterpret("int32x8", above) ^ bcast(T.int32(-1))),
                ),
            )
            candf[T.ramp(state[NC], 1, LANES)] = T.call_llvm_pure_intrin(
                "float32x8",
                "llvm.x86.avx2.permps",
                v,
                T.Cast("int32x8", table[T.ramp(4 + mask * 8, 1, LANES)]),
            )
            state[NC] = state[NC] + T.popcount(mask)
        state[NHI] = 0
        for lane in T.unroll(LANES):
            state[NHI] = state[NHI] + acc[lane]
        tail_and_keys(xf, boost, b, cand, candf, state, lo, hi)

    return count_and_compact


def _count_and_compact_avx512(spec: KwtaSpec):
    """``count_and_compact`` at 16 lanes: the compares give mask registers, ``vcompressps``
    packs the values inside the bracket (no lane table, no permute), the counts add the masks'
    ``popcnt`` (LLVM's form of the sum of a zero-extended mask).

    Two compares a vector, both on port 5 with the compress: ``v <= hi`` (ordered) and ``v >=
    lo`` masked by it. The values above the bracket are the rest of ``v <= hi``'s lanes (NaN
    included), counted as ``lanes * nvec`` minus its popcounts: a separate unordered compare and
    an ``isnan`` compare cost two more port-5 uops a vector (the pass was port-5 bound)."""
    n, nvec = spec.n, spec.nvec
    ranked_vec = spec.ranked_vec
    lanes = spec.lanes  # 16
    tail_and_keys = _tail_and_keys_macro(spec)

    def inside(v, lo, hi):
        return T.And(v >= bcast(lo, lanes), v <= bcast(hi, lanes))  # ordered: NaN is not inside

    def not_above(v, hi):  # ordered: NaN fails it, so NaN counts as above
        return v <= bcast(hi, lanes)

    def count(mask):
        return T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.add", T.Cast("int32x16", mask))

    @T.macro
    def count_and_compact(xf, boost, rank, b, cand, state, bounds):
        # Step 3, as the AVX2 form. The masks are spelled where used: a boolx16 let trips
        # TIR's analyzer.
        lo: T.let = value_of_key(bounds[0])
        hi: T.let = value_of_key(bounds[1])
        candf = T.decl_buffer((n + lanes,), "float32", data=cand.data)
        state[NC] = 0
        state[NHI] = 0
        for i0 in range(nvec):
            v: T.let = ranked_vec(xf, boost, b, i0 * lanes, lanes)
            candf[T.ramp(state[NC], 1, lanes)] = T.call_llvm_pure_intrin(
                "float32x16",
                "llvm.x86.avx512.mask.compress",
                v,
                bcast(T.float32(0), lanes),
                inside(v, lo, hi),
            )
            state[NC] = state[NC] + count(inside(v, lo, hi))
            state[NHI] = state[NHI] + count(not_above(v, hi))
        state[NHI] = nvec * lanes - state[NHI]
        tail_and_keys(xf, boost, b, cand, candf, state, lo, hi)

    return count_and_compact
