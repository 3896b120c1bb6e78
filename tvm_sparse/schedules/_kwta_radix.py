"""The radix select of the k-th largest key (k-WTA steps 2-4 without a bracket, and the select
over a bracket's candidates).

A histogram of one digit, a scan from the largest bin down to the bin holding the k-th largest
key, and a branch-free compaction of the keys to that bin, digit after digit.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ._kwta_keys import DONE, LANES, NC, NHI, SHIFT, KwtaSpec, key_of


@T.macro
def zero(hist, nb):
    # 8 bins a store where possible: TIR caps a vector at 32767 lanes
    for j0 in range(nb // LANES):
        for lane in T.vectorized(LANES):
            hist[j0 * LANES + lane] = 0
    for j in range(nb % LANES):
        hist[nb - nb % LANES + j] = 0


@T.macro
def scan(hist, nb, state):
    # state[0]: rank still needed (k at first) -> rank inside the chosen bin; state[1]: bin.
    # The k-th largest key exists, so the walk down from the largest bin stops at a bin.
    state[1] = nb - 1
    while hist[state[1]] < state[0]:
        state[0] = state[0] - hist[state[1]]
        state[1] = state[1] - 1


@T.macro
def walk(hist, top, state, rank_at, bin_at):
    # state[bin_at] = the bin (from ``top`` down) holding the state[rank_at]-th largest;
    # state[rank_at] becomes the rank inside that bin
    state[bin_at] = top
    while hist[state[bin_at]] < state[rank_at]:
        state[rank_at] = state[rank_at] - hist[state[bin_at]]
        state[bin_at] = state[bin_at] - 1


def full_select_macro(spec: KwtaSpec):
    """Macro: ``prefix[0]`` = the k-th largest key of row ``b`` by a full radix select.

    One pass stores every key and histograms its top ``hi_bits``; the scan finds the bin of the
    k-th largest; each further ``lo_bits`` digit is histogrammed, scanned and filtered over the
    candidates only.
    """
    n, nvec, ntail, lanes = spec.n, spec.nvec, spec.ntail, spec.lanes
    nhi = 1 << spec.hi_bits
    nlo = 1 << spec.lo_bits
    shift_hi = 32 - spec.hi_bits
    lo_bits = spec.lo_bits
    ndigits = shift_hi // lo_bits
    ranked = spec.ranked

    @T.macro
    def top_digit(xf, boost, b, cand, hist):
        # keys a vector at a time (8 or 16 lanes of shifts and masks), their top digits counted by
        # scalar increments (interleaved copies of the histogram, against chains of increments
        # of one bin, measured no faster)
        for i0 in range(nvec):
            for lane in T.vectorized(lanes):
                cand[i0 * lanes + lane] = key_of(ranked(xf, boost, b, i0 * lanes + lane))
            for lane in T.unroll(lanes):
                hd: T.let = T.Cast("int32", cand[i0 * lanes + lane] >> T.uint32(shift_hi))
                hist[hd] = hist[hd] + 1
        for it in range(ntail):
            cand[nvec * lanes + it] = key_of(ranked(xf, boost, b, nvec * lanes + it))
            hd: T.let = T.Cast("int32", cand[nvec * lanes + it] >> T.uint32(shift_hi))
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

    return select_full


@T.macro
def select_bracket(k, prefix, cand, hist, state, bounds):
    # Step 4. Radix select, 8 bits a digit, over the bracket's candidates, from the highest
    # bit where its bounds differ (the bits above are the bounds' common prefix).
    nbits: T.let = 32 - T.clz(bounds[0] ^ bounds[1] | T.uint32(1))
    prefix[0] = T.Cast(
        "uint32",
        (T.Cast("uint64", bounds[0]) >> T.Cast("uint64", nbits)) << T.Cast("uint64", nbits),
    )
    state[SHIFT] = T.max(nbits - 8, 0)
    state[0] = k - state[NHI]
    state[2] = state[NC]
    state[DONE] = 0
    while state[DONE] == 0:
        shift: T.let = T.Cast("uint32", state[SHIFT])
        zero(hist, 256)
        for c in range(state[2]):
            ld: T.let = T.Cast("int32", (cand[c] >> shift) & T.uint32(255))
            hist[ld] = hist[ld] + 1
        scan(hist, 256, state)
        prefix[0] = prefix[0] | (T.Cast("uint32", state[1]) << shift)
        if state[SHIFT] == 0:
            state[DONE] = 1
        else:
            state[3] = 0
            for c in range(state[2]):
                kc: T.let = cand[c]
                cand[state[3]] = kc
                state[3] = state[3] + T.Cast(
                    "int32", ((kc >> shift) & T.uint32(255)) == T.Cast("uint32", state[1])
                )
            state[2] = state[3]
            state[SHIFT] = T.max(state[SHIFT] - 8, 0)
