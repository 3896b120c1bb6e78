"""k-WTA: the radix-select kernel against TVM's topk lowering and onnxruntime's TopK.

Run:  TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kwta.py [--quick]

All three compute the same k-WTA on the same input ``models.kwta_model(shape, k)`` (onnxruntime
runs the ONNX; TVM imports it and compiles it with the default pipeline, topk lowered to a
sort; ours is that module after ``RewriteKwta``, i.e. one ``call_tir`` of the kernel), one
thread each, timed the same way in one process (medians of Python-loop calls), so the ratios
hold on a shared machine. Outputs are checked against onnxruntime before timing. The ``pool``
rows are the GSC CNN's KWinners2d (boosted per channel) followed by its 2x2 MaxPool, which
``RewriteKwta`` fuses into one ``kwta_maxpool`` kernel.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tvm import relax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import OrtRunner, median_time, print_table  # noqa: E402

from tvm_sparse import models  # noqa: E402
from tvm_sparse.frontend import import_model  # noqa: E402
from tvm_sparse.passes.canonicalize import canonicalize  # noqa: E402
from tvm_sparse.passes.rewrite_kwta import RewriteKwta  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402

# (per-sample shape, k, boosted k-WTA + 2x2 max-pool): the GSC (super) sparse CNN's k-WTAs, alone
# and as the network runs its two KWinners2d (boosted, then pooled)
CASES = [
    ((64, 28, 28), 4767, False),
    ((64, 10, 10), 800, False),
    ((1500,), 100, False),
    ((64, 28, 28), 4767, True),
    ((64, 10, 10), 800, True),
]


def _kwta_pool_model(shape, k: int) -> onnx.ModelProto:
    """``models.kwta_model`` (boosted per channel) followed by a 2x2 / stride-2 MaxPool."""
    model = models.kwta_model(shape, k, boosting=True)
    graph = model.graph
    out = graph.output[0]
    graph.node.append(helper.make_node("MaxPool", [out.name], ["pooled"], kernel_shape=[2, 2],
                                       strides=[2, 2]))  # fmt: skip
    pooled = [*shape[:2], shape[2] // 2, shape[3] // 2]
    graph.output.remove(out)
    graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, pooled))
    onnx.checker.check_model(model)
    return model


def _vm_call(mod: tvm.IRModule, target: tvm.target.Target, x: np.ndarray):
    ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    main = vm["main"]  # look the function up once: a lookup costs more than a small call
    arg = tvm.runtime.tensor(x)
    return lambda: main(arg)


def bench_case(shape, k: int, pool: bool, batch: int, target, min_time: float) -> dict:
    full = (batch, *shape)
    model = _kwta_pool_model(full, k) if pool else models.kwta_model(full, k)
    x = np.random.default_rng(0).standard_normal(full).astype(np.float32)
    mod = canonicalize(import_model(model).mod)
    ort = OrtRunner(model, threads=1)
    expected = ort.run(x)[0]
    row = {"n": int(np.prod(shape)), "k": k, "pool": "2x2" if pool else "-", "batch": batch}
    for label, m in (("tvm_topk_ms", mod), ("ours_ms", RewriteKwta(target)(mod))):
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
        bench_case(shape, k, pool, batch, target, min_time)
        for batch in batches
        for shape, k, pool in CASES
    ]
    print(f"k-WTA, {os.environ['TVM_NUM_THREADS']} thread(s), target {target}")
    columns = ["n", "k", "pool", "batch", "ours_ms", "tvm_topk_ms", "ort_ms", "vs_topk", "vs_ort"]
    print_table(rows, columns)


if __name__ == "__main__":
    main()
