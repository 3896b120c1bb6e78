"""The knob search of one kernel task: measure settings, keep the fastest, record every trial.

The builder's own default (the hand schedule) is always trial 0, so a tuned kernel is never
slower than the hand schedule, and every other setting's output is checked against it. After
a few random trials an XGBoost model fitted on the knobs -> log time of the trials so far picks
the next setting, which matters when the space is larger than the trial budget.
"""

from __future__ import annotations

import json
import random

import numpy as np

from ..measure_input import layer_input
from .measure import measure_kernel
from .records import kernel_key
from .results import TaskResult
from .space import build_candidate, knob_space

_XGB_WARMUP = 4  # trials measured (default first, then random) before the model guides the rest


def _features(knobs: dict) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in knobs.items():
        if isinstance(value, dict):
            for sub, v in _features(value).items():
                flat[f"{name}.{sub}"] = v
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                flat[f"{name}.{i}"] = float(v)
        else:
            flat[name] = -1.0 if value is None else float(value)
    return flat


def _next_index(space: list[dict], tried: dict[int, float | None], rng: random.Random) -> int:
    """The next setting to measure: defaults first, a few random ones, then XGBoost's pick."""
    untried = [i for i in range(len(space)) if i not in tried]
    if 0 in untried:
        return 0
    measured = [(i, s) for i, s in tried.items() if s is not None and i != 0]
    if len(measured) + 1 < _XGB_WARMUP or rng.random() < 0.15:
        return rng.choice(untried)
    try:
        import xgboost as xgb
    except ImportError:  # no cost model: random search over the same space
        return rng.choice(untried)
    names = sorted({k for s in space for k in _features(s)})

    def row(i: int) -> list[float]:
        f = _features(space[i])
        return [f.get(n, -2.0) for n in names]

    xs = np.array([row(i) for i, _ in measured])
    ys = np.log(np.array([s for _, s in measured]))
    params = {"max_depth": 3, "eta": 0.3, "nthread": 1, "verbosity": 0}
    booster = xgb.train(params, xgb.DMatrix(xs, label=ys), num_boost_round=40)
    pred = booster.predict(xgb.DMatrix(np.array([row(i) for i in untried])))
    return untried[int(np.argmin(pred))]


def _same(actual: np.ndarray, expected: np.ndarray) -> bool:
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-6)
    return bool(np.allclose(actual, expected, rtol=1e-3, atol=1e-3 * scale, equal_nan=True))


class KernelSearch:
    """The knob search of one candidate kernel of one layer, one trial per :meth:`step`.

    Stepping all searches round-robin (what ``tune`` does) measures every hand schedule
    first and then improves every layer a little at a time, so a tune stopped early is still
    useful everywhere. Every trial is written to the records at once.
    """

    def __init__(self, candidate, layer, target, records, measurer, trials, progress, label):
        self.candidate, self.layer, self.target = candidate, layer, target
        self.records, self.measurer, self.progress, self.label = records, measurer, progress, label
        self.key = kernel_key(candidate, layer, target, measurer.machine)
        self.space = knob_space(candidate, layer, target)
        self.rec = records.get(self.key) or {
            "candidate": candidate,
            "layer": layer.name,
            "machine": measurer.machine,
            "target": str(target),
            "trials": [],
        }
        done = {json.dumps(t["knobs"], sort_keys=True): t for t in self.rec["trials"]}
        self.budget = min(trials, len(self.space))
        self.tried = {
            i: done[k].get("seconds")
            for i, s in enumerate(self.space)
            if (k := json.dumps(s, sort_keys=True)) in done
        }
        self.reused = len(self.tried) >= self.budget
        self.new_trials = 0
        self._x: np.ndarray | None = None
        self._reference: np.ndarray | None = None
        self._rng = random.Random(0)

    @property
    def done(self) -> bool:
        return len(self.tried) >= self.budget

    def _measure(self, knobs: dict):
        call = build_candidate(self.candidate, self.layer, self.target, knobs)
        return measure_kernel(self.measurer, call, self._x)

    def step(self) -> None:
        """Measure the next setting (the hand schedule first, then XGBoost's picks)."""
        if self._x is None:
            self._x = layer_input(self.layer)
        i = _next_index(self.space, self.tried, self._rng)
        knobs = self.space[i]
        entry: dict = {"knobs": knobs}
        try:
            seconds, out = self._measure(knobs)
            if self._reference is None and i != 0:  # every setting is checked against the
                _, self._reference = self._measure({})  # hand schedule's output
            if i == 0:
                self._reference = out
            elif not _same(out, self._reference):
                raise ValueError("output differs from the default schedule's")
            entry["seconds"] = seconds
        except Exception as err:  # noqa: BLE001 - a failing setting is recorded and skipped
            entry["error"] = str(err).strip().splitlines()[-1][:200] if str(err) else repr(err)
            seconds = None
        self.tried[i] = seconds
        self.new_trials += 1
        best = self.rec.get("best")
        if seconds is not None and (best is None or seconds < best["seconds"]):
            best = {"knobs": knobs, "seconds": seconds}
        self.rec["trials"].append(entry)
        self.rec.update(best=best, space=len(self.space))
        self.records.put(self.key, self.rec)
        shown = f"{seconds * 1e3:.4f} ms" if seconds is not None else "failed"
        best_ms = f"{best['seconds'] * 1e3:.4f} ms" if best else "-"
        self.progress(
            f"  {self.label}: trial {len(self.tried)}/{self.budget} {shown} "
            f"(best {best_ms}) {knobs or 'default'}"
        )

    def result(self) -> TaskResult:
        best = self.rec.get("best")
        default = next((t.get("seconds") for t in self.rec["trials"] if t["knobs"] == {}), None)
        return TaskResult(
            name=f"{self.layer.name}:{self.candidate}",
            kind="kernel",
            default_s=default,
            best_s=best["seconds"] if best else None,
            trials=len(self.tried) if self.reused else self.new_trials,
            reused=self.reused,
            knobs=best["knobs"] if best else None,
            layer=self.layer.name,
            candidate=self.candidate,
        )
