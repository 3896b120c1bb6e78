"""``make demo``: compile generated sparse models, check them, print the report and the speedup.

    python -m tvm_sparse.demo [--model mlp|gsc|all] [--batch 1]

For each model: generate the ONNX file (pruned MLP; Numenta's GSC super-sparse CNN with BatchNorm
and k-WTA), compile it twice (sparse, and dense-only as the baseline), run both, check both
against onnxruntime on the same file (the dense reference), and print the per-layer report and
the measured times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from . import models
from .compiler import compile as compile_model
from .errors import TvmSparseError


def _ort_session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _time(fn, min_time: float = 0.3, min_runs: int = 5) -> float:
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_one(name: str, model, batch: int, threads: int, workdir: str) -> bool:
    """Compile, check and time one model; returns whether it matched the reference."""
    path = models.save(model, os.path.join(workdir, f"{name}.onnx"))
    x = (
        np.random.default_rng(0)
        .standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
        .astype(np.float32)
    )
    print(f"\n=== {name}: {path} (batch {batch}, {threads} thread(s)) ===")
    t0 = time.perf_counter()
    sparse = compile_model(path, "llvm")
    t1 = time.perf_counter()
    dense = compile_model(path, "llvm", sparse=False)
    print(f"compiled in {t1 - t0:.1f} s (sparse) and {time.perf_counter() - t1:.1f} s (dense)")
    session = _ort_session(path, threads)
    input_name = session.get_inputs()[0].name
    reference = session.run(None, {input_name: x})[0]
    ok = True
    for label, module in (("sparse", sparse), ("dense", dense)):
        out = module.run(x)
        err = float(np.max(np.abs(out - reference)) / max(np.max(np.abs(reference)), 1e-12))
        match = np.allclose(out, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())
        ok &= bool(match)
        verdict = "OK" if match else "MISMATCH"
        print(f"{label:6s} vs onnxruntime: max rel. error {err:.2e} -> {verdict}")
    print(sparse.report.table())
    t_sparse = sparse.benchmark(x)["median_s"]
    t_dense = dense.benchmark(x)["median_s"]
    t_ort = _time(lambda: session.run(None, {input_name: x}))
    print(
        f"time per batch: tvm-sparse {t_sparse * 1e3:.3f} ms | tvm dense {t_dense * 1e3:.3f} ms "
        f"| onnxruntime {t_ort * 1e3:.3f} ms"
    )
    print(
        f"speedup of tvm-sparse: {t_dense / t_sparse:.2f}x over dense TVM, "
        f"{t_ort / t_sparse:.2f}x over onnxruntime"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvm_sparse.demo")
    parser.add_argument("--model", choices=("mlp", "gsc", "all"), default="all")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    threads = int(os.environ.get("TVM_NUM_THREADS", "0")) or (os.cpu_count() or 1)
    # both engines on the same threads: unset, TVM's pool takes half the vCPUs on some
    # machines (1 of 2 on a 2-vCPU VM) while onnxruntime got all of them; set before the
    # pool starts (it reads the variable once, at its first parallel launch)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    chosen = {
        "mlp": lambda: models.pruned_mlp(layers=4, hidden=1024, density=0.1, batch=args.batch),
        "gsc": lambda: models.gsc_sparse_cnn(super_sparse=True, batch=args.batch),
    }
    names = list(chosen) if args.model == "all" else [args.model]
    ok = True
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-demo-") as workdir:
        try:
            for name in names:
                ok &= run_one(name, chosen[name](), args.batch, threads, workdir)
        except TvmSparseError as err:
            print(f"tvm-sparse: error: {err}", file=sys.stderr)
            return 2
    print("\ndemo:", "all outputs match onnxruntime" if ok else "MISMATCH against onnxruntime")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
