"""k-WTA building blocks: order-preserving keys, the row state's slots, and the kernel's spec.

Shared by the radix select (``_kwta_radix``), the sampled bracket (``_kwta_bracket``) and the
write pass (``_kwta_write``) that ``kwta_x86`` composes into one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

SIGN = 0x80000000
LANES = 8  # AVX2: 8 float32 / uint32 per vector (KwtaSpec.lanes: 16 on AVX-512)
# The sampled bracket: its keys' top digit, then a sub-digit inside the two bracketing bins
# (11 + 7 bits: a bound sits within 2^-9 of its value, relative)
SAMPLE_BITS = 11
NSUB = 128
SUB_SHIFT = 32 - SAMPLE_BITS - 7
CMP_GE_OQ, CMP_NLE_UQ = 13, 6  # vcmpps predicates: >= (NaN false), not <= (NaN true)
KEY_NEG_INF, KEY_POS_INF = 0x00800000, 0xFF800000
VEC_POOL_WIDTH = 64  # rows up to this wide are pooled as one vector expression
# state[] slots of a row: 0-3 are the radix select's (rank, bin, count, new count)
(R_HI, R_LO, B_HI, B_LO, ABOVE, BIN, REM_HI, REM_LO, NS, BASE, NC, NHI, SHIFT,
 DONE) = range(4, 18)  # fmt: skip
NSTATE = 18


@dataclass(frozen=True)
class Pool:
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


@dataclass(frozen=True)
class KwtaSpec:
    """What one k-WTA kernel is specialized to (see ``kwta_x86._kwta_func``).

    ``x_shape`` holds ``batch`` rows of ``n`` values; ``stride`` > 0 turns on the sampled
    bracket (``margin`` its half-width in sigmas); without ``fallback`` a row whose bracket
    misses is written as zeros; ``boost`` (when ``boosted``) has one factor per ``block`` values.
    ``exact``: exactly k values win, ties with the k-th broken by index (lowest first), as a
    TopK's indices scattered into a mask select; else every value >= the k-th wins. ``out_dims``:
    the flat output's shape (``[batch, n]`` when None), any shape of ``batch * n`` values.
    """

    batch: int
    n: int
    boosted: bool
    hi_bits: int
    lo_bits: int
    parallel: bool
    x_shape: tuple[int, ...]
    pool: Pool | None
    stride: int
    margin: float
    fallback: bool
    block: int
    exact: bool = False
    out_dims: tuple[int, ...] | None = None
    lanes: int = LANES

    @property
    def compress(self) -> bool:
        """The AVX-512 form: 16 lanes, mask compares and ``vcompressps`` compaction."""
        return self.lanes == 16

    @property
    def nvec(self) -> int:
        """Whole vectors of a row."""
        return self.n // self.lanes

    @property
    def ntail(self) -> int:
        """Values of a row past its whole vectors."""
        return self.n - self.nvec * self.lanes

    @property
    def sampled(self) -> bool:
        return self.stride > 0

    @property
    def nsample(self) -> int:
        """Values the sampled bracket ranks (every ``stride``-th)."""
        return self.n // self.stride if self.sampled else 0

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.pool is None:
            return self.out_dims or (self.batch, self.n)
        return (self.batch, self.pool.c, *self.pool.out_hw)

    def ranked(self, xf, boost, b, i):
        """The value row ``b`` ranks at ``i``: ``x``, or ``x * boost``."""
        n, block = self.n, self.block
        if not self.boosted:
            return xf[b * n + i]
        return xf[b * n + i] * (boost[i] if block == 1 else boost[i // block])

    def ranked_vec(self, xf, boost, b, i, lanes=None):
        """``ranked`` of ``lanes`` (default ``self.lanes``) values from ``i``."""
        n, block = self.n, self.block
        lanes = lanes or self.lanes
        # with a blocked boost the caller's lanes lie in one block (block % lanes == 0)
        v = xf[T.ramp(b * n + i, 1, lanes)]
        if not self.boosted:
            return v
        if block == 1:
            return v * boost[T.ramp(i, 1, lanes)]
        return v * T.broadcast(boost[i // block], lanes)


def key_of(v):
    """The order-preserving uint32 key of float32 ``v``, without branches.

    ``0x80000000 + v`` read as a sign-magnitude integer: ``-0.0`` and ``+0.0`` share a key and
    every NaN (any sign) keys above ``+inf``. Selects on the sign compile to branches that the
    random signs of activations mispredict half the time; the shifts and masks do not.
    """
    bits = T.reinterpret("int32", v)
    mag = bits & T.int32(0x7FFFFFFF)
    nan = (T.int32(0x7F800000) - mag) >> 31  # -1 for NaN, else 0 (arithmetic shift)
    sign = (bits >> 31) & (nan ^ T.int32(-1))  # -1 for negative non-NaN, else 0
    return T.reinterpret("uint32", ((mag ^ sign) - sign) ^ T.int32(-SIGN))


def value_of_key(key):
    """The float32 whose key is ``key`` (NaN for the keys above ``+inf``)."""
    signed = T.reinterpret("int32", key ^ T.uint32(SIGN))
    bits = T.Select(signed >= 0, signed, (T.int32(0) - signed) | T.int32(-SIGN))
    return T.reinterpret("float32", bits)


def cmp_ps(v, scalar, predicate: int):
    """AVX ``vcmpps`` of float32x8 ``v`` with a broadcast scalar: all-ones lanes where true."""
    return T.call_llvm_pure_intrin(
        "float32x8", "llvm.x86.avx.cmp.ps.256", v, T.broadcast(scalar, LANES), T.int8(predicate)
    )


def lane_table() -> np.ndarray:
    """For each 8-bit mask, the indices of its set bits, packed first (8 bytes a mask)."""
    table = np.zeros((256, 8), np.uint8)
    for mask in range(256):
        lanes = [i for i in range(8) if mask >> i & 1]
        table[mask, : len(lanes)] = lanes
    return table.reshape(-1)


def bcast(value, lanes: int = LANES):
    return T.broadcast(value, lanes)
