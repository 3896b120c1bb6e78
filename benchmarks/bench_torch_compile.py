"""torch.compile(backend="tvm_sparse") against the ONNX path's module, at batch 1, in turns.

For each model (the pruned 4x2048 MLP, pruned with ``torch.nn.utils.prune`` and its masks left
in place as a user leaves them; the GSC k-WTA CNN of the zoo at 90%) it times, in rotating
turns (``tvm_sparse.timing.take_turns``):

- ``eager``: the torch module itself (``torch.no_grad``);
- ``dynamo``: ``torch.compile(model, backend="tvm_sparse")`` called on a torch tensor: guards,
  DLPack in and out, the VM;
- ``onnx_run``: the module compiled from the ONNX export, ``module.run(numpy)`` (checks inputs,
  copies them in, copies the output out);
- ``dynamo_vm`` / ``onnx_vm``: each compiled module's VM ``main`` alone on a device tensor: the
  kernels without any calling convention.

The dynamo overhead is ``dynamo - dynamo_vm``. Every output is checked against eager first.

    TVM_NUM_THREADS=1 python benchmarks/bench_torch_compile.py [--rounds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peers import median_time  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse import torch_backend  # noqa: E402
from tvm_sparse.machine import cpu_model  # noqa: E402
from tvm_sparse.target import cpu_isa  # noqa: E402
from tvm_sparse.timing import take_turns  # noqa: E402
from tvm_sparse.torch_frontend import export_onnx_file  # noqa: E402
from tvm_sparse.zoo import gsc  # noqa: E402


def pruned_mlp(
    width: int = 2048, layers: int = 4, sparsity: float = 0.9, *, keep_hooks: bool = True
) -> nn.Module:
    """4 x Linear(2048, 2048) + ReLU, L1-pruned; the masks left as hooks (``keep_hooks``: what
    a user has mid-pruning; dynamo then replays ``weight = weight_orig * mask`` as graph
    outputs written back to the module on every call) or made final (``prune.remove``)."""
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for _ in range(layers):
        linear = nn.Linear(width, width)
        prune.l1_unstructured(linear, "weight", amount=sparsity)
        if not keep_hooks:
            prune.remove(linear, "weight")
        mods += [linear, nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    return {
        "mlp_4x2048_90_hooks": (pruned_mlp(), torch.randn(1, 2048)),
        "mlp_4x2048_90": (pruned_mlp(keep_hooks=False), torch.randn(1, 2048)),
        "gsc_kwta_90": (
            gsc.build("gsc_kwta_channel_boost", sparsity=0.9),
            torch.from_numpy(gsc._images(1, 0)),
        ),
    }


def bench(name: str, net: nn.Module, x: torch.Tensor, rounds: int, seconds: float) -> dict:
    torch._dynamo.reset()  # a second nn.Sequential would otherwise recompile with dynamic dims
    torch_backend.clear()
    with torch.no_grad():
        expected = net(x).numpy()
        compiled = torch.compile(net, backend="tvm_sparse", dynamic=False)
        out = compiled(x)  # compiles
    graphs = torch_backend.compiled_graphs()
    if len(graphs) != 1 or graphs[0].module is None:
        raise SystemExit(f"{name}: expected one compiled graph, got {graphs}")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx_file(net, (x,), os.path.join(tmp, "m.onnx"), ["input"])
        from_onnx = tvm_sparse.compile(path, "llvm")
    xn = x.numpy()
    scale = float(np.abs(expected).max()) or 1.0
    for label, got in (("dynamo", out.numpy()), ("onnx", from_onnx.run(xn))):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * scale, err_msg=label)

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn()

        return call

    calls = {
        "eager": no_grad(lambda: net(x)),
        "dynamo": no_grad(lambda: compiled(x)),
        "onnx_run": lambda: from_onnx.run(xn),
        "dynamo_vm": graphs[0].module.device_call(xn),
        "onnx_vm": from_onnx.device_call(xn),
    }
    timers = {k: (lambda fn=fn: median_time(fn, seconds, 3, warmup=1)) for k, fn in calls.items()}
    samples = take_turns(timers, rounds)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    row = {"model": name, **{f"{k}_ms": round(v, 4) for k, v in ms.items()}}
    row["dynamo_overhead_us"] = round((ms["dynamo"] - ms["dynamo_vm"]) * 1e3, 1)
    row["dynamo_x_onnx_run"] = round(ms["onnx_run"] / ms["dynamo"], 3)
    row["dynamo_x_onnx_vm"] = round(ms["onnx_vm"] / ms["dynamo"], 3)
    row["dynamo_x_eager"] = round(ms["eager"] / ms["dynamo"], 2)
    row["compile_s"] = round(graphs[0].compile_seconds, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--round-time", type=float, default=0.3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
    print(f"# {cpu_model()}, {cpu_isa('llvm').name}, "
          f"{os.environ['TVM_NUM_THREADS']} thread(s), batch 1", flush=True)  # fmt: skip
    rows = []
    for name, (net, x) in models().items():
        row = bench(name, net, x, args.rounds, args.round_time)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
