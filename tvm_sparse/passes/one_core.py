"""On a CPU target of one core, every kernel's parallel loops run serially (no pool launch).

Why: see ``ir.parallel_loops.serial_parallel_loops``. Candidate kernels timed alone get the
same rewrite (``schedules.kernel.build_kernel``), so the choice times what the model runs.
"""

from __future__ import annotations

import tvm

from ..ir.parallel_loops import one_core, prim_func_pass, serial_on_one_core


def applies(target: tvm.target.Target) -> bool:
    return one_core(target)


def SerialOnOneCore(target: tvm.target.Target) -> tvm.transform.Pass:  # noqa: N802
    """The pass (use it where ``applies(target)``): the target is an argument, not the one in
    scope, as in ``flush_denormals.FlushDenormals``."""
    return prim_func_pass("tvm_sparse.SerialOnOneCore", lambda f: serial_on_one_core(f, target))
