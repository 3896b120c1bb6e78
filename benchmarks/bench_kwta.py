"""k-WTA: the radix-select kernel against TVM's topk lowering and onnxruntime's TopK.

Run:  TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kwta.py [--quick]

All three compute the same k-WTA on the same input ``models.kwta_model(shape, k)`` (onnxruntime
runs the ONNX; TVM imports it and compiles it with the default pipeline, topk lowered to a
sort; ours is that module after ``RewriteKwta``, i.e. one ``call_tir`` of the kernel), one
thread each, timed the same way in one process (medians of Python-loop calls), so the ratios
hold on a shared machine. Outputs are checked against onnxruntime before timing.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import OrtRunner, median_time, print_table  # noqa: E402

from tvm_sparse import models  # noqa: E402
from tvm_sparse.frontend import import_model  # noqa: E402
from tvm_sparse.passes.canonicalize import canonicalize  # noqa: E402
from tvm_sparse.passes.rewrite_kwta import rewrite_kwta  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402

# (per-sample shape, k): the three k-WTAs of the GSC (super) sparse CNN
CASES = [((64, 28, 28), 4767), ((64, 10, 10), 800), ((1500,), 100)]


def _vm_call(mod: tvm.IRModule, target: tvm.target.Target, x: np.ndarray):
    ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    main = vm["main"]  # look the function up once: a lookup costs more than a small call
    arg = tvm.runtime.tensor(x)
    return lambda: main(arg)


def bench_case(shape, k: int, batch: int, target, min_time: float) -> dict:
    full = (batch, *shape)
    model = models.kwta_model(full, k)
    x = np.random.default_rng(0).standard_normal(full).astype(np.float32)
    mod = canonicalize(import_model(model).mod)
    ort = OrtRunner(model, threads=1)
    expected = ort.run(x)[0]
    row = {"n": int(np.prod(shape)), "k": k, "batch": batch}
    for label, m in (("tvm_topk_ms", mod), ("ours_ms", rewrite_kwta(mod, target))):
        call = _vm_call(m, target, x)
        np.testing.assert_array_equal(call().numpy(), expected)
        row[label] = median_time(call, min_time=min_time) * 1e3
    row["ort_ms"] = ort.time(x, min_time=min_time) * 1e3
    row["vs_topk"] = row["tvm_topk_ms"] / row["ours_ms"]
    row["vs_ort"] = row["ort_ms"] / row["ours_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, shorter timing")
    args = parser.parse_args()
    target = resolve_target("llvm")
    batches = (1,) if args.quick else (1, 64)
    min_time = 0.2 if args.quick else 0.5
    rows = [
        bench_case(shape, k, batch, target, min_time) for batch in batches for shape, k in CASES
    ]
    print(f"k-WTA, {os.environ['TVM_NUM_THREADS']} thread(s), target {target}")
    columns = ["n", "k", "batch", "ours_ms", "tvm_topk_ms", "ort_ms", "vs_topk", "vs_ort"]
    print_table(rows, columns)


if __name__ == "__main__":
    main()
