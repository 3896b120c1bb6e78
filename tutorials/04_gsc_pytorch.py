"""Tutorial 4: Numenta's sparse GSC CNN written in PyTorch, compiled by tvm-sparse straight from
the torch module, layer by layer.

Run it with ``.venv/bin/python tutorials/04_gsc_pytorch.py [--workdir DIR]``.

We write the network the way nupic.torch does: weight-sparse conv and linear layers (fixed masks,
here complementary masks from ``tvm_sparse.sparsify`` so the weights pack perfectly), BatchNorm
without affine parameters, and k-winners-take-all activations (global per sample, boosted, ties
win). ``tvm_sparse.compile(module, example_inputs=...)`` takes the module itself (through
``torch.export`` and TVM's importer); it finds the k-WTA pattern, rewrites each layer into a
sparse-sparse, sparse-dense or dense kernel, and we check it against the module's own output,
then through ``torch.compile(backend="tvm_sparse")``, then compare per-layer and end-to-end
times, and the whole network against its dense twin (exported to ONNX for onnxruntime;
``benchmarks/bench_gsc_twin.py`` does this with DeepSparse too, at batch 64 and all cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import tvm_sparse
from tvm_sparse.sparsify import complementary_mask
from tvm_sparse.timing import take_turns


class KWinners(nn.Module):
    """k-WTA over everything but the batch dim; ranks on boosted values, keeps unboosted ones.

    Ties follow nupic.torch's threshold form: every value >= the k-th largest wins.
    """

    def __init__(self, shape: tuple[int, ...], percent_on: float, boost_strength: float = 1.5):
        super().__init__()
        units = int(np.prod(shape))
        self.k = int(round(percent_on * units))
        duty = torch.rand(1, shape[0], *([1] * (len(shape) - 1))) * 2 * percent_on
        self.register_buffer("boost", torch.exp((percent_on - duty) * boost_strength))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        boosted = (x * self.boost).flatten(1)
        kth = torch.topk(boosted, self.k, dim=1).values[:, self.k - 1 :]
        return torch.where(boosted >= kth, flat, torch.zeros_like(flat)).view_as(x)


def sparse_(layer: nn.Module, density: float, seed: int) -> nn.Module:
    """Apply a fixed complementary mask to a layer's weight (what training would keep)."""
    mask = complementary_mask(tuple(layer.weight.shape), density, seed=seed)
    with torch.no_grad():
        layer.weight.mul_(torch.from_numpy(mask.astype(np.float32)))
    return layer


def gsc_super_sparse_cnn() -> nn.Module:
    """GSCSuperSparseCNN's shape: conv 50% / conv 20% / linear 1600->1500 at 5%;
    k-WTA 9.5% / 12.5% / 6.7%."""
    torch.manual_seed(0)
    return nn.Sequential(
        sparse_(nn.Conv2d(1, 64, 5), 0.5, seed=1),
        nn.BatchNorm2d(64, affine=False),
        KWinners((64, 28, 28), 0.095),
        nn.MaxPool2d(2),
        sparse_(nn.Conv2d(64, 64, 5), 0.2, seed=2),
        nn.BatchNorm2d(64, affine=False),
        KWinners((64, 10, 10), 0.125),
        nn.MaxPool2d(2),
        nn.Flatten(),
        sparse_(nn.Linear(1600, 1500), 0.05, seed=3),
        nn.BatchNorm1d(1500, affine=False),
        KWinners((1500,), 0.067),
        nn.Linear(1500, 12),
    )


def gsc_dense_twin() -> nn.Module:
    """The same topology with every weight kept and ReLU where k-WTA was: what "sparsity
    buys Nx" is measured against."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 64, 5),
        nn.BatchNorm2d(64, affine=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5),
        nn.BatchNorm2d(64, affine=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1600, 1500),
        nn.BatchNorm1d(1500, affine=False),
        nn.ReLU(),
        nn.Linear(1500, 12),
    )


def calibrate(net: nn.Module) -> nn.Module:
    """Give BatchNorm realistic statistics (a few training batches); returned in eval mode."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 32, 32))
    return net.eval()


def export(net: nn.Module, path: str) -> str:
    """The ONNX file onnxruntime runs (batch 1)."""
    torch.onnx.export(
        net,
        (torch.randn(1, 1, 32, 32),),
        path,
        input_names=["input"],
        output_names=["output"],
        opset_version=17,
        dynamo=False,
    )
    return path


def main(workdir: str) -> None:
    # Step 1. Build the network in PyTorch and give BatchNorm realistic statistics.
    net = calibrate(gsc_super_sparse_cnn())
    x = torch.randn(1, 1, 32, 32)
    print("[1] built the GSC super-sparse CNN in PyTorch")

    # Step 2. What tvm-sparse sees: weight densities, complementary packing, k-WTA inputs.
    print(tvm_sparse.analyze(net, example_inputs=(x,)).table())

    # Step 3. Compile the module itself, sparse and dense-only; check both against its output.
    sparse = tvm_sparse.compile(net, "llvm", example_inputs=(x,))
    dense = tvm_sparse.compile(net, "llvm", example_inputs=(x,), sparse=False)
    with torch.no_grad():
        expected = net(x).numpy()
    xn = x.numpy()
    scale = float(np.abs(expected).max())
    for module in (sparse, dense):
        np.testing.assert_allclose(module.run(xn), expected, rtol=1e-3, atol=1e-3 * scale)
    print("[3] sparse and dense modules: output matches the torch module")

    # Step 3b. Or stay in PyTorch: torch.compile with the tvm_sparse backend.
    fast = torch.compile(net, backend="tvm_sparse", dynamic=False)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x).numpy(), expected, rtol=1e-3, atol=1e-3 * scale)
    print("[3b] torch.compile(backend='tvm_sparse'): output matches eager")

    # Step 4. Per-layer: what each layer got and its measured time against its dense kernel.
    print("[4] per layer (measured on this machine while compiling):")
    for layer in sparse.report.layers:
        dense_ms = layer.measured_ms.get("dense")
        chosen_ms = layer.measured_ms.get(layer.chosen)
        speedup = f"{dense_ms / chosen_ms:5.1f}x" if dense_ms and chosen_ms else "  -  "
        print(f"    {layer.name:24s} {layer.chosen:14s} {speedup} vs its dense kernel")

    # Step 5. End to end.
    t_sparse = sparse.benchmark(xn)["median_s"]
    t_dense = dense.benchmark(xn)["median_s"]
    print(
        f"[5] tvm-sparse {t_sparse * 1e3:.3f} ms, tvm dense {t_dense * 1e3:.3f} ms: "
        f"{t_dense / t_sparse:.1f}x from sparsity"
    )

    # Step 6. Against the dense twin (dense weights, ReLU for k-WTA) on onnxruntime and TVM,
    # timed in turns so every number comes from the same seconds of the machine.
    path = export(net, os.path.join(workdir, "gsc_torch.onnx"))
    twin_path = export(calibrate(gsc_dense_twin()), os.path.join(workdir, "gsc_twin.onnx"))
    twin_ort = ort.InferenceSession(twin_path, providers=["CPUExecutionProvider"])
    twin_tvm = tvm_sparse.compile(twin_path, "llvm", sparse=False)
    sparse_ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    timers = {
        "sparse on tvm-sparse": lambda: sparse.benchmark(xn, repeat=50)["median_s"],
        "sparse on onnxruntime": lambda: _ort_time(sparse_ort, xn),
        "dense twin on onnxruntime": lambda: _ort_time(twin_ort, xn),
        "dense twin on TVM": lambda: twin_tvm.benchmark(xn, repeat=50)["median_s"],
    }
    samples = take_turns(timers, rounds=5)
    twin = statistics.median(samples["dense twin on onnxruntime"])
    print("[6] the sparse network against its dense twin (batch 1, median of 5 rounds):")
    for name, times in samples.items():
        t = statistics.median(times)
        print(f"    {name:28s} {t * 1e3:7.3f} ms  {twin / t:5.1f}x the twin on onnxruntime")


def _ort_time(session: ort.InferenceSession, x: np.ndarray, runs: int = 50) -> float:
    """Median seconds of ``runs`` onnxruntime calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to write the files (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        main(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="tvm-sparse-tutorial-") as tmp:
            main(tmp)
