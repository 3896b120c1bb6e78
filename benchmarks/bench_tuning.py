"""Tuned vs untuned: every tuned kernel, the whole model, and how fast tuning converges.

    python benchmarks/bench_tuning.py [--threads 2] [--models mlp,gsc] [--trials 32]

Per model: compile untuned (the hand schedules, compile's own kernel choice), tune into a
fresh records directory, compile with the records, time both and check both against
onnxruntime. Per task: the hand-schedule (default) time and the tuned time. Convergence: after
every trial, the sum over layers of the best kernel time found so far; the report gives when it
first came within 10% of its final value (the 4-layer MLP should get there in <= 10 minutes).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="mlp,gsc")
    p.add_argument("--trials", type=int, default=32, help="most settings measured per task")
    p.add_argument("--workdir", help="records go here (default: a temp dir)")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before tvm is imported

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import OrtRunner  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse import models, tuner  # noqa: E402

BUILDERS = {
    "mlp": lambda: models.pruned_mlp(layers=4, hidden=2048, density=0.1, batch=1),
    "gsc": lambda: models.gsc_sparse_cnn(batch=1),
}
_TRIAL = re.compile(r"\] (\S+) (\S+): trial \d+/\d+ .*\(best ([\d.]+) ms\)")


class Convergence:
    """Progress lines -> (elapsed s, sum over layers of the best kernel ms so far).

    Tasks are tuned round-robin, so after the first round every layer has its hand-schedule
    time; the curve starts there (before it, the sum would miss layers).
    """

    def __init__(self):
        self.start = time.perf_counter()
        self.best: dict[tuple[str, str], float] = {}
        self.points: list[tuple[float, dict]] = []

    def __call__(self, line: str) -> None:
        match = _TRIAL.search(line)
        if match is not None:
            self.best[(match.group(1), match.group(2))] = float(match.group(3))
            self.points.append((time.perf_counter() - self.start, dict(self.best)))

    @property
    def curve(self) -> list[tuple[float, float]]:
        if not self.points:
            return []
        layers = {lay for lay, _ in self.points[-1][1]}
        out = []
        for t, best in self.points:
            per_layer: dict[str, float] = {}
            for (lay, _), ms in best.items():
                per_layer[lay] = min(ms, per_layer.get(lay, float("inf")))
            if set(per_layer) == layers:
                out.append((t, sum(per_layer.values())))
        return out


def _close(out: np.ndarray, ref: np.ndarray) -> bool:
    scale = max(float(np.abs(ref).max()), 1e-6)
    return bool(np.allclose(out, ref, rtol=1e-3, atol=1e-3 * scale))


def _compile_tuned(model, records: str):
    """Compile with the records: ``tuning_records`` applies both the kernel records (the tuned
    choice per layer) and the MetaSchedule database of the dense leftovers."""
    try:
        return tvm_sparse.compile(model, tuning_records=records), "kernels + leftovers"
    except tvm_sparse.TvmSparseError as err:  # compile's own use_records would reset an outer one
        print(f"  (records not applied: {err})")
        return tvm_sparse.compile(model), "none (records failed)"


def bench(name: str, workdir: str) -> None:
    model = BUILDERS[name]()
    x = (
        np.random.default_rng(0)
        .standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
        .astype(np.float32)
    )
    ref = OrtRunner(model, ARGS.threads).run([x])[0]
    print(f"\n== {name}: untuned compile")
    untuned = tvm_sparse.compile(model)
    records = os.path.join(workdir, name)
    conv = Convergence()
    print(f"== {name}: tune, {ARGS.trials} trials per task -> {records}")
    summary = tuner.tune(
        model, trials=ARGS.trials, records_dir=records, progress=lambda s: (conv(s), print(s))
    )
    print(summary.table())
    tuned, applied = _compile_tuned(model, records)
    rows = []
    for label, module in (("untuned", untuned), (f"tuned ({applied})", tuned)):
        ok = _close(module.run(x), ref)
        stats = module.benchmark(x, repeat=50, min_time=1.0)
        rows.append((label, stats["median_s"] * 1e3, ok))
    print(f"\n{name} whole model, batch 1, {ARGS.threads} threads")
    for label, ms, ok in rows:
        print(f"  {label:32} {ms:9.4f} ms  matches onnxruntime: {ok}")
    print(f"  speedup tuned / untuned: {rows[0][1] / rows[1][1]:.2f}x")
    print(tuned.report.table())
    curve = conv.curve
    if curve:
        first, final = curve[0][1], curve[-1][1]
        hit = next(t for t, v in curve if v <= 1.1 * final)
        sample = [(round(t), round(v, 4)) for t, v in curve[:: max(1, len(curve) // 12)]]
        print(
            f"  convergence (sum over layers of the best kernel ms): hand schedules {first:.4f} "
            f"ms at {curve[0][0]:.0f} s, final {final:.4f} ms at {curve[-1][0]:.0f} s, within 10% "
            f"of final from {hit:.0f} s\n  curve (s, ms): {sample}"
        )
    print(f"  whole tune: {summary.wall_s:.0f} s, {summary.trials} trials")


def main() -> None:
    workdir = ARGS.workdir or tempfile.mkdtemp(prefix="tvm_sparse_tune_")
    for name in ARGS.models.split(","):
        bench(name, workdir)


if __name__ == "__main__":
    main()
