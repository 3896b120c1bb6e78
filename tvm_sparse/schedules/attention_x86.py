"""x86 schedules for the dense leftovers of a transformer encoder once its linears are sparse.

What is left of a BERT layer after Sparsify (seq 128, hidden 384, 12 heads; 1 thread, Zen 3):
two activation x activation matmuls per layer (``Q K^T`` with the scale and mask add fused in by
FuseOps, and ``P V``), a softmax and two layernorms. Untouched, TVM runs each matmul as one scalar
loop nest (~7 ms each, more than all sparse linears together) and a softmax in ~1.2 ms.

Rules (dlight style: ``apply(func, target, tunable) -> Schedule | None``, first match wins):

- :class:`BatchMatmul`: ``C[b.., i, j] = sum_k A[b.., i, k] * B[b.., k, j]`` (any number of batch
  dims, B in either layout) followed by elementwise epilogue blocks. Register-blocked like a BLAS
  micro-kernel: an ``mr x nr`` tile of C stays in registers (``nr`` vectorized over j, ``mr``
  unrolled) across the whole k loop, the epilogue runs on the tile before it is stored once.
- :class:`RowSoftmax`: row-wise reductions (softmax, layernorm, and elementwise blocks fused
  around them) with all blocks of one row under one loop, the elementwise blocks vectorized and
  the sum / max reductions split into ``lanes`` partial results (``rfactor``) so they vectorize too
  (a float reduction is never vectorized by LLVM on its own: it would reorder the sums).

The libm ``exp`` / ``erf`` calls these functions make are replaced by vector polynomials in
``vector_math.py`` (installed by :func:`encoder_leftover_rules`).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.s_tir.schedule import ScheduleError

from ..target import is_cpu, num_cores, vector_lanes
from .vector_math import install_llvm_lowering


def _is_llvm(func, target: tvm.target.Target) -> bool:
    return isinstance(func, tirx.PrimFunc) and target is not None and is_cpu(target)


def _static_extents(sch: s_tir.Schedule, loops) -> list[int] | None:
    out = []
    for loop in loops:
        extent = sch.get(loop).extent
        if not isinstance(extent, tirx.IntImm):
            return None
        out.append(int(extent.value))
    return out


def _largest_divisor(n: int, candidates: tuple[int, ...]) -> int:
    for c in candidates:
        if n % c == 0:
            return c
    return 1


class _CpuRule(ScheduleRule):
    """A CPU rule: None (the next rule's turn) on other targets and on shapes ``_schedule``
    rejects with a ``ScheduleError``."""

    def apply(self, func, target, _tunable):
        if not _is_llvm(func, target):
            return None
        try:
            return self._schedule(func, target)
        except ScheduleError:  # a shape this rule does not handle: leave it to the next rule
            return None


class BatchMatmul(_CpuRule):
    """Register-blocked (batched) matmul of two activations, with its elementwise epilogue."""

    def __init__(self, mr: int = 4, nr: int | None = None, min_macs: int = 1 << 16):
        self.mr = mr  # rows of C per tile (unrolled)
        # columns of C per tile (vectorized): None is two vectors of the target (16 on AVX2, 32
        # on AVX-512), so the mr x nr tile is 8 accumulators, enough to hide the FMA latency
        self.nr = nr
        self.min_macs = min_macs  # smaller matmuls are left to the generic rules

    def _schedule(self, func, target):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        # Step 1. Recognize: one reduction block "S..SR" reading two buffers; injective after.
        reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1 or reductions[0] != 0:
            return None
        main = infos[0]
        kind = main.dom_kind()
        if len(kind) < 3 or kind[-1] != "R" or set(kind[:-1]) != {"S"}:
            return None
        block = sch.get(main.block_rv)
        if len(block.reads) != 2 or len(block.writes) != 1:
            return None
        if not all(str(r.source.dtype) == "float32" for r in block.reads):
            return None
        loops = sch.get_loops(main.block_rv)
        extents = _static_extents(sch, loops)
        if extents is None or len(loops) != len(kind):
            return None
        *batch, m, n, k = extents
        if m * n * k * max(1, _prod(batch)) < self.min_macs:
            return None
        if not all(info.is_injective() for info in infos[1:]):
            return None

        # Step 2. Tile sizes. Where no vector width divides n (ViT's 197 tokens: 197 x 197
        # scores), a divisor tile would be 1 x 1 scalar code, 30-80x slower (7 ms against
        # 0.2 ms for 3 x 197 x 197 x 64): pad the iteration space to whole mr x nr tiles instead
        # (``pad_einsum`` copies A and B into zero-padded buffers and crops C).
        lanes = vector_lanes(target)
        nr_full = self.nr or 2 * lanes
        mr = _largest_divisor(m, (self.mr, 2, 1))
        nr = _largest_divisor(n, (nr_full, 2 * lanes, lanes, 8, 4, 2, 1))
        padded = n >= lanes and nr < lanes
        epilogue = [info.block_rv for info in infos[1:]]
        acc = main.block_rv
        if padded:
            mr, nr = self.mr, lanes if n <= 2 * lanes else nr_full
            sch.pad_einsum(acc, [1] * len(batch) + [mr if m % mr else 1, nr, 1])
            # the crop (C_pad -> C) is now the matmul's consumer: inline it into the epilogue,
            # or it is the epilogue
            (crop,) = sch.get_consumers(acc)
            if epilogue:
                sch.compute_inline(crop)
            else:
                epilogue = [crop]

        # Step 3. Fold the epilogue into the store: inline all but the last epilogue block,
        # accumulate in a local tile, and inline the last one into the tile's write-back (when
        # padded, the last one is computed per tile instead: it covers only the unpadded part).
        for rv in epilogue[:-1]:
            sch.compute_inline(rv)
        store = sch.cache_write(acc, 0, "local")
        if epilogue and not padded:
            sch.reverse_compute_inline(epilogue[-1])

        # Step 4. Tile: (batch, i/mr, j/nr, k, mr, nr) with the mr x nr tile in registers.
        *b_loops, i, j, kk = sch.get_loops(acc)
        io, ii = sch.split(i, factors=[None, mr])
        jo, ji = sch.split(j, factors=[None, nr])
        sch.reorder(*b_loops, io, jo, kk, ii, ji)
        outer = sch.fuse(*b_loops, io) if b_loops else io
        if num_cores(target) > 1:  # before decompose_reduction, which breaks the dataflow check
            sch.parallel(outer)
        sch.reverse_compute_at(store, jo, preserve_unit_loops=True)
        if padded and epilogue:
            sch.reverse_compute_at(epilogue[-1], jo, preserve_unit_loops=True)

        # Step 5. Vectorize the j lanes, unroll the mr rows (the update first: once the init is
        # split off the update is no longer a complete reduction block and cannot be vectorized).
        sch.vectorize(ji)
        sch.unroll(ii)
        store_loops = sch.get_loops(store)[-2:]
        sch.unroll(store_loops[0])
        sch.vectorize(store_loops[1])
        sch.decompose_reduction(acc, kk)
        return sch


class RowReduction(_CpuRule):
    """Softmax, layernorm and friends: every block of one row under one loop, all vectorized.

    Matches functions whose blocks share ``lead`` leading spatial axes (the rows) and whose last
    block is injective, with at least one reduction over the innermost axis. Sum and max
    reductions are split into ``lanes`` partial results first (rfactor), which LLVM vectorizes;
    a final reduction over those ``lanes`` values stays scalar.
    """

    def __init__(self, lanes: int | None = None, min_row: int | None = None):
        self.lanes = lanes  # None: the target's vector width
        self.min_row = min_row or 16  # rows shorter than this: the generic rule does as well

    def _schedule(self, func, target):
        lanes = self.lanes or vector_lanes(target)
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or not infos[-1].is_injective():
            return None
        if all(info.is_injective() for info in infos):
            return None
        lead = min(len(k) - len(k.lstrip("S")) for k in (i.dom_kind() for i in infos))
        if lead == 0:
            return None
        for info in infos:
            kind = info.dom_kind()
            if not info.is_injective() and (kind[lead:] != "R" or len(kind) != lead + 1):
                return None
        row_extents = _static_extents(sch, sch.get_loops(infos[-1].block_rv))
        if row_extents is None or _prod(row_extents[lead:]) < self.min_row:
            return None
        names = [sch.get(info.block_rv).name_hint for info in infos]

        # Step 1. Split every long reduction into `lanes` partial results (rfactor) while each
        # block still owns its loop nest.
        for name, info in zip(names, infos):
            if info.is_injective():
                continue
            block = sch.get_sblock(name)
            k = sch.get_loops(block)[-1]
            extent = _static_extents(sch, [k])
            if extent is None or extent[0] % lanes or extent[0] < 2 * lanes:
                continue
            _, ki = sch.split(k, factors=[None, lanes])
            sch.rfactor(ki, factor_axis=lead)

        # Step 2. One loop over the rows (fused leading axes) holds every block.
        last = sch.get_sblock(names[-1])
        loops = sch.get_loops(last)
        rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
        if num_cores(target) > 1:
            sch.parallel(rows)
        for rv in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
            sch.compute_at(rv, rows, preserve_unit_loops=True)

        # Step 3. Vectorize: the lanes of each rfactor partial reduction (moved inside its k
        # loop, init split off afterwards) and the innermost axis of each elementwise block.
        depth = len(sch.get_loops(last)) - (len(loops) - lead)
        for rv in _blocks_under(sch, rows):
            if sch.get(rv).name_hint.endswith("_rf"):
                self._vectorize_partials(sch, rv, depth, lanes)
            else:
                self._vectorize(sch, rv, lanes)
        return sch

    @staticmethod
    def _vectorize_partials(sch: s_tir.Schedule, rv, depth: int, lanes: int) -> None:
        inner = sch.get_loops(rv)[depth:]
        lane_loops = [lp for lp in inner if _static_extents(sch, [lp]) == [lanes]]
        if len(inner) < 2 or not lane_loops:
            return
        k = inner[-1]
        sch.reorder(k, lane_loops[0])
        sch.vectorize(lane_loops[0])
        sch.decompose_reduction(rv, k)

    @staticmethod
    def _vectorize(sch: s_tir.Schedule, rv, lanes: int) -> None:
        block = sch.get(rv)
        loops = sch.get_loops(rv)
        if len(loops) <= 1:
            return
        inner = loops[-1]
        kinds = [iv.iter_type for iv in block.iter_vars]
        if kinds and kinds[-1] != tirx.IterVar.DataPar:
            return  # a reduction left scalar (too short to split, or the final sum of partials)
        extent = _static_extents(sch, [inner])
        if extent is None or extent[0] < 2:
            return
        if extent[0] > lanes and extent[0] % lanes == 0:
            _, inner = sch.split(inner, factors=[None, lanes])
        elif extent[0] > lanes:
            return
        sch.vectorize(inner)


def _blocks_under(sch: s_tir.Schedule, loop) -> list:
    """Every block inside ``loop`` (depth-first)."""
    out = []

    def visit(rv):
        for child in sch.get_child_blocks(rv):
            out.append(child)
            visit(child)

    visit(loop)
    return out


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def encoder_leftover_rules() -> list[ScheduleRule]:
    """The rules above, in the order the pipeline should try them (before the generic ones).

    Also installs the vector ``exp`` / ``erf`` lowering for llvm builds (see ``vector_math``).
    """
    install_llvm_lowering()
    return [BatchMatmul(), RowReduction()]
