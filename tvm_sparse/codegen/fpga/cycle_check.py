"""The estimator against the C simulation's cycle counts, stage by stage.

The engines count the cycles of their pipelined loops when built with ``NNET_COUNT_CYCLES``
(``csim`` always builds so); the estimator counts the same loops from the hardware model. This
module sets the two side by side: the check that ties the estimate to the generated code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import TvmSparseError
from ...safe_text import terminal_text
from .estimator import Estimate


@dataclass(frozen=True)
class StageCycles:
    """One stage's cycles per sample: estimated and counted by the C simulation."""

    name: str
    engine: str
    estimated: float
    counted: float

    @property
    def rel_error(self) -> float:
        """(estimated - counted) / counted."""
        return (self.estimated - self.counted) / self.counted if self.counted else float("inf")


def cycle_agreement(est: Estimate, counted: np.ndarray | None) -> list[StageCycles]:
    """Pair the estimate's stages (AXI input, the layers, AXI output) with the counted ones."""
    if counted is None:
        raise TvmSparseError("the C simulation counted no cycles (csim_cycles.log is missing)")
    stages = [("input", "axi", est.io_cycles[0])]
    stages += [(x.name, x.engine, x.cycles) for x in est.layers]
    stages.append(("output", "axi", est.io_cycles[1]))
    if len(counted) != len(stages):
        raise TvmSparseError(
            f"the C simulation counted {len(counted)} stages, the estimate has {len(stages)}"
        )
    return [StageCycles(n, e, float(c), float(k)) for (n, e, c), k in zip(stages, counted)]


def agreement_table(rows: list[StageCycles]) -> str:
    """The per-stage comparison as a table (cycles per sample)."""
    head = f"{'stage':<24} {'engine':<14} {'estimated':>10} {'counted':>10} {'error':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{terminal_text(r.name)[:24]:<24} {r.engine:<14} {r.estimated:>10.0f} "
            f"{r.counted:>10.0f} {r.rel_error:>+7.1%}"
        )
    worst = max(rows, key=lambda r: abs(r.rel_error))
    lines.append(f"largest disagreement: {worst.name} {worst.rel_error:+.1%}")
    return "\n".join(lines)
