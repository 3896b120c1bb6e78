"""Wall time per compile phase: where a compile's seconds go (``--report``, ``compile_seconds``).

Why: a compile that costs several times plain TVM's must show which phase costs it (import,
the sparse analysis, building and timing kernel candidates, TVM's lowering, LLVM). The phases
add their time to the timer of the compile in progress (a context variable, so nested or
concurrent compiles on other threads keep their own); outside a compile nothing is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

import tvm

from .context import bound

_CURRENT: ContextVar[PhaseTimes | None] = ContextVar("tvm_sparse_phase_times", default=None)


class PhaseTimes:
    """Seconds per phase, in the order phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def total(self) -> float:
        """Seconds over the top-level phases (sub-phases are parts of theirs)."""
        return sum(s for n, s in self.seconds.items() if ": " not in n)

    def table(self) -> str:
        """One line per phase; sub-phases (``a: b``) indented under theirs."""
        top = [n for n in self.seconds if ": " not in n]
        lines = ["compile time by phase:"]
        for name in top:
            lines.append(f"  {name:34s} {self.seconds[name]:8.2f} s")
            for sub, seconds in self.seconds.items():
                if sub.startswith(name + ": "):
                    lines.append(f"      {sub[len(name) + 2 :]:30s} {seconds:8.2f} s")
        lines.append(f"  {'total':34s} {self.total():8.2f} s")
        return "\n".join(lines)


def timing_phases() -> AbstractContextManager[PhaseTimes]:
    """Collect the phase times of everything compiled inside the block."""
    return bound(_CURRENT, PhaseTimes())


def record(name: str, seconds: float) -> None:
    """Add ``seconds`` to phase ``name`` of the compile in progress (if any)."""
    times = _CURRENT.get()
    if times is not None:
        times.add(name, seconds)


def timed(name: str, inner: tvm.transform.Pass) -> tvm.transform.Pass:
    """``inner`` as a module pass that records its wall time as phase ``name``."""

    @tvm.transform.module_pass(opt_level=0, name=f"tvm_sparse.timed.{name}")
    def run(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        start = time.perf_counter()
        try:
            return inner(mod)
        finally:
            record(name, time.perf_counter() - start)

    return run
