"""Sparse-dense kernels against onnxruntime's dense Gemm / Conv on the same weights.

Run:  TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparse_kernels.py [--quick] [--cold]

Both sides run one thread and are timed the same way (a Python loop of calls, median of
repeats), in one process, so the ratios hold on a shared, noisy machine. ``--cold`` adds a
column where a 64 MiB buffer is rewritten before every call, so the weights come from DRAM
instead of the L3 cache (what a deployed model whose weights exceed the cache sees).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tvm_sparse.schedules.kernel import build_kernel, run_kernel  # noqa: E402
from tvm_sparse.schedules.sparse_x86 import bsr_linear, csr_linear, sparse_conv2d  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402

_FLUSH = np.zeros((64 << 20) // 4, dtype=np.float32)  # 64 MiB > the 32 MiB L3


def _session(graph: onnx.GraphProto) -> ort.InferenceSession:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_gemm(m: int, weight: np.ndarray) -> ort.InferenceSession:
    n, k = weight.shape
    node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "W")],
    )
    return _session(graph)


def ort_conv(x_shape, weight: np.ndarray) -> ort.InferenceSession:
    node = helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=list(weight.shape[2:]))
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "W")],
    )
    return _session(graph)


def _median_time(fn, cold: bool, min_s: float = 0.1, repeat: int = 7) -> float:
    if cold:  # each flush costs milliseconds: fewer timed calls
        min_s, repeat = 0.02, 3
    for _ in range(3):
        fn()
    results = []
    for _ in range(repeat):
        total, calls = 0.0, 0
        while total < min_s:
            if cold:
                np.add(_FLUSH, 1.0, out=_FLUSH)
            start = time.perf_counter()
            fn()
            total += time.perf_counter() - start
            calls += 1
        results.append(total / calls)
    return float(np.median(results))


def _tvm_runner(call, target, x):
    module = build_kernel(call, target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=call.out_dtype), dev)
    fn = module["main"]
    return (lambda: fn(*args, out)), (lambda: out.numpy())


def sparse_weight(rng, shape, density: float, block=(1, 1)) -> np.ndarray:
    """Random weight whose (r, c) blocks are kept with probability ``density``."""
    r, c = block
    grid = rng.random((-(-shape[0] // r), -(-shape[1] // c))) < density
    mask = np.kron(grid, np.ones((r, c), dtype=bool))[: shape[0], : shape[1]]
    return (rng.standard_normal(shape) * mask).astype(np.float32)


def bench_linear(rng, target, m, density, block, cold_col):
    weight = sparse_weight(rng, (2048, 2048), density, block)
    x = rng.standard_normal((m, 2048)).astype(np.float32)
    if block == (1, 1):
        call = csr_linear(m, weight, target=target)
    else:
        call = bsr_linear(m, weight, block, target=target)
    run, fetch = _tvm_runner(call, target, x)
    run()
    err = float(np.abs(fetch() - x @ weight.T).max())
    sess = ort_gemm(m, weight)
    feed = {"x": x}
    row = {
        "case": f"linear 2048^2 d={density:.0%} {'csr' if block == (1, 1) else f'bsr{block}'}",
        "m": m,
        "kernel": call.info["kernel"],
        "tvm_ms": _median_time(run, False) * 1e3,
        "ort_ms": _median_time(lambda: sess.run(None, feed), False) * 1e3,
        "err": err,
        "wbytes": call.info["weight_bytes"],
    }
    if cold_col:
        row["tvm_cold_ms"] = _median_time(run, True) * 1e3
        row["ort_cold_ms"] = _median_time(lambda: sess.run(None, feed), True) * 1e3
    return row


def bench_conv(rng, target, x_shape, w_shape, density, cold_col):
    weight = sparse_weight(rng, (w_shape[0], int(np.prod(w_shape[1:]))), density).reshape(w_shape)
    x = rng.standard_normal(x_shape).astype(np.float32)
    call = sparse_conv2d(x_shape, weight, target=target)
    run, fetch = _tvm_runner(call, target, x)
    sess = ort_conv(x_shape, weight)
    feed = {"x": x}
    err = float(np.abs(run_kernel(call, target, x) - sess.run(None, feed)[0]).max())
    row = {
        "case": f"conv {x_shape}x{w_shape[2:]} {w_shape[1]}->{w_shape[0]} d={density:.0%}",
        "m": x_shape[0],
        "kernel": call.info["kernel"],
        "tvm_ms": _median_time(run, False) * 1e3,
        "ort_ms": _median_time(lambda: sess.run(None, feed), False) * 1e3,
        "err": err,
        "wbytes": call.info["weight_bytes"],
    }
    if cold_col:
        row["tvm_cold_ms"] = _median_time(run, True) * 1e3
        row["ort_cold_ms"] = _median_time(lambda: sess.run(None, feed), True) * 1e3
    return row


def ort_mlp(weights: list[np.ndarray]) -> ort.InferenceSession:
    names = ["x"] + [f"h{i}" for i in range(1, len(weights))] + ["y"]
    nodes = [
        helper.make_node("Gemm", [names[i], f"W{i}"], [names[i + 1]], transB=1)
        for i in range(len(weights))
    ]
    m_k = [1, weights[0].shape[1]]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, m_k)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, f"W{i}") for i, w in enumerate(weights)],
    )
    return _session(graph)


def bench_mlp(rng, target, density, cold_col, layers=4, width=2048):
    """Batch-1 MLP of ``layers`` Gemm(width): 64 MiB of dense fp32 weights exceed the L3."""
    weights = [sparse_weight(rng, (width, width), density) for _ in range(layers)]
    dev = tvm.cpu()
    steps = []
    acts = [tvm.runtime.tensor(np.zeros((1, width), np.float32), dev) for _ in range(layers + 1)]
    for i, w in enumerate(weights):
        call = csr_linear(1, w, target=target)
        fn = build_kernel(call, target)["main"]
        consts = [tvm.runtime.tensor(c, dev) for c in call.consts]
        steps.append((fn, [acts[i], *consts, acts[i + 1]]))

    def run():
        for fn, args in steps:
            fn(*args)

    x = rng.standard_normal((1, width)).astype(np.float32)
    acts[0].copyfrom(x)
    run()
    ref = x
    for w in weights:
        ref = ref @ w.T
    sess = ort_mlp(weights)
    feed = {"x": x}
    row = {
        "case": f"mlp {layers}x{width} d={density:.0%} csr",
        "m": 1,
        "kernel": "csr_rows",
        "tvm_ms": _median_time(run, False) * 1e3,
        "ort_ms": _median_time(lambda: sess.run(None, feed), False) * 1e3,
        "err": float(np.abs(acts[-1].numpy() - ref).max() / max(np.abs(ref).max(), 1e-30)),
        "wbytes": 0,
    }
    if cold_col:
        row["tvm_cold_ms"] = _median_time(run, True) * 1e3
        row["ort_cold_ms"] = _median_time(lambda: sess.run(None, feed), True) * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the headline cases")
    parser.add_argument("--cold", action="store_true", help="add cache-flushed timings")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    target = resolve_target("llvm")
    print(
        f"target {target}  TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}  ort {ort.__version__}"
    )
    cases = [(1, 0.1, (1, 1)), (64, 0.1, (1, 1)), (1, 0.5, (1, 1)), (64, 0.5, (1, 1))]
    if not args.quick:
        cases += [(16, 0.1, (1, 1)), (8, 0.1, (1, 1)), (3, 0.1, (1, 1))]
        cases += [(m, 0.1, blk) for blk in ((1, 8), (8, 1), (16, 1)) for m in (1, 64)]
    rows = [bench_mlp(rng, target, 0.1, args.cold)]
    rows += [bench_linear(rng, target, m, d, blk, args.cold) for m, d, blk in cases]
    rows.append(bench_conv(rng, target, (1, 64, 14, 14), (64, 64, 5, 5), 0.2, args.cold))
    rows.append(bench_conv(rng, target, (1, 1, 32, 32), (64, 1, 5, 5), 0.5, args.cold))

    head = f"{'case':44} {'m':>3} {'kernel':11} {'tvm ms':>8} {'ort ms':>8} {'x ort':>6}"
    head += f" {'GB/s':>6}" + (
        f" {'tvm cold':>9} {'ort cold':>9} {'x cold':>6}" if args.cold else ""
    )
    print(head + "  max|err|")
    for r in rows:
        line = f"{r['case']:44} {r['m']:>3} {r['kernel']:11} {r['tvm_ms']:8.3f} {r['ort_ms']:8.3f}"
        line += f" {r['ort_ms'] / r['tvm_ms']:6.2f} {r['wbytes'] / r['tvm_ms'] / 1e6:6.1f}"
        if args.cold:
            ratio = r["ort_cold_ms"] / r["tvm_cold_ms"]
            line += f" {r['tvm_cold_ms']:9.3f} {r['ort_cold_ms']:9.3f} {ratio:6.2f}"
        print(line + f"  {r['err']:.1e}")
    print("GB/s = weight bytes (values + indices + row pointers) / tvm time (hot cache)")
    print("mlp max|err| is relative to the output's largest magnitude")


if __name__ == "__main__":
    main()
