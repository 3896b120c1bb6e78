"""Whole-model benchmark: tvm-sparse vs TVM dense vs onnxruntime vs DeepSparse, in one run.

    python benchmarks/bench_models.py [--threads 1] [--models mlp,gsc,gsc_super] [--batches 1,64]
                                      [--measure] [--json out.json]

Every runtime runs the same ONNX file, is timed by the same ``median_time`` loop in this process
(DeepSparse in its own venv, same loop), and is checked against onnxruntime's output before its
time is reported. Ratios are what to read: the machine is shared and noisy. The thread count must
be fixed before TVM is imported, so ``make bench`` runs this script once per thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="mlp,gsc,gsc_super")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--measure", choices=("auto", "all", "none"), default="auto")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per runtime")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--json", help="write the rows here too")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before tvm is imported

import numpy as np  # noqa: E402
import tvm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import DeepSparseRunner, OrtRunner, median_time, print_table  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse import models  # noqa: E402

BUILDERS = {
    "mlp": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.1, batch=b),
    "mlp_dense": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=1.0, batch=b),
    "mlp_50": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.5, batch=b),
    "mlp_0": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.0, batch=b),
    "gsc": lambda b: models.gsc_sparse_cnn(batch=b),
    "gsc_super": lambda b: models.gsc_sparse_cnn(super_sparse=True, batch=b),
}


def _close(out: np.ndarray, ref: np.ndarray) -> bool:
    scale = max(float(np.abs(ref).max()), 1e-6)
    return bool(np.allclose(out, ref, rtol=1e-3, atol=1e-3 * scale))


def bench_one(name: str, batch: int, workdir: str) -> dict:
    model = BUILDERS[name](batch)
    path = models.save(model, os.path.join(workdir, f"{name}_b{batch}.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    row = {"model": name, "batch": batch, "threads": ARGS.threads}

    ort = OrtRunner(path, threads=ARGS.threads)
    ref = ort.run([x])[0]
    row["ort_ms"] = ort.time([x], min_time=ARGS.min_time) * 1e3

    t0 = time.perf_counter()
    measure = {"auto": "auto", "all": True, "none": False}[ARGS.measure]
    sparse = tvm_sparse.compile(path, "llvm", measure=measure)
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    dense = tvm_sparse.compile(path, "llvm", sparse=False)
    for label, module in (("tvm_sparse", sparse), ("tvm_dense", dense)):
        out = module.run(x)
        if not _close(out, ref):
            row[f"{label}_ms"] = "MISMATCH"
            continue
        main = module._main
        args = [tvm.runtime.tensor(x)]
        row[f"{label}_ms"] = median_time(lambda m=main, a=args: m(*a), ARGS.min_time) * 1e3
    row["chosen"] = ",".join(layer.chosen for layer in sparse.report.layers)

    if not ARGS.no_deepsparse:
        ds = DeepSparseRunner(path, threads=ARGS.threads)
        if ds.available:
            result = ds.run_and_time([x], min_time=ARGS.min_time)
            if result is not None:
                outs, seconds = result
                row["deepsparse_ms"] = seconds * 1e3 if _close(outs[0], ref) else "MISMATCH"
    ts = row.get("tvm_sparse_ms")
    if isinstance(ts, float):
        for peer in ("ort", "tvm_dense", "deepsparse"):
            value = row.get(f"{peer}_ms")
            if isinstance(value, float):
                row[f"x_{peer}"] = value / ts
    return row


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-bench-") as workdir:
        for name in ARGS.models.split(","):
            for batch in (int(b) for b in ARGS.batches.split(",")):
                print(f"... {name} batch {batch}", file=sys.stderr, flush=True)
                rows.append(bench_one(name, batch, workdir))
    columns = [
        "model",
        "batch",
        "threads",
        "tvm_sparse_ms",
        "tvm_dense_ms",
        "ort_ms",
        "deepsparse_ms",
        "x_ort",
        "x_deepsparse",
        "x_tvm_dense",
        "chosen",
    ]
    print_table(rows, columns)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
