"""FuseAttention: which subgraphs it takes, which it leaves, and that answers do not change."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_attention import FuseAttention, find_attention
from tvm_sparse.schedules.attention_fused_x86 import AttentionShape

from ..schedules.test_attention_fused_x86 import NEG, attention_ref

op = relax.op
B, S, H, D = 1, 24, 3, 16
SCALE = 0.25


def build(
    *,
    scale: str = "mul",
    mask: tuple[int, ...] | None = (1, 1, S, S),
    mask_first: bool = False,
    k_two_permutes: bool = False,
    final_reshape: bool = True,
    probs_escape: bool = False,
    softmax_axis: int = -1,
    d: int = D,
) -> tvm.IRModule:
    """The exporter's attention subgraph, with one variation at a time."""
    bb = relax.BlockBuilder()
    act = relax.TensorType((B, S, H * d), "float32")
    q, k, v = (relax.Var(n, act) for n in "qkv")
    params = [q, k, v]
    if mask is not None:
        m = relax.Var("mask", relax.TensorType(mask, "float32"))
        params.append(m)
    split = (B, S, H, d)
    with bb.function("main", params):
        with bb.dataflow():
            if scale == "on_q":
                q = bb.emit(op.multiply(q, relax.const(SCALE)))
            q4 = bb.emit(op.permute_dims(bb.emit(op.reshape(q, split)), [0, 2, 1, 3]))
            k4 = bb.emit(op.reshape(k, split))
            if k_two_permutes:
                kt = bb.emit(
                    op.permute_dims(bb.emit(op.permute_dims(k4, [0, 2, 1, 3])), [0, 1, 3, 2])
                )
            else:
                kt = bb.emit(op.permute_dims(k4, [0, 2, 3, 1]))
            v4 = bb.emit(op.permute_dims(bb.emit(op.reshape(v, split)), [0, 2, 1, 3]))
            x = bb.emit(op.matmul(q4, kt))
            if scale == "mul":
                x = bb.emit(op.multiply(x, relax.const(SCALE)))
            elif scale == "const_first":
                x = bb.emit(op.multiply(relax.const(SCALE), x))
            elif scale == "div":
                x = bb.emit(op.divide(x, relax.const(1.0 / SCALE)))
            if mask is not None:
                x = bb.emit(op.add(m, x) if mask_first else op.add(x, m))
            p = bb.emit(op.nn.softmax(x, axis=softmax_axis))
            o = bb.emit(op.permute_dims(bb.emit(op.matmul(p, v4)), [0, 2, 1, 3]))
            out = op.reshape(o, (B, S, H * d)) if final_reshape else o
            if probs_escape:
                out = relax.Tuple([bb.emit(out), p])
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


def feeds(rng, mask_shape, d: int = D):
    act = (B, S, H * d)
    q, k, v = (rng.standard_normal(act).astype(np.float32) for _ in range(3))
    if mask_shape is None:
        return [q, k, v]
    mask = np.where(rng.random(mask_shape) < 0.2, NEG, np.float32(0)).astype(np.float32)
    return [q, k, v, mask]


def run(mod: tvm.IRModule, target, arrays) -> np.ndarray:
    with target:
        ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    return out.numpy()


def ops(mod: tvm.IRModule) -> set[str]:
    names = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.add(str(expr.op.name))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


@pytest.mark.parametrize(
    "variation",
    [
        {},
        {"scale": "const_first"},
        {"scale": "div"},
        {"scale": "on_q"},
        {"scale": "none"},
        {"mask_first": True},
        {"mask": None},
        {"mask": (S,)},
        {"k_two_permutes": True},
        {"final_reshape": False},
        {"softmax_axis": 3},
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "exporter",
)
def test_fuses_and_matches_numpy(target, rng, variation):
    mod = build(**variation)
    fused = FuseAttention(target)(mod)
    assert "relax.nn.softmax" not in ops(fused) and "relax.matmul" not in ops(fused)
    assert "relax.permute_dims" not in ops(fused)
    mask_shape = variation.get("mask", (1, 1, S, S))
    arrays = feeds(rng, mask_shape)
    scale = 1.0 if variation.get("scale") == "none" else SCALE
    expected = attention_ref(*arrays[:3], None if mask_shape is None else arrays[3],
                             AttentionShape(B, S, H, D), scale)  # fmt: skip
    out = run(fused, target, arrays)
    if not variation.get("final_reshape", True):
        out = out.reshape(B, S, H * D)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    "variation",
    [
        {"probs_escape": True},  # the probabilities are an output too: they must exist
        {"mask": (1, 1, S, 1)},  # broadcasts along the keys: not a per-key mask
        {"d": 12},  # head dim not a multiple of 8
        {"softmax_axis": 2},
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_leaves_what_it_cannot_fuse(target, variation):
    mod = build(**variation)
    assert find_attention(mod["main"]) == []
    tvm.ir.assert_structural_equal(FuseAttention(target)(mod), mod)


def test_cross_attention_is_left_alone(target):
    """Queries and keys of different lengths: the kernel is self-attention only."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((1, 8, 32), "float32"))
    kv = relax.Var("kv", relax.TensorType((1, 16, 32), "float32"))
    with bb.function("main", [q, kv]):
        with bb.dataflow():
            q4 = bb.emit(op.permute_dims(bb.emit(op.reshape(q, (1, 8, 2, 16))), [0, 2, 1, 3]))
            k4 = bb.emit(op.reshape(kv, (1, 16, 2, 16)))
            kt = bb.emit(op.permute_dims(k4, [0, 2, 3, 1]))
            v4 = bb.emit(op.permute_dims(k4, [0, 2, 1, 3]))
            p = bb.emit(op.nn.softmax(bb.emit(op.matmul(q4, kt)), axis=-1))
            o = bb.emit(op.permute_dims(bb.emit(op.matmul(p, v4)), [0, 2, 1, 3]))
            out = bb.emit_output(op.reshape(o, (1, 8, 32)))
        bb.emit_func_output(out)
    assert find_attention(bb.get()["main"]) == []


def test_the_pass_runs_only_for_llvm(target):
    mod = build()
    tvm.ir.assert_structural_equal(FuseAttention()(mod), mod)  # no target in scope
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
        tvm.ir.assert_structural_equal(FuseAttention()(mod), mod)
    with target:
        assert "relax.nn.softmax" not in ops(FuseAttention()(mod))


def test_layers_share_one_kernel(target, rng):
    """Two attention blocks of one shape: one PrimFunc, called twice."""
    bb = relax.BlockBuilder()
    act = relax.TensorType((B, S, H * D), "float32")
    x = relax.Var("x", act)
    split = (B, S, H, D)

    def attention(t):
        q4 = bb.emit(op.permute_dims(bb.emit(op.reshape(t, split)), [0, 2, 1, 3]))
        kt = bb.emit(op.permute_dims(bb.emit(op.reshape(t, split)), [0, 2, 3, 1]))
        v4 = bb.emit(op.permute_dims(bb.emit(op.reshape(t, split)), [0, 2, 1, 3]))
        scores = bb.emit(op.multiply(bb.emit(op.matmul(q4, kt)), relax.const(SCALE)))
        o = bb.emit(op.matmul(bb.emit(op.nn.softmax(scores, axis=-1)), v4))
        return bb.emit(op.reshape(bb.emit(op.permute_dims(o, [0, 2, 1, 3])), (B, S, H * D)))

    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(attention(attention(x)))
        bb.emit_func_output(out)
    fused = FuseAttention(target)(bb.get())
    prims = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == 1
    a = rng.standard_normal((B, S, H * D)).astype(np.float32)
    shape = AttentionShape(B, S, H, D)
    once = attention_ref(a, a, a, None, shape, SCALE).astype(np.float32)
    expected = attention_ref(once, once, once, None, shape, SCALE)
    np.testing.assert_allclose(run(fused, target, [a]), expected, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_tiny_bert_matches_onnxruntime(tmp_path, target):
    """Through the tvm-sparse pipeline (the pass runs before LegalizeOps), vs onnxruntime."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import onnxruntime as ort

    from tvm_sparse.frontend import import_model
    from tvm_sparse.models_bert import TINY_BERT, bert_inputs, tiny_pruned_bert_onnx
    from tvm_sparse.passes import pipeline as P

    path = tiny_pruned_bert_onnx(tmp_path / "tiny_bert.onnx")
    inputs = bert_inputs(TINY_BERT.batch, TINY_BERT.seq, seed=1, padded=5)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = sess.run(None, inputs)[0]

    imported = import_model(path)
    assert len(find_attention(imported.mod["main"])) == TINY_BERT.layers
    options = P.SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)
    with target:
        *before_legalize, legalize = P.pre_schedule_passes(target, options)
        fused = tvm.transform.Sequential(before_legalize)(imported.mod)
        calls = [
            f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
            if str(f.attrs["global_symbol"]).startswith("attention")
        ]  # fmt: skip
        assert "relax.nn.softmax" not in ops(fused)
        assert 1 <= len(calls) <= TINY_BERT.layers  # one per distinct q / k / v source shape
        rest = [legalize, *P.schedule_passes(target), *P.lower_passes(target)]
        ex = tvm.compile(fused, target=target, relax_pipeline=tvm.transform.Sequential(rest))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [p.name for p in fused["main"].params]
    out = vm["main"](*[tvm.runtime.tensor(inputs[n]) for n in names]).numpy()
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3 * scale)
