"""Which target a CPU-kernel pass rewrites for: the passes that emit hand-written CPU TIR
(k-WTA select, fused attention, add + layer norm) leave every other target's module alone."""

from __future__ import annotations

import tvm

from ..target import is_cpu


def cpu_target(target: tvm.target.Target | None) -> tvm.target.Target | None:
    """``target`` (else the one in scope) when it is a CPU target, else None."""
    target = target or tvm.target.Target.current(allow_none=True)
    return target if target is not None and is_cpu(target) else None
