"""Time per kernel of a compiled module: where a model's run goes, call by call.

Why: a whole-model time says nothing about which stage to work on, and the per-layer times of the
report are the chooser's measurements of lone kernels, not what the kernels take inside the
model (other caches, other inputs). This runs the module's own VM with an instrument that times
every call it makes (kernels and the VM's built-ins: allocation, reshapes, checks), in the order
the model makes them.

The instrument is a Python callback around every call, so each timed call carries a little of
its overhead: ``Profile.instrumented_us`` (the run under the instrument) is above
``Profile.total_us`` (the plain run, timed in turns with it), and the difference is shown.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .timing import take_turns


@dataclass
class CallTime:
    """One call site of the VM's main: its symbol, how often a run calls it, median us a call."""

    symbol: str
    calls: int
    median_us: float

    @property
    def builtin(self) -> bool:
        return self.symbol.startswith("vm.builtin.")


@dataclass
class Profile:
    """Per-call times of one module on one set of inputs (see ``profile``)."""

    calls: list[CallTime] = field(default_factory=list)
    total_us: float = 0.0  # a plain run, no instrument
    instrumented_us: float = 0.0  # a run under the instrument
    runs: int = 0

    @property
    def kernel_us(self) -> float:
        return sum(c.median_us * c.calls for c in self.calls if not c.builtin)

    @property
    def builtin_us(self) -> float:
        return sum(c.median_us * c.calls for c in self.calls if c.builtin)

    def table(self) -> str:
        """The calls in the order a run makes them, with their share of the kernels' time."""
        kernels = max(self.kernel_us, 1e-9)
        width = max([len(_short(c.symbol)) for c in self.calls] + [6])
        lines = [f"{'call':<{width}}  calls   us/call   us/run  share", "-" * (width + 36)]
        for c in self.calls:
            share = "" if c.builtin else f"{c.median_us * c.calls / kernels:6.1%}"
            lines.append(
                f"{_short(c.symbol):<{width}}  {c.calls:5d}  {c.median_us:8.2f}  "
                f"{c.median_us * c.calls:7.2f}  {share}"
            )
        lines.append("-" * (width + 36))
        lines.append(
            f"kernels {self.kernel_us:.1f} us + VM built-ins {self.builtin_us:.1f} us "
            f"(instrumented run {self.instrumented_us:.1f} us; plain run {self.total_us:.1f} us, "
            f"median of {self.runs} runs each)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "calls": [
                {"symbol": c.symbol, "calls": c.calls, "median_us": c.median_us} for c in self.calls
            ],
            "kernel_us": self.kernel_us,
            "builtin_us": self.builtin_us,
            "instrumented_us": self.instrumented_us,
            "total_us": self.total_us,
            "runs": self.runs,
        }


SYMBOL_WIDTH = 72  # TVM names a fused kernel after every op in it: 1,400 characters for an LSTM


def _short(symbol: str) -> str:
    """``symbol`` cut to SYMBOL_WIDTH for the table (its head and tail; to_dict keeps it all)."""
    if len(symbol) <= SYMBOL_WIDTH:
        return symbol
    return f"{symbol[: SYMBOL_WIDTH - 16]}...{symbol[-13:]}"


def profile(module: Any, inputs: Sequence[np.ndarray], runs: int = 200) -> Profile:
    """Run ``module`` (a ``CompiledModule``) ``runs`` times under a timing instrument and as
    many times plainly, in turns; the median time of every call site and of both whole runs."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    arrays = module._check_inputs(tuple(inputs))
    plain = module._main  # first: names a missing device before any transfer, as run does
    args = [tvm.runtime.tensor(a, module.device) for a in arrays]
    vm = relax.VirtualMachine(module.executable, module.device)
    per_run: list[list[tuple[str, float]]] = []
    current: list[tuple[str, float]] = []
    started: list[float] = []
    clock = time.perf_counter

    def instrument(func, symbol, before_run, ret_value, *call_args):
        if before_run:
            started.append(clock())
        else:
            current.append((str(symbol), clock() - started.pop()))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    main = vm["main"]

    def timed_instrumented() -> float:
        current.clear()
        start = clock()
        main(*args)
        module.device.sync()
        elapsed = clock() - start
        per_run.append(list(current))
        return elapsed

    def timed_plain() -> float:
        start = clock()
        plain(*args)
        module.device.sync()
        return clock() - start

    plain(*args)  # warm both (first-call allocation, page faults)
    main(*args)
    current.clear()
    samples = take_turns({"plain": timed_plain, "instrumented": timed_instrumented}, runs)
    return Profile(
        calls=_call_sites(per_run),
        total_us=statistics.median(samples["plain"]) * 1e6,
        instrumented_us=statistics.median(samples["instrumented"]) * 1e6,
        runs=runs,
    )


def _call_sites(per_run: list[list[tuple[str, float]]]) -> list[CallTime]:
    """Group each run's calls by symbol, in first-call order: median time of one call."""
    order: list[str] = []
    times: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for run in per_run:
        seen: dict[str, int] = {}
        for symbol, seconds in run:
            if symbol not in times:
                order.append(symbol)
                times[symbol] = []
            times[symbol].append(seconds)
            seen[symbol] = seen.get(symbol, 0) + 1
        for symbol, n in seen.items():
            counts[symbol] = max(counts.get(symbol, 0), n)
    return [CallTime(s, counts[s], statistics.median(times[s]) * 1e6) for s in order]
