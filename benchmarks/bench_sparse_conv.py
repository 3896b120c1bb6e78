"""The direct sparse conv on the GSC super-sparse CNN's convs, against its dense peers.

Run:  TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparse_conv.py [--layer cnn2|cnn1]

Layers (nupic.torch GSCSuperSparseCNN, batch 1): cnn1 = [1,1,32,32] * [64,1,5,5] at 50 % weights,
cnn2 = [1,64,14,14] * [64,64,5,5] at 20 % weights (random masks), no padding, bias. Each sparse
conv layout ("wide", "flat", with its knobs) runs next to onnxruntime's dense Conv and TVM's dense
conv kernel in one process with one timer (``peers.median_time``), so the ratios hold on a shared
machine. ``cyc/nnz`` is the kernel's time in cycles (at ``--ghz``) per non-zero weight: the floor
is ceil(positions / 8) / 2 (one 8-lane FMA per output vector, two FMA pipes).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from peers import OrtRunner, median_time, print_table  # noqa: E402

from tvm_sparse.schedules.dense_x86 import dense_conv2d  # noqa: E402
from tvm_sparse.schedules.kernel import build_kernel  # noqa: E402
from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402

LAYERS = {
    "cnn1": ((1, 1, 32, 32), (64, 1, 5, 5), 0.5),
    "cnn2": ((1, 64, 14, 14), (64, 64, 5, 5), 0.2),
}
# (label, sparse_conv2d keyword arguments)
VARIANTS = [
    ("wide", {"layout": "wide"}),
    ("flat", {"layout": "flat"}),
]


def ort_conv(x_shape, weight: np.ndarray, bias: np.ndarray) -> OrtRunner:
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=list(weight.shape[2:]))
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    return OrtRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def tvm_runner(call, target, x):
    """A zero-argument callable running the kernel on fixed tensors, and a fetch of its output."""
    fn = build_kernel(call, target)["main"]
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=call.out_dtype), dev)
    return (lambda: fn(*args, out)), (lambda: out.numpy())


def bench_layer(name: str, variants, target, ghz: float, min_time: float) -> list[dict]:
    x_shape, w_shape, density = LAYERS[name]
    rng = np.random.default_rng(0)
    mask = rng.random(w_shape) < density
    w = (rng.standard_normal(w_shape) * mask).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    ort = ort_conv(x_shape, w, bias)
    ref = ort.run(x)[0]
    nnz = int(np.count_nonzero(w))
    rows = [{"layer": name, "kernel": "ort dense", "us": ort.time(x, min_time) * 1e6}]
    run, fetch = tvm_runner(dense_conv2d(x_shape, w, bias, target=target), target, x)
    run()
    err = float(np.abs(fetch() - ref).max())
    rows.append({"layer": name, "kernel": "tvm dense", "us": median_time(run, min_time) * 1e6,
                 "err": err})  # fmt: skip
    for label, kwargs in variants:
        try:
            call = sparse_conv2d(x_shape, w, bias, target=target, **kwargs)
        except (TypeError, ValueError) as exc:
            rows.append({"layer": name, "kernel": label, "note": str(exc)[:60]})
            continue
        run, fetch = tvm_runner(call, target, x)
        run()
        err = float(np.abs(fetch() - ref).max())
        sec = median_time(run, min_time)
        cycles = sec * ghz * 1e9 / nnz
        note = str(call.info.get("tile"))
        rows.append({"layer": name, "kernel": label, "us": sec * 1e6, "err": err,
                     "cyc/nnz": cycles, "note": note})  # fmt: skip
    base = rows[0]["us"]
    for r in rows:
        if "us" in r:
            r["x ort"] = base / r["us"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=sorted(LAYERS), action="append")
    parser.add_argument("--ghz", type=float, default=3.2, help="core clock for cyc/nnz")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
    args = parser.parse_args()
    target = resolve_target("llvm")
    print(f"target {target}  TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
    rows = []
    for name in args.layer or ["cnn2", "cnn1"]:
        rows += bench_layer(name, VARIANTS, target, args.ghz, args.min_time)
    print_table(rows, ["layer", "kernel", "us", "x ort", "cyc/nnz", "err", "note"])


if __name__ == "__main__":
    main()
