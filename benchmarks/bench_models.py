"""Whole-model benchmark: tvm-sparse vs TVM dense vs onnxruntime vs DeepSparse, in one run.

    python benchmarks/bench_models.py [--threads 1] [--models mlp,gsc,gsc_super] [--batches 1,64]
                                      [--rounds 24] [--round-time 0.25] [--measure]
                                      [--json out.json]

Every runtime runs the same ONNX file, is checked against onnxruntime's output, and is timed by
the same ``median_time`` loop (DeepSparse served from its own venv, same loop). The runtimes take
turns: ``--rounds`` rounds of ``--round-time`` seconds each, so a ratio compares two runtimes in
the same seconds of this shared, noisy machine (``harness.compare_runtimes``); ``x_*`` is the
median per-round ratio, ``x_deepsparse_range`` its min-max. The thread count must be fixed before
TVM is imported, so ``make bench`` runs this script once per thread count.

It also prints the machine's limits (``machine_probe``: CPU, ISA, FMA peak, memory bandwidth of
one core) and per model the time to stream its weights as plain CSR from memory
(``stream_mem_ms``) and from the cache that holds them (``stream_cache_ms``), and the vector ISA
each compiled kernel really uses (``kernel_isa``, from the library's disassembly).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="mlp,gsc,gsc_super")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--measure", choices=("auto", "all", "none"), default="auto")
    p.add_argument("--rounds", type=int, default=24, help="rounds in which the runtimes take turns")
    p.add_argument("--round-time", type=float, default=0.25, help="seconds per runtime per round")
    p.add_argument("--no-deepsparse", action="store_true")
    p.add_argument("--json", help="write the rows here too")
    return p.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # before tvm is imported

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RUNTIME_COLUMNS, compare_runtimes, report  # noqa: E402
from machine_probe import bandwidth_gbs, csr_bytes, isa_summary, kernel_isas, machine_line  # noqa: E402

from tvm_sparse import models  # noqa: E402

BUILDERS = {
    "mlp": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.1, batch=b),
    "mlp_dense": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=1.0, batch=b),
    "mlp_50": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.5, batch=b),
    "mlp_0": lambda b: models.pruned_mlp(layers=4, hidden=2048, density=0.0, batch=b),
    "gsc": lambda b: models.gsc_sparse_cnn(batch=b),
    "gsc_super": lambda b: models.gsc_sparse_cnn(super_sparse=True, batch=b),
}


def bench_one(name: str, batch: int, workdir: str) -> dict:
    model = BUILDERS[name](batch)
    path = models.save(model, os.path.join(workdir, f"{name}_b{batch}.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    row = {"model": name, "batch": batch}
    row.update(
        compare_runtimes(
            path,
            [x],
            ARGS.threads,
            ARGS.round_time,
            ARGS.measure,
            not ARGS.no_deepsparse,
            ARGS.rounds,
        )
    )
    module = row.pop("module")
    row["chosen"] = ",".join(layer.chosen for layer in module.report.layers)
    # the limits: the weights as plain CSR streamed from memory, and from the cache that holds
    # them (a model's weights stay in L3 between inferences when they fit)
    nbytes = csr_bytes(model)
    row["csr_mb"] = round(nbytes / 1e6, 2)
    row["stream_mem_ms"] = round(nbytes / bandwidth_gbs() / 1e6, 4)
    row["stream_cache_ms"] = round(nbytes / bandwidth_gbs("llvm", nbytes) / 1e6, 4)
    row["kernel_isa"] = isa_summary(kernel_isas(module))
    return row


def main() -> int:
    print(machine_line(), file=sys.stderr, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-bench-") as workdir:
        for name in ARGS.models.split(","):
            for batch in (int(b) for b in ARGS.batches.split(",")):
                print(f"... {name} batch {batch}", file=sys.stderr, flush=True)
                rows.append(bench_one(name, batch, workdir))
    columns = ["model", "batch", *RUNTIME_COLUMNS, "csr_mb", "stream_mem_ms", "stream_cache_ms",
               "chosen", "kernel_isa"]  # fmt: skip
    report(rows, columns, ARGS.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
