"""CUDA: a 95%-sparse 4096x4096 linear at batch 1, sparse kernels vs TVM dense (dlight) vs cuBLAS.

Needs a CUDA GPU; exits with a message without one. cuBLAS is reached through torch when a CUDA
build of torch is installed (skipped otherwise). TVM compiles CUDA with NVRTC (``cuda-bindings``)
or, when that is absent, with ``nvcc`` (``TVM_CUDA_COMPILE_MODE=nvcc``, set here).

    .venv/bin/python benchmarks/bench_cuda.py [--n 4096] [--k 4096] [--density 0.05] [--batch 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np


def _time_tvm(call, w, x, dev, target) -> tuple[float, float]:
    """Median seconds per call and the max abs error against float64 numpy."""
    import tvm

    func = call.func.with_attr("global_symbol", "main")
    mod = tvm.compile(tvm.IRModule({"main": func}), target=target).jit()
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, np.float32), dev)
    timer = mod.time_evaluator("main", dev, number=100, repeat=5, min_repeat_ms=50)
    result = float(np.median(timer(*args, out).results))
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    err = float(np.abs(out.numpy() - want).max())
    return result, err


def _time_cublas(w: np.ndarray, x: np.ndarray) -> tuple[float, float] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    wt, xt = torch.from_numpy(w).cuda(), torch.from_numpy(x).cuda()
    for _ in range(10):
        torch.nn.functional.linear(xt, wt)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(100):
            y = torch.nn.functional.linear(xt, wt)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 100 / 1e3)
    err = float(np.abs(y.cpu().numpy() - x.astype(np.float64) @ w.T).max())
    return float(np.median(times)), err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--x-density", type=float, default=0.1, help="for sparse-sparse")
    args = parser.parse_args()

    import tvm

    if not tvm.cuda(0).exist:
        print("bench_cuda: no CUDA GPU on this machine (tvm.cuda(0).exist is False); nothing run.")
        return 2
    if importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")

    from tvm_sparse.schedules import dense_cuda
    from tvm_sparse.schedules import sparse_cuda as sc

    dev = tvm.cuda(0)
    arch = "sm_" + dev.compute_version.replace(".", "")
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    rng = np.random.default_rng(0)
    w = rng.standard_normal((args.n, args.k)).astype(np.float32)
    w *= rng.random(w.shape) < args.density
    x = rng.standard_normal((args.batch, args.k)).astype(np.float32)
    xs = x * (rng.random(x.shape) < args.x_density)

    rows = []
    builds = [
        ("tvm dense (dlight)", lambda: dense_cuda.dense_linear(args.batch, w, target=target), x),
        ("csr (sparse_cuda)", lambda: sc.csr_linear(args.batch, w, target=target), x),
        ("bsr4x1 (sparse_cuda)", lambda: sc.bsr_linear(args.batch, w, (4, 1), target=target), x),
        (
            f"sparse-sparse, x {args.x_density:.0%} dense",
            lambda: sc.sparse_sparse_linear(args.batch, w, target=target),
            xs,
        ),
    ]
    for name, build, inp in builds:
        try:
            seconds, err = _time_tvm(build(), w, inp, dev, target)
            rows.append((name, seconds, err))
        except Exception as exc:  # noqa: BLE001 - report the failure, keep benchmarking
            rows.append((name, None, f"failed: {str(exc).splitlines()[-1][:60]}"))
    cublas = _time_cublas(w, x)
    rows.append(
        ("cuBLAS (torch)", *cublas) if cublas else ("cuBLAS (torch)", None, "no CUDA torch")
    )

    dense_s = rows[0][1]
    print(f"{args.n}x{args.k} linear, weight density {args.density:.0%}, batch {args.batch}, "
          f"{dev.device_name if hasattr(dev, 'device_name') else arch}")  # fmt: skip
    print(f"{'kernel':34s} {'us':>10s} {'vs dense':>9s}  max abs err")
    for name, seconds, err in rows:
        if seconds is None:
            print(f"{name:34s} {'-':>10s} {'-':>9s}  {err}")
            continue
        ratio = f"{dense_s / seconds:8.2f}x" if dense_s else "-"
        print(f"{name:34s} {seconds * 1e6:10.1f} {ratio:>9s}  {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
