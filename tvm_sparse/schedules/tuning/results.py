"""What ``tune`` reports: one row per task, the summary table, and the progress lines."""

from __future__ import annotations

import dataclasses
import json

from .model_check import ModelCheck


@dataclasses.dataclass
class TaskResult:
    """One tuned task: what it is, its default (hand / dlight) time and its best time."""

    name: str
    kind: str  # "kernel" or "metaschedule"
    default_s: float | None
    best_s: float | None
    trials: int
    reused: bool
    knobs: dict | None = None
    layer: str = ""
    candidate: str = ""
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if not self.default_s or not self.best_s:
            return None
        return self.default_s / self.best_s


@dataclasses.dataclass
class TuneSummary:
    """What ``tune`` did: one row per task, where the records are, how long it took."""

    records_dir: str
    target: str
    tasks: list[TaskResult]
    wall_s: float
    model_check: ModelCheck | None = None  # when tune ran the end-to-end check
    model_check_note: str = ""  # why it did not run

    @property
    def reused(self) -> int:
        return sum(t.reused for t in self.tasks)

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks if not t.reused)

    def table(self) -> str:
        """A fixed-width table: task, default ms, tuned ms, speedup, trials, knobs."""
        head = f"{'task':44} {'kind':6} {'default ms':>10} {'tuned ms':>9} {'x':>5} {'trials':>6}"
        lines = [head, "-" * len(head)]
        for t in self.tasks:
            d = f"{t.default_s * 1e3:10.4f}" if t.default_s else f"{'-':>10}"
            b = f"{t.best_s * 1e3:9.4f}" if t.best_s else f"{'-':>9}"
            x = f"{t.speedup:5.2f}" if t.speedup else f"{'-':>5}"
            kind = "knobs" if t.kind == "kernel" else "ms"
            extra = json.dumps(t.knobs) if t.knobs else t.note
            lines.append(f"{t.name[:44]:44} {kind:6} {d} {b} {x} {t.trials:6d}  {extra}")
        lines.append(
            f"{len(self.tasks)} tasks, {self.reused} reused, {self.trials} new trials, "
            f"{self.wall_s:.1f} s; records in {self.records_dir}"
        )
        if self.model_check is not None:
            lines.append(self.model_check.line())
        elif self.model_check_note:
            lines.append(f"whole model: {self.model_check_note}")
        return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4f} ms" if seconds else "-"


def _result_line(label: str, res: TaskResult) -> str:
    if res.reused:
        return f"{label}: reused ({res.trials} trials, best {_ms(res.best_s)})"
    x = f", {res.speedup:.2f}x" if res.speedup else ""
    return f"{label}: best {_ms(res.best_s)} (default {_ms(res.default_s)}{x})"
