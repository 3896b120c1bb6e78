"""Fused attention kernel vs the unfused TVM path vs onnxruntime, one encoder layer's attention.

The subgraph is what a BERT export imports to (reshape / permute q, k, v; Q K^T; scale; mask
add; softmax; P V; permute / reshape back), built as a Relax function and compiled twice with
the default tvm-sparse pipeline: as is, and after ``FuseAttention``. onnxruntime runs the same
graph written as ONNX. All in one process, interleaved, so the ratios hold on a busy machine.

    TVM_NUM_THREADS=1 .venv/bin/python benchmarks/bench_attention.py [--heads 12 --seq 128 --dim 32]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

import tvm_sparse  # noqa: E402
from tvm_sparse.passes.fuse_attention import FuseAttention  # noqa: E402
from tvm_sparse.schedules.attention_fused_x86 import AttentionShape, attention_kernel  # noqa: E402
from tvm_sparse.schedules.kernel import build_kernel  # noqa: E402
from tvm_sparse.target import resolve_target  # noqa: E402
from tvm_sparse.timing import take_turns  # noqa: E402

_NEG = np.float32(-3.4028234663852886e38)


def attention_module(shape: AttentionShape, scale: float) -> tvm.IRModule:
    """The exporter's attention subgraph as a Relax function ``main(q, k, v, mask)``."""
    b, s, h, d = shape.batch, shape.seq, shape.heads, shape.dim
    bb = relax.BlockBuilder()
    act = relax.TensorType((b, s, h * d), "float32")
    q, k, v = (relax.Var(n, act) for n in "qkv")
    mask = relax.Var("mask", relax.TensorType((1, 1, s, s), "float32"))
    op = relax.op
    with bb.function("main", [q, k, v, mask]):
        with bb.dataflow():
            q4 = bb.emit(op.permute_dims(bb.emit(op.reshape(q, (b, s, h, d))), [0, 2, 1, 3]))
            kt = bb.emit(op.permute_dims(bb.emit(op.reshape(k, (b, s, h, d))), [0, 2, 3, 1]))
            v4 = bb.emit(op.permute_dims(bb.emit(op.reshape(v, (b, s, h, d))), [0, 2, 1, 3]))
            scores = bb.emit(op.multiply(bb.emit(op.matmul(q4, kt)), relax.const(scale)))
            probs = bb.emit(op.nn.softmax(bb.emit(op.add(scores, mask)), axis=-1))
            o = bb.emit(op.permute_dims(bb.emit(op.matmul(probs, v4)), [0, 2, 1, 3]))
            out = bb.emit_output(op.reshape(o, (b, s, h * d)))
        bb.emit_func_output(out)
    return bb.get()


def attention_onnx(shape: AttentionShape, scale: float) -> bytes:
    """The same graph as ONNX (what the PyTorch exporter writes for BertSelfAttention)."""
    from onnx import TensorProto, helper

    b, s, h, d = shape.batch, shape.seq, shape.heads, shape.dim
    act = [b, s, h * d]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, act) for n in "qkv"]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, s, s]))
    inits = [
        helper.make_tensor("split", TensorProto.INT64, [4], [b, s, h, d]),
        helper.make_tensor("merged", TensorProto.INT64, [3], act),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
    ]
    nodes = [helper.make_node("Reshape", [n, "split"], [n + "4"]) for n in "qkv"]
    nodes += [
        helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["qk"]),
        helper.make_node("Mul", ["qk", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "vh"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx4"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx4", "merged"], ["out"]),
    ]
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, act)
    graph = helper.make_graph(nodes, "attention", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _vm_timer(compiled, args, number: int):
    vm = relax.VirtualMachine(compiled.executable, tvm.cpu())
    vm.set_input("main", *args)
    timer = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=1)
    return lambda: timer("main").mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--number", type=int, default=20, help="calls per round")
    opts = parser.parse_args()
    shape = AttentionShape(opts.batch, opts.seq, opts.heads, opts.dim)
    scale = 1.0 / float(np.sqrt(shape.dim))
    target = resolve_target("llvm")
    rng = np.random.default_rng(0)
    b, s, hd = shape.batch, shape.seq, shape.hidden
    q, k, v = (rng.standard_normal((b, s, hd)).astype(np.float32) for _ in range(3))
    mask = np.zeros((1, 1, s, s), np.float32)
    mask[..., s - s // 8 :] = _NEG  # padding tokens
    arrays = (q, k, v, mask)
    args = [tvm.runtime.tensor(a) for a in arrays]

    mod = attention_module(shape, scale)
    unfused = tvm_sparse.compile(mod, target, measure=False)
    fused = tvm_sparse.compile(FuseAttention(target)(mod), target, measure=False)
    expected = unfused.run(*arrays)
    np.testing.assert_allclose(fused.run(*arrays), expected, rtol=1e-4, atol=1e-5)
    timers = {
        "tvm-sparse unfused (VM)": _vm_timer(unfused, args, opts.number),
        "tvm-sparse fused (VM)": _vm_timer(fused, args, opts.number),
    }
    kernel = attention_kernel(shape, scale, mask_shape=mask.shape, target=target)
    module = build_kernel(kernel, target)
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, np.float32))
    kernel_timer = module.time_evaluator("main", tvm.cpu(), number=opts.number, repeat=1)
    timers["fused kernel alone"] = lambda: kernel_timer(*args, out).mean
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ["TVM_NUM_THREADS"])
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            attention_onnx(shape, scale), so, providers=["CPUExecutionProvider"]
        )
        feeds = dict(zip(("q", "k", "v", "mask"), arrays))
        np.testing.assert_allclose(sess.run(None, feeds)[0], expected, rtol=1e-4, atol=1e-5)

        def ort_timer():
            start = time.perf_counter()
            for _ in range(opts.number):
                sess.run(None, feeds)
            return (time.perf_counter() - start) / opts.number

        timers["onnxruntime"] = ort_timer
    except ImportError:
        pass

    samples = take_turns(timers, opts.rounds)  # every path sees the same machine load
    threads = os.environ["TVM_NUM_THREADS"]
    macs = 2 * shape.batch * shape.heads * shape.seq * shape.seq * shape.dim
    print(f"attention b={b} h={shape.heads} s={s} d={shape.dim}, {threads} thread(s), ms per call")
    print(f"{'path':<26}{'median':>9}{'min':>9}{'GMAC/s':>9}{'vs unfused':>12}")
    base = float(np.median(samples["tvm-sparse unfused (VM)"]))
    for name, values in samples.items():
        med, low = float(np.median(values)), float(np.min(values))
        print(
            f"{name:<26}{med * 1e3:>9.3f}{low * 1e3:>9.3f}{macs / med / 1e9:>9.1f}"
            f"{base / med:>11.2f}x"
        )


if __name__ == "__main__":
    main()
