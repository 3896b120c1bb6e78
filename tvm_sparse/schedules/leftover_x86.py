"""Schedules for the dense leftovers on CPU (elementwise, pooling, k-WTA plumbing, softmax...).

TVM 0.27's CPU pipeline schedules nothing: every fused function runs as one scalar loop nest on one
thread. dlight's CPU rules cover GEMV and reductions; this rule covers the rest: it splits the
leading spatial loops of each block into a parallel outer loop sized for the target's cores and
leaves the inner loops for LLVM to vectorize. Tiny functions stay serial (a parallel launch costs
microseconds, more than they take).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline

from ..target import is_cpu, num_cores, vector_lanes
from .vector_safety import RuleGuard, ScalarOnlyGuard

_MIN_PARALLEL_WORK = 1 << 14  # iterations below which a parallel launch does not pay


def _static_extent(loop_sref) -> int | None:
    extent = loop_sref.stmt.extent
    return int(extent.value) if isinstance(extent, tvm.tirx.IntImm) else None


class _ParallelRule(ScheduleRule):
    """A CPU rule that splits work into ``tasks_per_core`` parallel tasks per core, and only
    when there are ``min_work`` iterations (a parallel launch costs microseconds)."""

    def __init__(self, min_work: int = _MIN_PARALLEL_WORK, tasks_per_core: int = 4):
        self.min_work = min_work
        self.tasks_per_core = tasks_per_core


class ParallelSpatial(_ParallelRule):
    """Parallelize the leading spatial loops of every root block (the fallback CPU rule)."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tvm.tirx.PrimFunc) or not is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        try:
            root = sch.get_sblock("root")
        except Exception:  # noqa: BLE001 - functions without a root block are left alone
            return None
        changed = False
        cores = num_cores(target)
        for block in sch.get_child_blocks(root):
            changed |= self._parallelize(sch, block, cores)
        return sch if changed else None

    def _parallelize(self, sch: s_tir.Schedule, block, cores: int) -> bool:
        loops = sch.get_loops(block)
        if not loops:
            return False
        iter_vars = sch.get(block).iter_vars
        if len(iter_vars) != len(loops):
            return False
        extents = [_static_extent(sch.get_sref(loop)) for loop in loops]
        if any(e is None for e in extents) or int(np.prod(extents)) < self.min_work:
            return False
        leading = 0
        for iv in iter_vars:
            if iv.iter_type != tvm.tirx.IterVar.DataPar:
                break
            leading += 1
        if leading == 0:
            return False
        # Fuse the leading spatial loops but keep the innermost one for vectorization when it is
        # the last loop (contiguous stores).
        fuse_count = leading - 1 if leading == len(loops) and leading > 1 else leading
        fused = sch.fuse(*loops[:fuse_count]) if fuse_count > 1 else loops[0]
        extent = int(np.prod(extents[:fuse_count]))
        if cores > 1 and extent > 1:
            tasks = min(extent, cores * self.tasks_per_core)
            if extent > tasks:
                outer, _ = sch.split(fused, factors=[tasks, None])
                sch.parallel(outer)
            else:
                sch.parallel(fused)
            return True
        return fuse_count > 1


def _vector_split(extent: int, lanes: int) -> int:
    """The inner vector loop's length: a multiple of the lanes dividing ``extent`` (up to 4
    vectors, so the body unrolls into independent ops), else the largest divisor <= 4 lanes."""
    for count in (4, 2, 1):
        if extent % (lanes * count) == 0:
            return lanes * count
    return max(d for d in range(1, min(extent, 4 * lanes) + 1) if extent % d == 0)


class InjectiveVectorize(_ParallelRule):
    """Elementwise / broadcast / layout functions (no reduction): inline every block into the
    last one (an add + ReLU is one pass over memory, not two with a temporary the size of the
    tensor), vectorize a piece of the last loop, fuse and parallelize the rest."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tvm.tirx.PrimFunc) or not is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks or any(not b.is_injective() for b in blocks):
            return None
        blocks = try_inline(sch, blocks)
        if len(blocks) != 1:
            return None
        block = blocks[0].block_rv
        loops = sch.get_loops(block)
        extents = [_static_extent(sch.get_sref(loop)) for loop in loops]
        if not loops or any(e is None for e in extents):
            return None
        total = int(np.prod(extents))
        # The vector piece comes from the last loop alone: a vector over the fused loops can
        # cross a row, and its (row, column) indices then become per-lane divisions, a gather
        # (a ReLU6 over 96x112x112 ran 13x slower so, 1.49 ms against 0.11 ms, Zen 4).
        inner = _vector_split(extents[-1], vector_lanes(target))
        rows, vec = sch.split(loops[-1], factors=[None, inner])
        outer = sch.fuse(*loops[:-1], rows) if len(loops) > 1 else rows
        if inner > 1:
            sch.vectorize(vec)
        cores = num_cores(target)
        chunks = total // inner
        if cores > 1 and total >= self.min_work and chunks > 1:
            tasks = min(chunks, cores * self.tasks_per_core)
            if chunks > tasks:
                outer, _ = sch.split(outer, factors=[tasks, None])
            sch.parallel(outer)
        return sch


class WindowReduction(ScheduleRule):
    """Pooling-like functions: one block that reduces a small window per output (max / average
    pooling), after a padding block. The padding is inlined, and the innermost output column
    loop is moved inside the window loops and vectorized, so a window step is one vector max
    or add over neighbouring outputs instead of a scalar loop per output."""

    max_window = 64

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tvm.tirx.PrimFunc) or not is_cpu(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks:
            return None
        blocks = try_inline(sch, blocks)
        reductions = [b for b in blocks if b.is_reduction()]
        if len(blocks) != 1 or len(reductions) != 1:
            return None
        block = reductions[0].block_rv
        info = reductions[0]
        kinds = [it.kind for it in info.iters]
        if "S" not in kinds or kinds != sorted(kinds, key=lambda k: k != "S"):
            return None  # spatial iterators first, then the reduction ones
        loops = sch.get_loops(block)
        extents = [_static_extent(sch.get_sref(loop)) for loop in loops]
        if len(loops) != len(kinds) or any(e is None for e in extents):
            return None
        n_spatial = kinds.count("S")
        window = int(np.prod(extents[n_spatial:]))
        width = extents[n_spatial - 1]
        if window > self.max_window or width < 4:
            return None
        lanes = vector_lanes(target)
        inner = lanes if width % lanes == 0 else _vector_split(width, lanes)
        if inner < 4:
            return None
        spatial, reduce = loops[:n_spatial], loops[n_spatial:]
        col_outer, col_inner = sch.split(spatial[-1], factors=[None, inner])
        rows = sch.fuse(*spatial[:-1]) if n_spatial > 1 else None
        order = ([rows] if rows is not None else []) + [col_outer, *reduce, col_inner]
        sch.reorder(*order)
        cores = num_cores(target)
        if rows is not None and cores > 1 and int(np.prod(extents[:-1])) >= cores:
            sch.parallel(rows)  # before decompose_reduction: TIR checks the block's init here
        init = sch.decompose_reduction(block, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
        # the update's column loop stays innermost for LLVM's loop vectorizer (TIR refuses to
        # vectorize a loop under the block's reduction loops)
        return sch


def cpu_leftover_rules() -> list[ScheduleRule]:
    """Encoder rules (batched matmul, softmax/layernorm rows), dlight's CPU rules, then the
    spatial fallback: the first rule that applies to a function wins."""
    from .attention_x86 import encoder_leftover_rules

    rules = [
        *encoder_leftover_rules(),
        InjectiveVectorize(),
        WindowReduction(),
        dl.cpu.GEMV(),
        dl.cpu.Reduction(),
        ParallelSpatial(),
    ]
    # what LLVM cannot vectorize keeps TVM's scalar loops; a rule that fails declines
    return [ScalarOnlyGuard(), *(RuleGuard(rule) for rule in rules)]


def gpu_leftover_rules() -> list[ScheduleRule]:
    """dlight's GPU rules; Fallback binds threads so every kernel is valid on the device."""
    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]
