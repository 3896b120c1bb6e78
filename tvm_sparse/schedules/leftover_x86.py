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
from tvm.s_tir.dlight.base import ScheduleRule

from ..target import is_cpu, num_cores

_MIN_PARALLEL_WORK = 1 << 14  # iterations below which a parallel launch does not pay


def _static_extent(loop_sref) -> int | None:
    extent = loop_sref.stmt.extent
    return int(extent.value) if isinstance(extent, tvm.tirx.IntImm) else None


class ParallelSpatial(ScheduleRule):
    """Parallelize the leading spatial loops of every root block (the fallback CPU rule)."""

    def __init__(self, min_work: int = _MIN_PARALLEL_WORK, tasks_per_core: int = 4):
        self.min_work = min_work
        self.tasks_per_core = tasks_per_core

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


def cpu_leftover_rules() -> list[ScheduleRule]:
    """Encoder rules (batched matmul, softmax/layernorm rows), dlight's CPU rules, then the
    spatial fallback: the first rule that applies to a function wins."""
    from .attention_x86 import encoder_leftover_rules

    return [*encoder_leftover_rules(), dl.cpu.GEMV(), dl.cpu.Reduction(), ParallelSpatial()]


def gpu_leftover_rules() -> list[ScheduleRule]:
    """dlight's GPU rules; Fallback binds threads so every kernel is valid on the device."""
    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]
