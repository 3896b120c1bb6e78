"""The pass that runs every kernel of a module with denormal floats flushed to zero (FTZ + DAZ)
on x86 CPUs: why and how in ``ir.fp_mode``; ``compile(..., flush_denormals=False)`` leaves
kernels as they are."""

from __future__ import annotations

import tvm

from ..ir.fp_mode import FTZ_DAZ, KEEP_FP_MODE, applies, flush_denormals_in
from ..ir.parallel_loops import prim_func_pass
from ..target import num_cores

__all__ = ["FTZ_DAZ", "KEEP_FP_MODE", "FlushDenormals", "applies", "flush_denormals_in"]


def FlushDenormals(target: tvm.target.Target) -> tvm.transform.Pass:  # noqa: N802
    """The pass: every PrimFunc of a module runs with FTZ/DAZ set, each parallel loop cut into
    ``target``'s cores (use it only where ``applies(target)``). The target is an argument, not
    the one in scope: without one in scope every parallel loop would become a single task."""
    tasks = num_cores(target)
    return prim_func_pass("tvm_sparse.FlushDenormals", lambda f: flush_denormals_in(f, tasks))
