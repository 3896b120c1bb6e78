"""The knob search of one kernel task: measure settings, keep the fastest, record every trial.

The builder's own default (the hand schedule) is always trial 0, and every other setting's
output is checked against it. A space no larger than the trial budget is measured whole. In a
larger one an XGBoost model picks the next setting: it is fitted on every trial of the same
kernel family in the records directory (this tune's other layers and earlier tunes alike), each
described by the layer and the knobs together (:mod:`.features`) and labelled with its time
relative to its layer's hand schedule, so it knows something before this layer's first trial.
``benchmarks/bench_tuning.py --convergence`` measures how many trials it saves over random
search.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np

from ...timing import take_turns
from ..measure_input import layer_input
from .features import feature_matrix, layer_features, trial_features
from .measure import measure_built, measure_kernel, measured_timer
from .records import kernel_key
from .results import TaskResult
from .space import build_candidate, knob_space

_MIN_ROWS = 6  # trials (of any layer) before the model guides the search
# the settings timed again, in turns with the hand schedule, before a best is recorded: a
# kernel's cold time moves 5-15% between measurements, so the fastest single trial of 32 is
# mostly the luckiest (an MLP layer's "1.17x" best was its own default knobs)
_CONFIRM_TOP = 3
_CONFIRM_ROUNDS = 5
_EXPLORE = 0.1  # share of picks left to chance, so a wrong model still sees the whole space


def fit_cost_model(rows: list[dict[str, float]], labels: list[float]):
    """An XGBoost regressor of log(time / hand-schedule time) on trial features; None when
    there are too few trials or no xgboost."""
    if len(rows) < _MIN_ROWS:
        return None
    try:
        import xgboost as xgb
    except ImportError:  # no cost model: random search over the same space
        return None
    names = sorted({k for r in rows for k in r})
    params = {"max_depth": 4, "eta": 0.3, "nthread": 1, "verbosity": 0}
    booster = xgb.train(
        params, xgb.DMatrix(feature_matrix(rows, names), label=np.array(labels)), 40
    )
    return booster, names


def predict(model, rows: list[dict[str, float]]) -> np.ndarray:
    import xgboost as xgb

    booster, names = model
    return booster.predict(xgb.DMatrix(feature_matrix(rows, names)))


def next_index(
    space: list[dict],
    tried: dict[int, float | None],
    rng: random.Random,
    layer: dict[str, float],
    history: tuple[list[dict[str, float]], list[float]] = ([], []),
    budget: int | None = None,
) -> int:
    """The next setting of ``space`` to measure: the hand schedule (index 0) first; the rest in
    order when the budget covers the space; else the cost model's pick (fitted on ``history``,
    the (features, relative log time) of other trials, plus this task's ``tried``), now and
    then a random one."""
    untried = [i for i in range(len(space)) if i not in tried]
    if 0 in untried:
        return 0
    if budget is None or budget >= len(space):
        return untried[0]
    rows, labels = list(history[0]), list(history[1])
    base = tried.get(0)
    if base:
        for i, seconds in tried.items():
            if seconds and i != 0:
                rows.append(trial_features(layer, space[i]))
                labels.append(math.log(seconds / base))
    model = fit_cost_model(rows, labels)
    if model is None or rng.random() < _EXPLORE:
        return rng.choice(untried)
    pred = predict(model, [trial_features(layer, space[i]) for i in untried])
    return untried[int(np.argmin(pred))]


def family_history(records, candidate: str, machine: str, skip_key: str | None = None):
    """(features, log relative time) of every timed trial of ``candidate`` on ``machine`` in the
    records (whose hand schedule was timed too), but the task ``skip_key``'s."""
    rows, labels = [], []
    for key, rec in records.records.items():
        if key == skip_key or rec.get("candidate") != candidate or "features" not in rec:
            continue
        if rec.get("machine") != machine:
            continue
        base = next((t.get("seconds") for t in rec["trials"] if t["knobs"] == {}), None)
        if not base:
            continue
        for trial in rec["trials"]:
            if trial.get("seconds") and trial["knobs"] != {}:
                rows.append(trial_features(rec["features"], trial["knobs"]))
                labels.append(math.log(trial["seconds"] / base))
    return rows, labels


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
        self.rec["features"] = layer_features(layer)
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

    def _measure(self, knobs: dict, measurer, builds):
        if builds is not None:
            built = builds.build(self.candidate, self.layer, self.target, knobs)
            return measure_built(measurer, built, self._x)
        call = build_candidate(self.candidate, self.layer, self.target, knobs)
        return measure_kernel(measurer, call, self._x)

    def step(self, measurer=None, builds=None) -> None:
        """Measure the next setting (the hand schedule first, then XGBoost's picks), on
        ``measurer`` (a device of the same kind as the search's own; default: its own), built
        here or by ``builds`` (a ``build_pool.BuildPool``)."""
        measurer = measurer or self.measurer
        if self._x is None:
            self._x = layer_input(self.layer)
        history = ([], [])
        if self.budget < len(self.space):  # only a partial search needs the model
            with self.records.lock:
                history = family_history(self.records, self.candidate, self.measurer.machine,
                                         self.key)  # fmt: skip
        i = next_index(self.space, self.tried, self._rng, self.rec["features"], history,
                       self.budget)  # fmt: skip
        knobs = self.space[i]
        entry: dict = {"knobs": knobs}
        try:
            seconds, out = self._measure(knobs, measurer, builds)
            if self._reference is None and i != 0:  # every setting is checked against the
                _, self._reference = self._measure({}, measurer, builds)  # hand schedule's
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
        with self.records.lock:  # another thread may be writing every record to the file
            self.rec["trials"].append(entry)
            self.rec.update(best=best, space=len(self.space))
            self.records.put(self.key, self.rec)
        shown = f"{seconds * 1e3:.4f} ms" if seconds is not None else "failed"
        best_ms = f"{best['seconds'] * 1e3:.4f} ms" if best else "-"
        self.progress(
            f"  {self.label}: trial {len(self.tried)}/{self.budget} {shown} "
            f"(best {best_ms}) {knobs or 'default'}"
        )

    def confirm(self, rounds: int = _CONFIRM_ROUNDS, top: int = _CONFIRM_TOP) -> None:
        """Time the hand schedule and the ``top`` fastest other settings again, in turns, and
        record the one with the lowest median as the best (``best["confirmed"]``), with the
        hand schedule's median as ``default_s``: the single trials' minimum is biased low."""
        if self.reused or (self.rec.get("best") or {}).get("confirmed"):
            return
        timed = sorted((t["seconds"], json.dumps(t["knobs"], sort_keys=True))
                       for t in self.rec["trials"] if t.get("seconds"))  # fmt: skip
        picks = [k for _, k in timed if k != "{}"]
        picks = ["{}"] + list(dict.fromkeys(picks))[:top]
        if self._x is None:
            self._x = layer_input(self.layer)
        timers = {}
        for text in picks:
            try:
                call = build_candidate(self.candidate, self.layer, self.target, json.loads(text))
                timers[text] = measured_timer(self.measurer, call, self._x)[0]
            except Exception:  # noqa: BLE001 - it measured once; now it fails: not the best
                continue
        if "{}" not in timers:
            return
        medians = {k: float(np.median(v)) for k, v in take_turns(timers, rounds).items()}
        best = min(medians, key=medians.get)
        self.rec["best"] = {"knobs": json.loads(best), "seconds": medians[best], "confirmed": True}
        self.rec["default_s"] = medians["{}"]
        self.records.put(self.key, self.rec)

    def result(self) -> TaskResult:
        best = self.rec.get("best")
        default = self.rec.get("default_s") or next(
            (t.get("seconds") for t in self.rec["trials"] if t["knobs"] == {}), None
        )
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
