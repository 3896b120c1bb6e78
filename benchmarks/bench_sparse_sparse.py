"""Sparse-sparse kernels on the GSC layers against onnxruntime's dense Gemm / Conv.

Run:  TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sparse_sparse.py [--quick] [--cold]

Layers (nupic.torch GSCSuperSparseCNN): linear 1600->1500 at 5 % weights fed by a 12.5 % k-WTA
(and 41 %: what a 2x2 max-pool of a 12.5 % k-WTA leaves), conv 64->64 5x5 on 14x14 at 20 %
weights with 9.5 % and 33 % active inputs; batch 1 and 64; one thread on both sides, one process,
same timer (``peers.median_time``), so the ratios hold on a shared machine.

It also prints the bound the issue sets for the linear layer at 5 % / 12.5 %: non-zero MACs at
this core's peak FMA rate (2 FMA pipes x 8 float lanes per cycle, at the clock /proc/cpuinfo
reports) plus the bytes the kernel must read (the packed columns of the active inputs, x, y) at
a measured single-core read bandwidth, both from DRAM and from the L3 cache, since at batch 1 the
720 KB of packed weights stay in L3 between calls. ``--cold`` adds timings where a 64 MiB buffer
is rewritten before each call, so the weights come from DRAM.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from peers import OrtRunner, median_time, print_table  # noqa: E402
from tvm.script import tirx as T  # noqa: E402

from tvm_sparse.schedules.kernel import build_kernel  # noqa: E402
from tvm_sparse.schedules.sparse_sparse_x86 import (  # noqa: E402
    sparse_sparse_conv2d,
    sparse_sparse_linear,
)
from tvm_sparse.sparsify import complementary_mask, random_mask  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402

FMA_LANES_PER_CYCLE = 2 * 8  # Zen 3: two 256-bit FMA pipes, 8 float32 lanes each
_FLUSH = np.zeros((64 << 20) // 4, dtype=np.float32)  # 64 MiB > the 32 MiB L3


# --------------------------------------------------------------------------- machine


def clock_ghz() -> float:
    """The mean 'cpu MHz' of /proc/cpuinfo (this VM reports the nominal clock, no boost)."""
    with open("/proc/cpuinfo") as f:
        mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    return float(np.mean(mhz)) / 1e3


def measured_clock_ghz() -> float:
    """The clock the core really runs at (the VM's cpuinfo shows the nominal one, not boost).

    Times a chain of dependent one-cycle integer ops (``s = (s ^ (s >> 7)) + c``: 3 cycles per
    step) compiled by TVM; the fastest of 5 runs.
    """
    steps = 20_000_000

    @T.prim_func
    def chain(a: T.Buffer((1,), "int64"), out: T.Buffer((1,), "int64")):
        s = T.alloc_buffer((1,), "int64", scope="global")
        s[0] = a[0]
        for i in range(steps):  # noqa: B007
            s[0] = T.bitwise_xor(s[0], T.shift_right(s[0], T.int64(7))) + T.int64(12345)
        out[0] = s[0]

    func = chain.with_attr({"global_symbol": "main", "tirx.noalias": True})
    fn = tvm.compile(tvm.IRModule({"main": func}), target=resolve_target("llvm")).jit()["main"]
    a = tvm.runtime.tensor(np.array([3], np.int64))
    out = tvm.runtime.tensor(np.zeros(1, np.int64))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        fn(a, out)
        best = min(best, time.perf_counter() - start)
    return 3 * steps / best / 1e9


def read_bandwidth(nbytes: int) -> float:
    """Single-thread read bandwidth (bytes/s): numpy's SIMD ``max`` over ``nbytes`` of float32."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    reps = max(1, (256 << 20) // nbytes)

    def run() -> None:
        for _ in range(reps):
            a.max()

    return nbytes * reps / median_time(run, min_time=0.3, min_repeats=5)


# --------------------------------------------------------------------------- peers


def ort_gemm(m: int, weight: np.ndarray) -> OrtRunner:
    n, k = weight.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(weight, "W")],
    )
    return OrtRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def ort_conv(x_shape, weight: np.ndarray) -> OrtRunner:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], kernel_shape=list(weight.shape[2:]))],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "W")],
    )
    return OrtRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


# --------------------------------------------------------------------------- inputs


def kwta_input(rng, shape, density: float) -> np.ndarray:
    """Exactly ``round(density * features)`` non-zeros per sample, as a k-WTA output has."""
    m, feats = shape[0], int(np.prod(shape[1:]))
    k = int(round(density * feats))
    x = np.zeros((m, feats), dtype=np.float32)
    for i in range(m):
        idx = rng.choice(feats, size=k, replace=False)
        x[i, idx] = np.abs(rng.standard_normal(k)).astype(np.float32) + 0.1
    return x.reshape(shape)


def weight(rng, shape, density: float, kind: str) -> np.ndarray:
    make = complementary_mask if kind == "complementary" else random_mask
    return np.where(make(shape, density, seed=rng), rng.standard_normal(shape), 0).astype(
        np.float32
    )


# --------------------------------------------------------------------------- timing


def tvm_timer(call, target, x, cold: bool = False):
    """A closure calling the compiled kernel on fixed arrays (function handle looked up once)."""
    dev = tvm.cpu()
    fn = build_kernel(call, target)["main"]
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=call.out_dtype), dev)

    def run() -> None:
        fn(*args, out)

    return run, out


def cold_time(fn) -> float:
    """Median seconds of ``fn`` with the caches flushed before each call."""
    samples = []
    for _ in range(15):
        np.add(_FLUSH, 1.0, out=_FLUSH)
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def measure(call, target, x, ref_runner, cold: bool) -> dict:
    run, out = tvm_timer(call, target, x)
    feed = {"x": x}
    run()
    ref = ref_runner.run(feed)[0]
    row = {
        "tvm_us": median_time(run) * 1e6,
        "ort_us": median_time(lambda: ref_runner.session.run(None, feed)) * 1e6,
        "err": float(np.abs(out.numpy() - ref).max()),
    }
    row["x_ort"] = row["ort_us"] / row["tvm_us"]
    if cold:
        row["tvm_cold_us"] = cold_time(run) * 1e6
        row["ort_cold_us"] = cold_time(lambda: ref_runner.session.run(None, feed)) * 1e6
    return row


def linear_row(rng, target, m, x_density, kind, cold, vector=None) -> tuple[dict, dict]:
    w = weight(rng, (1500, 1600), 0.05, kind)
    x = kwta_input(rng, (m, 1600), x_density)
    call = sparse_sparse_linear(m, w, target=target, vector=vector, activation_density=x_density)
    row = measure(call, target, x, ort_gemm(m, w), cold)
    active = x != 0
    useful = int((active.astype(np.int64) @ (w != 0).sum(axis=0)).sum())  # exact non-zero MACs
    row.update(
        case=f"linear 1600->1500 w5% {kind[:4]} x{x_density:.1%}",
        m=m,
        scatter="vec" if call.info["vector_scatter"] else "scalar",
        useful_macs=useful,
        kernel_macs=call.info["kernel_macs"],
        dense_macs=call.info["macs_dense"],
    )
    return row, {"call": call, "x": x, "w": w}


def conv_row(rng, target, m, x_density, cold) -> dict:
    x_shape = (m, 64, 14, 14)
    w = weight(rng, (64, 64, 5, 5), 0.2, "complementary")
    x = kwta_input(rng, x_shape, x_density)
    call = sparse_sparse_conv2d(x_shape, w, target=target, activation_density=x_density)
    row = measure(call, target, x, ort_conv(x_shape, w), cold)
    row.update(
        case=f"conv 64->64 5x5 14x14 w20% x{x_density:.1%}",
        m=m,
        scatter="vec" if call.info["vector_scatter"] else "scalar",
        useful_macs=call.info["macs_sparse_sparse"],
        kernel_macs=call.info["kernel_macs"],
        dense_macs=call.info["macs_dense"],
    )
    return row


# --------------------------------------------------------------------------- the bound


def linear_bound(target, ghz: float, case: dict, cold: bool) -> None:
    """The issue's bound for the batch-1 linear at 5 % / 12.5 %, against what the kernel does."""
    call, x = case["call"], case["x"]
    tab_bytes_per_slot = 4 + call.info["owner_bits"] // 8
    n_active = int((x != 0).sum())
    useful = int(((x != 0).astype(np.int64) @ (case["w"] != 0).sum(axis=0)).sum())
    # What the kernel must read: the packed columns of the active inputs (values + owners, with
    # the residual), the whole of x (to find the non-zeros); it writes y.
    slots = int(call.info["kernel_macs_per_unit_density"] / call.info["k"] * n_active)
    must_read = slots * tab_bytes_per_slot + x.nbytes + 4 * call.info["n"]
    bw_dram = read_bandwidth(256 << 20)
    bw_l3 = read_bandwidth(4 << 20)
    run, _ = tvm_timer(call, target, x)
    t = median_time(run)
    zero_run, _ = tvm_timer(call, target, np.zeros_like(x))
    t_zero = median_time(zero_run)
    real_ghz = measured_clock_ghz()
    print()
    print(f"Bound, linear 1600->1500, 5 % weights, {n_active} active inputs, batch 1:")
    print(
        f"  clock: /proc/cpuinfo 'cpu MHz' {ghz:.3f} GHz, measured (dependent-op chain) "
        f"{real_ghz:.3f} GHz; peak FMA = {FMA_LANES_PER_CYCLE} MAC/cycle"
    )
    print(
        f"  bytes to read {must_read} ({slots} packed slots x {tab_bytes_per_slot} B + x + y); "
        f"single-core read bandwidth DRAM {bw_dram / 1e9:.1f} GB/s, L3 {bw_l3 / 1e9:.1f} GB/s"
    )
    for clock_name, clock in (("cpuinfo", ghz), ("measured", real_ghz)):
        peak = FMA_LANES_PER_CYCLE * clock * 1e9
        for name, bw in (("DRAM", bw_dram), ("L3", bw_l3)):
            bound = useful / peak + must_read / bw
            print(
                f"  {clock_name} clock, {name}: {useful} MACs / {peak / 1e9:.1f} GMAC/s = "
                f"{useful / peak * 1e6:.2f} us + {must_read / bw * 1e6:.2f} us = "
                f"{bound * 1e6:.2f} us; kernel {t * 1e6:.2f} us = {t / bound:.2f}x the bound "
                f"({'within' if t <= 3 * bound else 'outside'} 3x)"
            )
    if cold:
        print(f"  kernel with weights from DRAM (cache flushed): {cold_time(run) * 1e6:.2f} us")
    cycles = (t - t_zero) * real_ghz * 1e9
    print(
        f"  all-zero input (compaction + zeroing + epilogue + call): {t_zero * 1e6:.2f} us; "
        f"scatter {cycles / max(slots, 1):.2f} cycles (measured clock) per packed slot "
        f"({slots} slots, {useful / max(slots, 1):.0%} of them non-zero)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and the headline rows")
    parser.add_argument("--cold", action="store_true", help="add cache-flushed timings")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    target = resolve_target("llvm")
    ghz = clock_ghz()
    print(f"target {target}  TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}")
    batches = (1,) if args.quick else (1, 64)
    rows, headline = [], None
    for m in batches:
        for xd in (0.125, 0.41):
            row, case = linear_row(rng, target, m, xd, "complementary", args.cold)
            rows.append(row)
            if m == 1 and xd == 0.125:
                headline = case
        if not args.quick:
            rows.append(linear_row(rng, target, m, 0.125, "random", args.cold)[0])
            rows.append(linear_row(rng, target, m, 0.125, "complementary", False, False)[0])
        for xd in (0.095, 0.33):
            rows.append(conv_row(rng, target, m, xd, args.cold))
    for r in rows:
        r["GMAC/s"] = r["useful_macs"] / r["tvm_us"] / 1e3
    cols = ["case", "m", "scatter", "tvm_us", "ort_us", "x_ort", "useful_macs", "kernel_macs"]
    cols += ["dense_macs", "GMAC/s", "err"]
    if args.cold:
        cols += ["tvm_cold_us", "ort_cold_us"]
    print_table(rows, cols)
    print(
        "x_ort = onnxruntime dense time / sparse-sparse time; useful_macs = non-zero x non-zero "
        "products; kernel_macs = packed slots executed (incl. empty and padding slots); "
        "GMAC/s counts useful MACs"
    )
    linear_bound(target, ghz, headline, args.cold)


if __name__ == "__main__":
    main()
