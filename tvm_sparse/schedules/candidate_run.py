"""Compile candidate kernels and time them in turns: the work of the candidate worker.

The candidate worker (``candidate_worker``) runs this in its own process, so that an LLVM abort
or a kernel that segfaults kills the worker, not the compile; ``TVM_SPARSE_ISOLATE=0`` runs it in
the compiling process instead (``isolation``). ``on_step(name, phase)`` is called before each
compile and each timed call, so whoever watches the worker knows which kernel it was on when it
died.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm

from ..target import device_present, is_cpu
from ..timing import take_turns
from .kernel import KernelCall, build_kernel, kernel_timer
from .weights_residency import DRAM

COMPILE = "compile"
RUN = "run"
# time_evaluator settings of the per-layer choice on a CPU: one call per repeat, each with the
# layer's weights moved first to where the model keeps them (``weights_residency``; a kernel
# that re-reads its weights ran 2x slower in a model than timed hot: ResNet-50's 7x7 layers,
# Zen 4), timed again each round
TIMER_SETTINGS = {"number": 1, "repeat": 7, "min_repeat_ms": 0}
# a GPU kernel takes microseconds: one call per repeat would time the launch and the event pair
GPU_TIMER_SETTINGS = {"number": 20, "repeat": 7, "min_repeat_ms": 5}
# part of every timing's cache key: timings taken another way are not reused
# (v2: the output is no longer flushed, kernel.py; v3: the weights' place is in the key)
TIMING_METHOD = "cold-weights-v3"

Step = Callable[[str, str], None]


@dataclass(frozen=True)
class Outcome:
    """One candidate's result: its timings in seconds (empty when only compiled), or why not."""

    samples: tuple[float, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def error_text(err: BaseException, limit: int = 300) -> str:
    """The useful line of an exception: TVM's errors end with the check that failed."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    if not lines or len(lines) == 1 and ":" not in text:
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compile_kernel(call: KernelCall, target: tvm.target.Target):
    """Compile ``call`` as the final build will: on CPU down to machine code (LLVM generates it
    when the function is first looked up, and that is where it aborts); a GPU target loaded on
    its device when this machine has one, else compiled only."""
    if is_cpu(target) or device_present(target):
        module = build_kernel(call, target)
        module["main"]
        return module
    func = call.func.with_attr("global_symbol", "main")
    tvm.compile(tvm.IRModule({"main": func}), target=target)
    return None


def _quiet(_name: str, _phase: str) -> None:
    pass


def run_candidates(
    calls: dict[str, KernelCall],
    target: tvm.target.Target,
    x: np.ndarray | None,
    rounds: int,
    on_step: Step = _quiet,
    weights_in: str = DRAM,
) -> dict[str, Outcome]:
    """Compile every kernel, then (with an input ``x``) time the ones that compiled in ``rounds``
    turns, on a CPU with their weights in ``weights_in`` ("dram" or "l3"; a GPU times them
    hot). A kernel that fails to compile or to run gets an ``Outcome`` with its error."""
    outcomes: dict[str, Outcome] = {}
    timers = {}
    for name, call in calls.items():
        on_step(name, COMPILE)
        try:
            module = compile_kernel(call, target)
            if x is None:
                outcomes[name] = Outcome()
            else:
                if is_cpu(target):
                    settings = {**TIMER_SETTINGS, "weights_in": weights_in}
                else:
                    settings = GPU_TIMER_SETTINGS
                timers[name] = kernel_timer(call, target, x, module=module, **settings)
        except Exception as err:  # noqa: BLE001 - one failing candidate must not stop the others
            outcomes[name] = Outcome(error=f"failed to build: {error_text(err)}")
    errors: dict[str, str] = {}

    def guarded(name: str) -> Callable[[], float]:
        def call() -> float:
            if name in errors:
                return math.nan
            on_step(name, RUN)
            try:
                return timers[name]()
            except Exception as err:  # noqa: BLE001 - a kernel that fails to run is dropped
                errors[name] = f"failed to run: {error_text(err)}"
                return math.nan

        return call

    for name, samples in take_turns({n: guarded(n) for n in timers}, rounds).items():
        error = errors.get(name)
        outcomes[name] = Outcome(error=error) if error else Outcome(tuple(samples))
    return outcomes
