"""CUDA, whole models: pruned MLPs compiled by tvm-sparse vs plain TVM (its default CUDA pipeline,
dlight schedules) vs PyTorch eager on cuBLAS, same weights, in turns.

Needs a CUDA GPU; exits with a message without one. Every output is checked against onnxruntime
(CPU) before it is timed.

    .venv/bin/python benchmarks/bench_cuda_models.py [--batches 1 64] [--densities 0.1 0.05]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from functools import partial

import numpy as np


def _median_seconds(call, sync, min_time: float = 0.3, rounds: int = 5) -> float:
    """Median over rounds of the mean time of back-to-back calls (GPU synchronised per round)."""
    call()
    sync()
    per_round = []
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_time / rounds or n < 10:
            call()
            n += 1
        sync()
        per_round.append((time.perf_counter() - start) / n)
    return float(np.median(per_round))


def _torch_mlp(model, device):
    """The ONNX MLP's Gemm/Relu chain as torch modules with the same weights."""
    import torch
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            w, b = inits[node.input[1]], inits[node.input[2]]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.from_numpy(w.copy())
            lin.bias.data = torch.from_numpy(b.copy())
            layers.append(lin)
        elif node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import onnxruntime as ort
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_sparse
    from tvm_sparse import models
    from tvm_sparse.target import resolve_target

    if not tvm.cuda(0).exist:
        print("bench_cuda_models: no CUDA GPU on this machine; nothing run.")
        return 2
    if importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    dev = tvm.cuda(0)
    target = resolve_target("cuda")
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch as _torch

        torch = _torch if _torch.cuda.is_available() else None
    print(f"GPU: {torch.cuda.get_device_name(0) if torch else target.attrs['arch']}, "
          f"TVM {tvm.__version__}, MLP {args.layers}x{args.hidden}")  # fmt: skip
    print(
        f"{'density':>7s} {'batch':>5s} {'engine':22s} {'us':>9s} {'vs TVM':>7s} {'vs torch':>8s}"
    )
    for density in args.densities:
        for batch in args.batches:
            model = models.pruned_mlp(args.layers, args.hidden, density=density, batch=batch)
            x = np.random.default_rng(0).standard_normal((batch, args.hidden)).astype(np.float32)
            sess = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            rows: dict[str, float | str] = {}

            t0 = time.perf_counter()
            ours = tvm_sparse.compile(model, "cuda")
            ours_compile = time.perf_counter() - t0
            got = np.asarray(ours.run(x))
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
            xs = tvm.runtime.tensor(x, dev)
            rows["tvm-sparse"] = _median_seconds(partial(ours._main, xs), dev.sync)
            chosen = ",".join(sorted({r.chosen for r in ours.report.layers}))

            t0 = time.perf_counter()
            plain = tvm.compile(from_onnx(model, keep_params_in_input=False), target=target)
            plain_compile = time.perf_counter() - t0
            vm = tvm.relax.VirtualMachine(plain, dev)
            np.testing.assert_allclose(vm["main"](xs).numpy(), want, rtol=1e-3, atol=1e-3)
            rows["plain TVM (dlight)"] = _median_seconds(partial(vm["main"], xs), dev.sync)

            if torch is not None:
                net = _torch_mlp(model, "cuda")
                xt = torch.from_numpy(x).cuda()
                with torch.no_grad():
                    np.testing.assert_allclose(net(xt).cpu().numpy(), want, rtol=1e-3, atol=1e-3)
                    rows["torch eager (cuBLAS)"] = _median_seconds(
                        partial(net, xt), torch.cuda.synchronize
                    )
            base_tvm = rows["plain TVM (dlight)"]
            base_torch = rows.get("torch eager (cuBLAS)")
            for name, sec in rows.items():
                vs_torch = f"{base_torch / sec:7.2f}x" if base_torch else "-"
                print(f"{density:7.0%} {batch:5d} {name:22s} {sec * 1e6:9.1f} "
                      f"{base_tvm / sec:6.2f}x {vs_torch:>8s}")  # fmt: skip
            print(f"        compile: tvm-sparse {ours_compile:.1f} s ({chosen}), "
                  f"plain TVM {plain_compile:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
