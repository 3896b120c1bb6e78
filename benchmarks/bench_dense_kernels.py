"""Dense x86 kernels (tvm_sparse.schedules.dense_x86) against onnxruntime, one op per case.

    python benchmarks/bench_dense_kernels.py [--threads 1] [--only linear|conv]

Prints TVM time, onnxruntime time and speed ratio (ORT time / TVM time: > 1 means TVM is
faster) per case, and TVM's GFLOP/s as a fraction of the FMA peak ``machine_probe`` measures
(one core times the thread count). Both sides run in this process with the same thread count,
interleaved, so the ratio is fair on a shared, noisy machine. Each ORT model is one Gemm or Conv
node. The conv cases are ResNet / MobileNetV2 / GSC shapes; the "kernel" column is the layout the
builder picked for the shape (pointwise, implicit GEMM, planes, Winograd, depthwise) and its
tile.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="TVM and ORT intra-op threads")
    parser.add_argument("--only", choices=("linear", "conv"), default=None)
    parser.add_argument("--seconds", type=float, default=0.1, help="time per measurement")
    return parser.parse_args()


ARGS = _parse()
os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # must be set before tvm starts its pool

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tvm_sparse.schedules._conv_dims import ConvAttrs  # noqa: E402
from tvm_sparse.schedules.dense_x86 import dense_conv2d, dense_linear  # noqa: E402
from tvm_sparse.schedules.kernel import build_kernel  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402
from tvm_sparse.timing import median_seconds, take_turns  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_probe import machine_line, peak_gflops  # noqa: E402

# (name, m, K, N)
LINEAR_CASES = [
    ("linear 2048x2048 b1", 1, 2048, 2048),
    ("linear 2048x2048 b7", 7, 2048, 2048),
    ("linear 2048x2048 b64", 64, 2048, 2048),
    ("linear 1600->1000 b1 (GSC)", 1, 1600, 1000),
    ("linear 1600->1000 b64 (GSC)", 64, 1600, 1000),
    ("linear 384->384 s128 (MiniLM qkv/out)", 128, 384, 384),
    ("linear 384->1536 s128 (MiniLM FFN1)", 128, 384, 1536),
    ("linear 1536->384 s128 (MiniLM FFN2)", 128, 1536, 384),
]
# (name, x_shape, w_shape, strides, padding (t, l, b, r))
CONV_CASES = [
    ("conv5x5 1->64 32x32 b1 (GSC1)", (1, 1, 32, 32), (64, 1, 5, 5), (1, 1), (0, 0, 0, 0)),
    ("conv5x5 1->64 32x32 b64 (GSC1)", (64, 1, 32, 32), (64, 1, 5, 5), (1, 1), (0, 0, 0, 0)),
    ("conv5x5 64->64 14x14 b1 (GSC2)", (1, 64, 14, 14), (64, 64, 5, 5), (1, 1), (0, 0, 0, 0)),
    ("conv5x5 64->64 14x14 b16 (GSC2)", (16, 64, 14, 14), (64, 64, 5, 5), (1, 1), (0, 0, 0, 0)),
    ("conv5x5 64->64 14x14 b64 (GSC2)", (64, 64, 14, 14), (64, 64, 5, 5), (1, 1), (0, 0, 0, 0)),
    ("conv3x3 64->64 56x56 b1 pad1", (1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1)),
    ("conv1x1 64->256 56x56 b1", (1, 64, 56, 56), (256, 64, 1, 1), (1, 1), (0, 0, 0, 0)),
    ("conv3x3 128->128 28x28 b1 s2", (1, 128, 28, 28), (128, 128, 3, 3), (2, 2), (1, 1, 1, 1)),
    ("conv7x7 3->64 224 s2 (stem)", (1, 3, 224, 224), (64, 3, 7, 7), (2, 2), (3, 3, 3, 3)),
    ("conv3x3 256->256 14x14 b1", (1, 256, 14, 14), (256, 256, 3, 3), (1, 1), (1, 1, 1, 1)),
    ("conv1x1 1024->256 14x14 b1", (1, 1024, 14, 14), (256, 1024, 1, 1), (1, 1), (0, 0, 0, 0)),
    ("conv1x1 256->512 56 s2 (ds)", (1, 256, 56, 56), (512, 256, 1, 1), (2, 2), (0, 0, 0, 0)),
]
# depthwise: (name, x_shape, stride); 3x3, padding 1 (MobileNetV2's shapes)
DEPTHWISE_CASES = [
    ("dw3x3 96 112x112 s2", (1, 96, 112, 112), 2),
    ("dw3x3 144 56x56 s1", (1, 144, 56, 56), 1),
    ("dw3x3 576 14x14 s1", (1, 576, 14, 14), 1),
]


def _ort_session(graph, threads: int) -> ort.InferenceSession:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _gemm_graph(x_shape, weight, bias, out_shape):
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)
    return helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )


def _conv_graph(x_shape, weight, bias, strides, padding, out_shape, group=1):
    top, left, bottom, right = padding
    node = helper.make_node(
        "Conv",
        ["x", "W", "b"],
        ["y"],
        strides=list(strides),
        pads=[top, left, bottom, right],
        group=group,
    )
    return helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )


def _tvm_runner(call, target, x):
    func = build_kernel(call, target)["main"]  # look the function up once
    args = [tvm.runtime.tensor(a) for a in (x, *call.consts)]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=np.float32))

    def run():
        func(*args, out)

    return run, out


def _measure(name, call, graph, x, target, threads, seconds, macs):
    tvm_run, tvm_out = _tvm_runner(call, target, x)
    session = _ort_session(graph, threads)
    feed = {"x": x}
    ort_out = session.run(None, feed)[0]
    tvm_run()
    err = float(np.abs(tvm_out.numpy() - ort_out).max() / (np.abs(ort_out).max() + 1e-12))
    samples = take_turns(  # both see the same machine load
        {
            "tvm": lambda: median_seconds(tvm_run, seconds),
            "ort": lambda: median_seconds(lambda: session.run(None, feed), seconds),
        },
        3,
    )
    tt, to = min(samples["tvm"]), min(samples["ort"])
    tiling = call.info.get("tiling")
    knobs = call.info.get("layout") or "direct"
    if tiling:
        knobs = f"{knobs[:6]} {tiling.mr}x{tiling.nb}"
    gflops = 2 * macs / tt / 1e9
    print(
        f"{name:36s} {knobs:>14s} {tt * 1e3:9.3f} {to * 1e3:9.3f} {to / tt:6.2f}x "
        f"{gflops:7.1f} {gflops / (peak_gflops() * threads):6.0%} {err:8.1e}",
        flush=True,
    )


def main() -> int:
    target = resolve_target("llvm")
    rng = np.random.default_rng(0)
    print(f"target {target}  threads {ARGS.threads}  onnxruntime {ort.__version__}")
    print(machine_line())
    print(
        f"{'case':36s} {'kernel':>14s} {'tvm ms':>9s} {'ort ms':>9s} {'ratio':>7s} "
        f"{'GFLOP/s':>7s} {'peak':>6s} {'rel err':>8s}"
    )
    if ARGS.only in (None, "linear"):
        for name, m, k, n in LINEAR_CASES:
            weight = rng.standard_normal((n, k), dtype=np.float32)
            bias = rng.standard_normal(n, dtype=np.float32)
            x = rng.standard_normal((m, k), dtype=np.float32)
            call = dense_linear(m, weight, bias, target=target)
            graph = _gemm_graph(x.shape, weight, bias, (m, n))
            _measure(name, call, graph, x, target, ARGS.threads, ARGS.seconds, m * n * k)
    if ARGS.only in (None, "conv"):
        for name, x_shape, w_shape, strides, padding in CONV_CASES:
            weight = rng.standard_normal(w_shape, dtype=np.float32)
            bias = rng.standard_normal(w_shape[0], dtype=np.float32)
            x = rng.standard_normal(x_shape, dtype=np.float32)
            call = dense_conv2d(x_shape, weight, bias, ConvAttrs(strides, padding), target=target)
            graph = _conv_graph(x_shape, weight, bias, strides, padding, call.out_shape)
            macs = call.info["macs"]
            _measure(name, call, graph, x, target, ARGS.threads, ARGS.seconds, macs)
        for name, x_shape, stride in DEPTHWISE_CASES:
            c = x_shape[1]
            weight = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
            bias = rng.standard_normal(c, dtype=np.float32)
            x = rng.standard_normal(x_shape, dtype=np.float32)
            conv = ConvAttrs((stride, stride), (1, 1, 1, 1), (1, 1), c)
            call = dense_conv2d(x_shape, weight, bias, conv, target=target)
            pads = conv.padding
            graph = _conv_graph(x_shape, weight, bias, conv.strides, pads, call.out_shape, c)
            _measure(name, call, graph, x, target, ARGS.threads, ARGS.seconds, call.info["macs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
