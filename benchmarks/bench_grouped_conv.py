"""Grouped (not depthwise) dense conv kernels, per layer, against onnxruntime's Conv.

    python benchmarks/bench_grouped_conv.py [--seconds 0.1] [--rounds 5] [--only regnetx]

The cases are RegNetX-400MF's 3x3 convs (group width 16) and ResNeXt-50 32x4d's (32 groups,
widths 4 to 32), plus grouped 1x1 convs (ShuffleNet-style). Each kernel variant (the direct loop
nest the builder used before, the tap-plane kernel, the grouped implicit GEMM; ``default`` is
what ``dense_conv2d`` picks) and onnxruntime are timed at 1 thread in ``--rounds`` alternating
turns; a cell is the median over the rounds, with the range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tvm  # noqa: E402

from tvm_sparse.schedules._conv_dims import ConvAttrs  # noqa: E402
from tvm_sparse.schedules.dense_x86 import dense_conv2d  # noqa: E402
from tvm_sparse.schedules.gemm_x86 import GemmTiling  # noqa: E402
from tvm_sparse.schedules.kernel import build_kernel  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402
from tvm_sparse.timing import median_seconds, take_turns  # noqa: E402

# name: (x_shape, groups, out channels, kernel, stride)
CASES = {
    "regnetx": [
        ("rx s1 32@112 s2", (1, 32, 112, 112), 2, 32, 3, 2),
        ("rx s2 64@56 s2", (1, 64, 56, 56), 4, 64, 3, 2),
        ("rx s2 64@28", (1, 64, 28, 28), 4, 64, 3, 1),
        ("rx s3 160@14", (1, 160, 14, 14), 10, 160, 3, 1),
        ("rx s4 384@7", (1, 384, 7, 7), 24, 384, 3, 1),
    ],
    "resnext": [
        ("rnx s1 128@56 g32", (1, 128, 56, 56), 32, 128, 3, 1),
        ("rnx s2 256@28 g32", (1, 256, 28, 28), 32, 256, 3, 1),
        ("rnx s3 512@14 g32", (1, 512, 14, 14), 32, 512, 3, 1),
        ("rnx s4 1024@7 g32", (1, 1024, 7, 7), 32, 1024, 3, 1),
    ],
    "pointwise": [
        ("1x1 240@28 g3", (1, 240, 28, 28), 3, 240, 1, 1),
        ("1x1 256@28 g8", (1, 256, 28, 28), 8, 256, 1, 1),
    ],
}


def _ort_session(x_shape, weight, bias, strides, padding, out_shape, group):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    top, left, bottom, right = padding
    node = helper.make_node(
        "Conv", ["x", "W", "b"], ["y"], strides=list(strides),
        pads=[top, left, bottom, right], group=group,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _tvm_runner(call, target, x):
    func = build_kernel(call, target)["main"]
    args = [tvm.runtime.tensor(a) for a in (x, *call.consts)]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=np.float32))

    def run():
        func(*args, out)

    return run, out


def _variants(cg: int, ow: int):
    out = {"direct": {"layout": "direct"}, "default": {}}
    for mr, v in ((4, 4), (6, 4), (4, 3), (8, 2)):
        out[f"planes {mr}x{v}"] = {"layout": "planes", "planes_tile": (mr, v)}
    for nb in (8, 16, 32):
        if cg % nb == 0 or (nb == 16 and cg < 16):
            for mr in (4, 7, 12, 14):
                if nb == 32 and mr > 7:
                    continue
                out[f"igemm {mr}x{nb}"] = {
                    "layout": "implicit_gemm",
                    "tiling": GemmTiling(mr=min(mr, ow) if mr < 2 * ow else mr, nb=nb),
                }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--skip-direct", action="store_true")
    args = p.parse_args()
    target = resolve_target("llvm")
    rng = np.random.default_rng(0)
    for family in args.only:
        for name, x_shape, groups, co, k, s in CASES[family]:
            cg = co // groups
            w = rng.standard_normal((co, x_shape[1] // groups, k, k), dtype=np.float32)
            b = rng.standard_normal(co, dtype=np.float32)
            x = rng.standard_normal(x_shape, dtype=np.float32)
            pad = (k // 2,) * 4
            conv = ConvAttrs((s, s), pad, (1, 1), groups)
            timers, labels = {}, {}
            out_shape = None
            for label, knobs in _variants(cg, (x_shape[3] + 2 * (k // 2) - k) // s + 1).items():
                if label == "direct" and args.skip_direct:
                    continue
                call = dense_conv2d(x_shape, w, b, conv, "relu", target, **knobs)
                run, out = _tvm_runner(call, target, x)
                run()
                out_shape = call.out_shape
                labels[label] = call.info.get("layout", "?")
                if label == "default":
                    t = call.info.get("tiling")
                    labels[label] += f" {t.mr}x{t.nb}" if t else f" {call.info.get('tile')}"
                timers[label] = (lambda r: lambda: median_seconds(r, args.seconds))(run)
                timers[label].out = out
            session = _ort_session(x_shape, w, b, (s, s), pad, out_shape, groups)
            ort_out = np.maximum(session.run(None, {"x": x})[0], 0)
            for label in timers:
                err = np.abs(timers[label].out.numpy() - ort_out).max()
                assert err < 1e-3 * (np.abs(ort_out).max() + 1), (name, label, err)
            timers["ort"] = lambda sess=session, feed={"x": x}: median_seconds(
                lambda: sess.run(None, feed), args.seconds
            )
            samples = take_turns(timers, args.rounds)
            macs = co * (x_shape[1] // groups) * k * k * out_shape[2] * out_shape[3]
            print(f"\n{name}  ({macs / 1e6:.1f} M MACs; default = {labels['default']})")
            ort_ms = statistics.median(samples["ort"]) * 1e3
            for label, secs in sorted(samples.items(), key=lambda kv: statistics.median(kv[1])):
                ms = [t * 1e3 for t in secs]
                med = statistics.median(ms)
                print(
                    f"  {label:14s} {med:8.3f} ms  [{min(ms):.3f}-{max(ms):.3f}]  "
                    f"{macs / med / 1e6:6.1f} GMAC/s  x_ort {ort_ms / med:5.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
