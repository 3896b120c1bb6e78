"""Tuned vs untuned: every tuned kernel, the whole model, and how fast tuning converges.

    python benchmarks/bench_tuning.py [--threads 2] [--models mlp,gsc] [--trials 32]
    python benchmarks/bench_tuning.py --threads 1 --convergence [--seeds 20] [--budget 32]

``--convergence``: the learned search against random search on the batched CSR (panel) space,
the one larger than a tune's budget. Every setting of every layer in ``CONVERGENCE_LAYERS`` is
measured once (kept in ``--workdir`` as ``exhaustive.json``; a re-run replays it), then both
searches are replayed over those times for many seeds: random search draws settings in a random
order; the learned search (``tuning.search.next_index``) starts from a records directory holding
the other layers' earlier tunes (``--budget`` random trials each) and picks with its cost model.
Printed: per trial count, the share of (layer, seed) runs within 5% of the layer's best, and the
median trials each needs to get there.

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
    p.add_argument("--convergence", action="store_true", help="learned vs random search")
    p.add_argument("--seeds", type=int, default=20, help="--convergence: searches per layer")
    p.add_argument("--budget", type=int, default=32, help="--convergence: trials per search")
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


# (rows, outputs, inputs, density) of the CSR layers the convergence study tunes: MLP, BERT /
# MiniLM and GSC shapes at batch and sequence sizes where the panel kernel's space is searched
CONVERGENCE_LAYERS = [
    (64, 2048, 2048, 0.1), (128, 384, 384, 0.1), (128, 1536, 384, 0.1), (128, 384, 1536, 0.1),
    (64, 1024, 1024, 0.05), (32, 512, 2048, 0.2), (128, 768, 768, 0.1), (16, 1000, 1600, 0.1),
]  # fmt: skip


def _exhaustive(workdir: str) -> list[dict]:
    """Every setting of every convergence layer, timed once (cached in ``exhaustive.json``)."""
    import json

    from tvm_sparse.ir.layers import LINEAR, LayerSpec
    from tvm_sparse.schedules import tuning
    from tvm_sparse.schedules.tuning.features import layer_features
    from tvm_sparse.target import resolve_target

    path = os.path.join(workdir, "exhaustive.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    target = resolve_target("llvm")
    measurer = tuning.LocalMeasurer(target)
    tables = []
    for m, n, k, density in CONVERGENCE_LAYERS:
        rng = np.random.default_rng(m + n + k)
        weight = (rng.standard_normal((n, k)) * (rng.random((n, k)) < density)).astype(np.float32)
        layer = LayerSpec(index=0, kind=LINEAR, x_shape=(m, k), out_shape=(m, n), weight=weight,
                          bias=None, activation=None, x_var=None, tail_var=None,
                          name=f"{m}x{n}x{k}")  # fmt: skip
        space = tuning.knob_space("csr", layer, target)
        x = tuning.layer_input(layer)
        times = []
        for i, knobs in enumerate(space):
            call = tuning.build_candidate("csr", layer, target, knobs)
            seconds, _ = tuning.measure_kernel(measurer, call, x)
            times.append(seconds)
            print(
                f"  {layer.name}: {i + 1}/{len(space)} {seconds * 1e3:.4f} ms {knobs}", flush=True
            )
        features = layer_features(layer)
        tables.append({"layer": layer.name, "features": features, "space": space, "times": times})
        with open(path, "w") as f:
            json.dump(tables, f)
    return tables


def _trials_to_reach(times: list[float], order: list[int], best: float) -> int:
    """Trials until one within 5% of ``best`` has been measured (budget + 1 if never)."""
    for count, i in enumerate(order, 1):
        if times[i] <= 1.05 * best:
            return count
    return len(order) + 1


def _learned_order(table: dict, history, seed: int, budget: int) -> list[int]:
    import random

    from tvm_sparse.schedules.tuning.search import next_index

    rng = random.Random(seed)
    tried: dict[int, float] = {}
    order = []
    while len(order) < budget:
        i = next_index(table["space"], tried, rng, table["features"], history, budget)
        tried[i] = table["times"][i]
        order.append(i)
    return order


def _history(tables: list[dict], skip: int, seed: int, budget: int):
    """The other layers' earlier tunes: ``budget`` random trials each, the hand schedule first."""
    import math
    import random

    from tvm_sparse.schedules.tuning.features import trial_features

    rng = random.Random(1000 + seed)
    rows, labels = [], []
    for j, table in enumerate(tables):
        if j == skip:
            continue
        picks = rng.sample(range(1, len(table["space"])), min(budget, len(table["space"]) - 1))
        for i in picks:
            rows.append(trial_features(table["features"], table["space"][i]))
            labels.append(math.log(table["times"][i] / table["times"][0]))
    return rows, labels


def convergence(workdir: str) -> None:
    import random

    tables = _exhaustive(workdir)
    budget = ARGS.budget
    need = {"random": [], "learned": []}
    curves = {"random": np.zeros(budget), "learned": np.zeros(budget)}
    print(f"\n{'layer':18} {'space':>5} {'default/best':>12} {'random':>7} {'learned':>8}")
    for j, table in enumerate(tables):
        times, best = table["times"], min(table["times"])
        per_layer = {"random": [], "learned": []}
        for seed in range(ARGS.seeds):
            rest = list(range(1, len(times)))
            random.Random(seed).shuffle(rest)
            orders = {
                "random": ([0] + rest)[:budget],
                "learned": _learned_order(table, _history(tables, j, seed, budget), seed, budget),
            }
            for name, order in orders.items():
                count = _trials_to_reach(times, order, best)
                per_layer[name].append(count)
                need[name].append(count)
                curves[name][count - 1 :] += 1 if count <= budget else 0
        print(
            f"{table['layer']:18} {len(times):5d} {times[0] / best:12.3f} "
            f"{np.median(per_layer['random']):7.1f} {np.median(per_layer['learned']):8.1f}"
        )
    runs = len(tables) * ARGS.seeds
    print(f"\nshare of {runs} runs within 5% of the layer's best after t trials")
    print(f"{'t':>4} {'random':>7} {'learned':>8}")
    for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        if t <= budget:
            shares = [curves[name][t - 1] / runs for name in ("random", "learned")]
            print(f"{t:4d} {shares[0]:7.2f} {shares[1]:8.2f}")
    med = {k: float(np.median(v)) for k, v in need.items()}
    mean = {k: float(np.mean(v)) for k, v in need.items()}
    print(
        f"trials to within 5% (budget {budget}; not reached counts {budget + 1}): median random "
        f"{med['random']:.1f}, learned {med['learned']:.1f}; mean random {mean['random']:.2f}, "
        f"learned {mean['learned']:.2f}"
    )


def main() -> None:
    workdir = ARGS.workdir or tempfile.mkdtemp(prefix="tvm_sparse_tune_")
    if ARGS.convergence:
        convergence(workdir)
        return
    for name in ARGS.models.split(","):
        bench(name, workdir)


if __name__ == "__main__":
    main()
