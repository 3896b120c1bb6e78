"""Timing several things on a shared machine: in turns, so a noisy spell hits all of them.

This machine's speed moves within a second (other tenants share the host: a fixed loop of eight
FMAs on L1 loads, 4 cycles ideally, took 4.1 to 7.4 cycles at 2.95 GHz per iteration across 0.2 s
samples), so two kernels or runtimes timed one after the other are timed on different machines.
The per-layer kernel choice and the benchmarks both time their contenders in short rounds
instead; the order rotates each round, so none is always first or always right after the same
other.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def take_turns(timers: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """``rounds`` samples of every ``timers[name]()`` (one time each), the timers taking turns."""
    names = list(timers)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds if names else 0):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timers[name]())
    return samples


def median_seconds(fn: Callable[[], object], seconds: float, repeat: int = 5) -> float:
    """Seconds per call of ``fn``: after one warm-up call, ``repeat`` runs of about
    ``seconds / repeat`` each, the median of their per-call means (one timer for ``take_turns``)."""
    fn()
    runs = []
    for _ in range(repeat):
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / repeat:
                break
        runs.append(elapsed / count)
    return float(statistics.median(runs))
