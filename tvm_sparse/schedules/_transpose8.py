"""8 x 8 float32 transposes in AVX shuffles, shared by the kernels that transpose in registers.

Three stages of two-input shuffles, each one AVX instruction: unpcklps / unpckhps, shufps,
vperm2f128 (24 in all). One shuffle of eight vectors (the obvious form) makes LLVM emit ~40
shuffles and spills.
"""

from __future__ import annotations

from tvm.script import tirx as T

UNPACK_LO = [0, 8, 1, 9, 4, 12, 5, 13]
UNPACK_HI = [2, 10, 3, 11, 6, 14, 7, 15]
PAIRS_LO = [0, 1, 8, 9, 4, 5, 12, 13]
PAIRS_HI = [2, 3, 10, 11, 6, 7, 14, 15]
HALVES_LO = [0, 1, 2, 3, 8, 9, 10, 11]
HALVES_HI = [4, 5, 6, 7, 12, 13, 14, 15]


@T.macro
def transpose8(src, r0, c0, dst, d0, stride):
    """``dst[d0 + stride j : d0 + stride j + 8] = src[r0 : r0 + 8, c0 + j]``: column j as a
    vector (``stride`` 8 packs the columns into a scratch, a row length writes them in place)."""
    t0: T.let = T.Shuffle([src[r0, T.ramp(c0, 1, 8)], src[r0 + 1, T.ramp(c0, 1, 8)]], UNPACK_LO)
    t1: T.let = T.Shuffle([src[r0, T.ramp(c0, 1, 8)], src[r0 + 1, T.ramp(c0, 1, 8)]], UNPACK_HI)
    t2: T.let = T.Shuffle([src[r0 + 2, T.ramp(c0, 1, 8)], src[r0 + 3, T.ramp(c0, 1, 8)]], UNPACK_LO)
    t3: T.let = T.Shuffle([src[r0 + 2, T.ramp(c0, 1, 8)], src[r0 + 3, T.ramp(c0, 1, 8)]], UNPACK_HI)
    t4: T.let = T.Shuffle([src[r0 + 4, T.ramp(c0, 1, 8)], src[r0 + 5, T.ramp(c0, 1, 8)]], UNPACK_LO)
    t5: T.let = T.Shuffle([src[r0 + 4, T.ramp(c0, 1, 8)], src[r0 + 5, T.ramp(c0, 1, 8)]], UNPACK_HI)
    t6: T.let = T.Shuffle([src[r0 + 6, T.ramp(c0, 1, 8)], src[r0 + 7, T.ramp(c0, 1, 8)]], UNPACK_LO)
    t7: T.let = T.Shuffle([src[r0 + 6, T.ramp(c0, 1, 8)], src[r0 + 7, T.ramp(c0, 1, 8)]], UNPACK_HI)
    s0: T.let = T.Shuffle([t0, t2], PAIRS_LO)
    s1: T.let = T.Shuffle([t0, t2], PAIRS_HI)
    s2: T.let = T.Shuffle([t1, t3], PAIRS_LO)
    s3: T.let = T.Shuffle([t1, t3], PAIRS_HI)
    s4: T.let = T.Shuffle([t4, t6], PAIRS_LO)
    s5: T.let = T.Shuffle([t4, t6], PAIRS_HI)
    s6: T.let = T.Shuffle([t5, t7], PAIRS_LO)
    s7: T.let = T.Shuffle([t5, t7], PAIRS_HI)
    dst[T.ramp(d0, 1, 8)] = T.Shuffle([s0, s4], HALVES_LO)
    dst[T.ramp(d0 + 1 * stride, 1, 8)] = T.Shuffle([s1, s5], HALVES_LO)
    dst[T.ramp(d0 + 2 * stride, 1, 8)] = T.Shuffle([s2, s6], HALVES_LO)
    dst[T.ramp(d0 + 3 * stride, 1, 8)] = T.Shuffle([s3, s7], HALVES_LO)
    dst[T.ramp(d0 + 4 * stride, 1, 8)] = T.Shuffle([s0, s4], HALVES_HI)
    dst[T.ramp(d0 + 5 * stride, 1, 8)] = T.Shuffle([s1, s5], HALVES_HI)
    dst[T.ramp(d0 + 6 * stride, 1, 8)] = T.Shuffle([s2, s6], HALVES_HI)
    dst[T.ramp(d0 + 7 * stride, 1, 8)] = T.Shuffle([s3, s7], HALVES_HI)
