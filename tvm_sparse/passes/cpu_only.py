"""The passes that emit hand-written CPU TIR (k-WTA select, fused attention, add + layer norm):
which target they rewrite for, and the one way they all run, so each pass says only what it
rewrites. Every other target's module is left alone."""

from __future__ import annotations

from abc import ABC, abstractmethod

import tvm
from tvm import relax

from ..ir.rewrite import PlannedRewriter, rewrite_functions
from ..target import is_cpu


def cpu_target(target: tvm.target.Target | None) -> tvm.target.Target | None:
    """``target`` (else the one in scope) when it is a CPU target, else None."""
    target = target or tvm.target.Target.current(allow_none=True)
    return target if target is not None and is_cpu(target) else None


class CpuRewrite(ABC):
    """A module pass (subclasses are decorated ``@tvm.transform.module_pass``) that rewrites
    every Relax function with the ``PlannedRewriter`` its ``rewriter_for(func, mod, target)``
    returns (None: nothing to rewrite there); a no-op on targets other than CPU (``target``
    defaults to the one in scope)."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = cpu_target(self.target)
        if target is None:
            return mod
        return rewrite_functions(mod, lambda func, mod_: self.rewriter_for(func, mod_, target))

    @abstractmethod
    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> PlannedRewriter | None:
        """The rewriter of ``func`` (in ``mod``, for the CPU ``target``), or None."""
