"""The super-sparse GSC network against its dense twin, on every engine, in turns (#22).

    python benchmarks/bench_gsc_twin.py [--threads 1] [--batch 1] [--twin-batches 1]
                                        [--rounds 12] [--round-time 0.25] [--json out.json]

The sparse network (95%-zero linear, 50%/20% dense convs, k-WTA after every layer; the boosted
k-WTA form too) runs on tvm-sparse, onnxruntime and DeepSparse; its dense twin (same topology,
every weight kept, ReLU where k-WTA was: ``models.gsc_dense_twin``) runs on onnxruntime,
DeepSparse and TVM. Everything takes turns in rounds (``take_turns``), so a ratio compares times
from the same seconds of this shared machine. Each output is checked against onnxruntime on the
same file before it is timed.

The headline is ``x_twin``: the dense twin's best samples/s (over onnxruntime and DeepSparse, and
over ``--twin-batches``, so a dense engine runs at its best batch) divided by tvm-sparse's on the
sparse network at ``--batch``, median over rounds. ``--threads 0`` uses every core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="0: every core")
    p.add_argument("--batch", type=int, default=1, help="batch of the sparse network")
    p.add_argument(
        "--twin-batches", default=None, help="batches the dense twin runs at (default: --batch)"
    )
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--round-time", type=float, default=0.25)
    p.add_argument("--no-boost", action="store_true", help="skip the boosted k-WTA network")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--json", help="write the rows here too")
    return p.parse_args()


ARGS = _parse()
THREADS = ARGS.threads or os.cpu_count() or 1
os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before tvm is imported

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tvm  # noqa: E402
from harness import _module_timer, close  # noqa: E402
from machine_probe import machine_line  # noqa: E402
from peers import DeepSparseRunner, OrtRunner, print_table  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse import models  # noqa: E402
from tvm_sparse.timing import take_turns  # noqa: E402

PEER_LABELS = ("twin_ort", "twin_deepsparse")


def _inputs(batch: int) -> list[np.ndarray]:
    return [np.random.default_rng(0).standard_normal((batch, 1, 32, 32)).astype(np.float32)]


def _ort(path: str, inputs, batch: int, label: str, entries: dict) -> np.ndarray:
    """Time onnxruntime on ``path`` as ``label``; its output is the reference for the rest."""
    ort = OrtRunner(path, threads=THREADS)
    entries[label] = (ort.timer(inputs), batch)
    return ort.run(inputs)[0]


def _deepsparse(path: str, inputs, ref, batch: int, label: str, entries: dict, servers: list):
    """Time DeepSparse on ``path`` as ``label`` when its venv exists and its output is right."""
    if ARGS.no_deepsparse:
        return
    ds = DeepSparseRunner(path, threads=THREADS)
    outs = ds.start(inputs)
    if outs is None:
        return
    servers.append(ds)
    if close(outs[0], ref):
        entries[label] = (ds.time_for, batch)
    else:
        print(f"{label}: DeepSparse output differs from onnxruntime; not timed", file=sys.stderr)


def main() -> None:
    print(machine_line())
    print(f"threads {THREADS}, sparse batch {ARGS.batch}")
    workdir = tempfile.mkdtemp(prefix="gsc_twin_")
    twin_batches = [int(b) for b in (ARGS.twin_batches or str(ARGS.batch)).split(",")]
    entries: dict = {}  # label -> (timer(seconds) -> seconds a run, batch)
    servers: list = []
    modules: dict = {}

    sparse_models = {"sparse": models.gsc_sparse_cnn(super_sparse=True, batch=ARGS.batch)}
    if not ARGS.no_boost:
        sparse_models["sparse_boost"] = models.gsc_sparse_cnn(
            super_sparse=True, batch=ARGS.batch, boosting=True
        )
    inputs = _inputs(ARGS.batch)
    args = [tvm.runtime.tensor(a) for a in inputs]
    try:
        for name, model in sparse_models.items():
            path = models.save(model, os.path.join(workdir, f"{name}.onnx"))
            ref = _ort(path, inputs, ARGS.batch, f"{name}_ort", entries)
            module = tvm_sparse.compile(path, "llvm")
            modules[name] = module
            if not close(module.run(*inputs), ref):
                raise SystemExit(f"{name}: tvm-sparse output differs from onnxruntime")
            entries[f"{name}_tvm_sparse"] = (_module_timer(module, args), ARGS.batch)
            if name == "sparse":
                _deepsparse(path, inputs, ref, ARGS.batch, f"{name}_deepsparse", entries, servers)
        for b in twin_batches:
            path = models.save(
                models.gsc_dense_twin(batch=b), os.path.join(workdir, f"twin{b}.onnx")
            )
            tin = _inputs(b)
            suffix = "" if len(twin_batches) == 1 else f"_b{b}"
            ref = _ort(path, tin, b, f"twin_ort{suffix}", entries)
            _deepsparse(path, tin, ref, b, f"twin_deepsparse{suffix}", entries, servers)
            dense = tvm_sparse.compile(path, "llvm", sparse=False, measure=False)
            if close(dense.run(*tin), ref):
                targs = [tvm.runtime.tensor(a) for a in tin]
                entries[f"twin_tvm{suffix}"] = (_module_timer(dense, targs), b)
        samples = take_turns(
            {k: (lambda t=t: t(ARGS.round_time)) for k, (t, _) in entries.items()}, ARGS.rounds
        )
    finally:
        for ds in servers:
            ds.close()

    def per_sample(label: str) -> list[float]:
        return [t / entries[label][1] for t in samples[label]]

    twin = [k for k in samples if k.startswith(PEER_LABELS)]
    best_twin = [min(vals) for vals in zip(*(per_sample(k) for k in twin), strict=True)]
    rows = []
    for label in samples:
        ours = per_sample(label)
        rows.append(
            {
                "runtime": label,
                "batch": entries[label][1],
                "ms": statistics.median(samples[label]) * 1e3,
                "samples_per_s": 1.0 / statistics.median(ours),
                "x_twin": statistics.median(b / o for b, o in zip(best_twin, ours, strict=True)),
            }
        )
    print_table(rows, ["runtime", "batch", "ms", "samples_per_s", "x_twin"])
    print(
        "x_twin: the dense twin's best per-sample time (onnxruntime or DeepSparse, any of its "
        "batches) over this row's, median over rounds"
    )
    for name, module in modules.items():
        print(f"\n{name}: compile {module.compile_seconds.total():.1f} s")
        print(module.report)
    if ARGS.json:
        import json

        with open(ARGS.json, "w") as f:
            json.dump({"threads": THREADS, "rows": rows, "rounds_ms": samples}, f, indent=1)


if __name__ == "__main__":
    main()
