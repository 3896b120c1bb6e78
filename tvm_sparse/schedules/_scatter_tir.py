"""TIR pieces of the sparse-sparse scatter kernels: compaction of the non-zero inputs, the
scatter-add of a packed column, and its prefetch (macros specialized to a ``ScatterTables``)."""

from __future__ import annotations

from tvm.script import tirx as T

from ..target import cpu_isa
from ._prefetch import prefetch as prefetch_line
from .scatter_tables import ScatterTables

_BYTE_LSBS = 0x0101010101010101  # pdep: mask bit i -> byte i
_LANE_IDS = 0x0706050403020100  # pext: the indices of the selected bytes, packed


# Widest vector a zero fill writes per step. A vectorized loop becomes one TIR vector of its
# extent, and TIR stores lanes in an int16 (negative = scalable): an accumulator of 32768 floats
# or more (a sparse-sparse conv at 56x56 with 64+ outputs) failed to build, or made LLVM abort
# the process ("Cannot implicitly convert a scalable size to a fixed-width size").
FILL_LANES = 16


def padded(size: int) -> int:
    """``size`` rounded up to whole ``FILL_LANES`` steps (what a zero-filled buffer allocates)."""
    return -(-size // FILL_LANES) * FILL_LANES


def zero_fill_macro(size: int):
    """Macro: zero ``buf[:padded(size)]`` ``FILL_LANES`` floats a step, whatever ``size`` is."""
    steps = padded(size) // FILL_LANES

    @T.macro
    def zero_fill(buf):
        for step in range(steps):
            for lane in T.vectorized(FILL_LANES):
                buf[step * FILL_LANES + lane] = T.float32(0)

    return zero_fill


# Entries past the last position that ``active`` (the compaction's output) must have: a vector
# step stores a whole vector of positions at ``cnt``.
COMPACT_SPARE = 16


def scatter_simd(target) -> bool:
    """AVX2 + BMI2 (the vector compaction and scatter); False for no or an unknown target."""
    if target is None:
        return False
    isa = cpu_isa(target)
    return isa.avx2 and isa.bmi2


def compact_compress(target) -> bool:
    """Whether the compaction takes its AVX-512 form (``vpcompressd``, 16 inputs a step)."""
    return cpu_isa(target).compress  # None: the AVX2 form


def _active16(xf, at):
    """The 16-lane mask of ``xf[at:+16] != 0`` with NaN active. Spelled as ``!= 0 or isnan``:
    TIR's simplifier turns ``not (x == 0)`` into ``x != 0``, which LLVM gets as an ordered
    compare (NaN false)."""
    v = xf[T.ramp(at, 1, 16)]
    return T.Or(v != T.broadcast(T.float32(0), 16), T.isnan(v))


def compact_macro(total: int, simd: bool, compress: bool = False):
    """Macro: append to ``active[cnt:]`` the positions of the non-zeros of ``xf[start:+total]``.

    One pass, no branch. NaN is active (the compares are unordered-or-not-equal). Forms:

    - ``compress`` (AVX-512): 16 inputs a step; the compare gives a mask register, ``vpcompressd``
      packs the positions of its set lanes, one 16-int store at ``cnt``, and ``cnt`` grows by
      the mask's ``popcnt``.
    - ``simd`` (AVX2 + BMI2): 8 inputs a step; ``movmsk`` gives an 8-bit mask, ``pdep`` /
      ``pext`` turn it into the byte indices of its set lanes, widened and stored as 8 ints.
    - neither: one input a step, ``cnt += 1 - (x == 0)``.

    The lanes past the count are overwritten by the next step. Positions are relative to
    ``start``. Afterwards ``active[cnt] = 0``, so a one-ahead prefetch stays in bounds; ``active``
    needs ``COMPACT_SPARE`` spare entries.
    """
    wide = total // 16 if compress else 0
    chunks = (total - wide * 16) // 8 if simd else 0
    narrow0 = wide * 16

    @T.macro
    def compact(xf, start, active, cnt):
        for c in range(wide):
            # the mask is spelled twice (a boolx16 let trips TIR's analyzer); CSE merges them
            active[T.ramp(cnt[0], 1, 16)] = T.call_llvm_pure_intrin(
                "int32x16",
                "llvm.x86.avx512.mask.compress",
                T.ramp(c * 16, 1, 16),
                T.broadcast(0, 16),
                _active16(xf, start + c * 16),
            )
            cnt[0] = cnt[0] + T.call_llvm_pure_intrin(
                "int32",
                "llvm.vector.reduce.add",
                T.Cast(
                    "int32x16",
                    _active16(xf, start + c * 16),
                ),
            )  # LLVM folds the sum of a zero-extended mask into popcnt
        for c0 in range(chunks):
            c: T.let = narrow0 // 8 + c0
            nz: T.let = T.call_llvm_pure_intrin(
                "float32x8",
                "llvm.x86.avx.cmp.ps.256",
                xf[T.ramp(start + c * 8, 1, 8)],
                T.broadcast(T.float32(0), 8),
                T.int8(4),  # _CMP_NEQ_UQ
            )
            mask: T.let = T.call_llvm_pure_intrin("int32", "llvm.x86.avx.movmsk.ps.256", nz)
            spread: T.let = T.call_llvm_pure_intrin(
                "uint64", "llvm.x86.bmi.pdep.64", T.Cast("uint64", mask), T.uint64(_BYTE_LSBS)
            ) * T.uint64(255)
            lanes: T.let = T.call_llvm_pure_intrin(
                "uint64", "llvm.x86.bmi.pext.64", T.uint64(_LANE_IDS), spread
            )
            active[T.ramp(cnt[0], 1, 8)] = T.Cast(
                "int32x8", T.reinterpret("uint8x8", lanes)
            ) + T.broadcast(c * 8, 8)
            cnt[0] = cnt[0] + T.popcount(mask)
        for t in range(narrow0 + chunks * 8, total):
            active[cnt[0]] = t
            cnt[0] = cnt[0] + 1 - T.Cast("int32", xf[start + t] == T.float32(0))
        active[cnt[0]] = 0

    return compact


def scatter_macro(tab: ScatterTables):
    """Macro: ``acc[base + owner] += v * value`` over the packed column ``col`` and its residual.

    Vector form: 8 products in one multiply, owners unpacked from ``uint64`` words with shifts
    (ALU work, not loads), then one load-add-store per slot. Scalar form: one owner load, one
    value load, one FMA with the accumulator, one store per slot.
    """
    stride, bits = tab.stride, tab.owner_bits
    per = 64 // bits  # owners per uint64 word
    words = 8 // per  # words per 8 slots
    lane_mask = (1 << bits) - 1
    chunks = stride // 8
    vector, has_res = tab.vector, tab.residual_nnz > 0

    @T.macro
    def scatter(acc, base, col, v, vals, owner, res_ptr, res_owner, res_vals):
        if vector:
            for c in range(chunks):
                prod = T.alloc_buffer((8,), "float32", scope="local")
                prod[T.ramp(0, 1, 8)] = vals[T.ramp(col * stride + c * 8, 1, 8)] * T.broadcast(v, 8)
                for h in T.unroll(words):
                    word: T.let = owner[(col * chunks + c) * words + h]
                    for i in T.unroll(per):
                        o: T.let = base + T.Cast(
                            "int32",
                            T.bitwise_and(
                                T.shift_right(word, T.uint64(bits * i)), T.uint64(lane_mask)
                            ),
                        )
                        acc[o] = acc[o] + prod[h * per + i]
        else:
            for s in range(stride):
                so: T.let = base + T.Cast("int32", owner[col * stride + s])
                acc[so] = acc[so] + v * vals[col * stride + s]
        if has_res:
            r0: T.let = T.Cast("int32", res_ptr[col])
            for r in range(T.Cast("int32", res_ptr[col + 1]) - r0):
                ro: T.let = base + T.Cast("int32", res_owner[r0 + r])
                acc[ro] = acc[ro] + v * res_vals[r0 + r]

    return scatter


def prefetch_macro(tab: ScatterTables):
    """Macro: prefetch packed column ``col`` (values and owners) into L1, one line at a time.

    Addresses past the end of a buffer are harmless: a prefetch never faults.
    """
    stride = tab.stride
    owner_per_col = stride * tab.owner_bits // 64 if tab.vector else stride
    val_lines = -(-stride * 4 // 64)
    owner_lines = -(-owner_per_col * tab.owner.dtype.itemsize // 64)
    owner_per_line = 64 // tab.owner.dtype.itemsize

    @T.macro
    def prefetch(vals, owner, col):
        for q in T.unroll(val_lines):
            T.evaluate(prefetch_line(vals[col * stride + q * 16]))
        for q in T.unroll(owner_lines):
            T.evaluate(prefetch_line(owner[col * owner_per_col + q * owner_per_line]))

    return prefetch
