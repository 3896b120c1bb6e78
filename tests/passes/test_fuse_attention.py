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


# -- What torch 2.13's TorchScript exporter (opset 17) writes ----------------------------------
#
# nn.MultiheadAttention (batch_first or not; an odd head count, so torch does not take its
# native fast path, which does not export): one packed in-projection [s, b, 3 * e], sliced by
# expand_dims / permute / squeeze / take into q, k, v, reshaped to [s, b * h, d], permuted to
# [b * h, s, d], reshaped to [b, h, s, d]; sqrt(1 / sqrt(d)) multiplied into both q and k^T;
# the output permuted [2, 0, 1, 3] to [s, b, h, d] for the out-projection. The hand-written
# form: strided slices of one projection, then 4-D [b, h, s, d] or 3-D [b * h, s, d] heads.

E, HEADS, HEAD_DIM = 48, 3, 16


def _torch_attention_models():
    import torch
    from torch import nn

    class MHA(nn.Module):
        def __init__(self, batch_first: bool, mask: bool, seq: int):
            super().__init__()
            self.attn = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)
            # a float attn_mask: added to the scores (a constant [s, s] in the file)
            self.mask = torch.linspace(-2.0, 0.0, seq * seq).reshape(seq, seq) if mask else None

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False, attn_mask=self.mask)[0]

    class Hand(nn.Module):
        """``softmax(q @ k^T * scale) @ v``, the scale where ``scale_on`` says."""

        def __init__(self, scale_on: str, rank: int, softmax_dim: int = -1):
            super().__init__()
            self.proj = nn.Linear(E, 3 * E)
            self.scale_on, self.rank, self.softmax_dim = scale_on, rank, softmax_dim

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.proj(x).chunk(3, -1)
            q, k, v = (t.reshape(b, s, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
            if self.rank == 3:
                q, k, v = (t.reshape(b * HEADS, s, HEAD_DIM) for t in (q, k, v))
            scale = HEAD_DIM**-0.5
            if self.scale_on == "q":
                q = q * scale
            elif self.scale_on == "k":
                k = k * scale
            elif self.scale_on == "both":
                q, k = q * scale**0.5, k * scale**0.5
            elif self.scale_on == "tensor":  # a scale computed from the input: not a constant
                q = q * x.abs().mean()
            scores = q @ k.transpose(-2, -1)
            if self.scale_on == "scores":
                scores = scores * scale
            elif self.scale_on == "div":
                scores = scores / HEAD_DIM**0.5
            elif self.scale_on == "scores_tensor":
                scores = scores * x.abs().mean()
            o = scores.softmax(self.softmax_dim) @ v
            return o.reshape(b, HEADS, s, HEAD_DIM).transpose(1, 2).reshape(b, s, E)

    return MHA, Hand


def _export(tmp_path, model, x) -> str:
    import torch

    from tvm_sparse.zoo.prune import export_onnx

    torch.manual_seed(0)
    return export_onnx(model, (torch.from_numpy(x),), tmp_path / "attn.onnx", ["x"], ["y"])


def _compile_fused(path: str, target, x: np.ndarray):
    """(attention kernels in the module before LegalizeOps, softmax left?, output)."""
    from tvm_sparse.frontend import import_model
    from tvm_sparse.passes import pipeline as P

    imported = import_model(path)
    options = P.SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)
    with target:
        *before_legalize, legalize = P.pre_schedule_passes(target, options)
        fused = tvm.transform.Sequential(before_legalize)(imported.mod)
        kernels = [
            f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
            if str(f.attrs["global_symbol"]).startswith("attention")
        ]  # fmt: skip
        rest = [legalize, *P.schedule_passes(target), *P.lower_passes(target)]
        ex = tvm.compile(fused, target=target, relax_pipeline=tvm.transform.Sequential(rest))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    return len(kernels), "relax.nn.softmax" in ops(fused), out


def _onnxruntime(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


TORCH_FUSED = [
    ("mha", {"batch_first": True, "mask": False}, 2),
    ("mha", {"batch_first": False, "mask": False}, 2),
    ("mha", {"batch_first": True, "mask": True}, 1),
    *[("hand", {"scale_on": w, "rank": r}, 2) for r in (4, 3)
      for w in ("q", "k", "both", "scores", "div", "none")],
    ("hand", {"scale_on": "tensor", "rank": 4}, 1),  # q * tensor is computed, then read
]  # fmt: skip


@pytest.mark.parametrize(
    "kind, kwargs, batch",
    TORCH_FUSED,
    ids=[f"{k}-" + "-".join(f"{a}={b}" for a, b in kw.items()) for k, kw, _ in TORCH_FUSED],
)
def test_torch_exports_fuse_and_match_onnxruntime(tmp_path, target, rng, kind, kwargs, batch):
    """The real exports, 13 tokens (no vector width divides it), against onnxruntime."""
    pytest.importorskip("torch")
    mha, hand = _torch_attention_models()
    seq = 13
    if kind == "mha":
        model = mha(**kwargs, seq=seq)
        shape = (batch, seq, E) if kwargs["batch_first"] else (seq, batch, E)
    else:
        model, shape = hand(**kwargs), (batch, seq, E)
    x = rng.standard_normal(shape).astype(np.float32)
    path = _export(tmp_path, model, x)
    kernels, softmax_left, out = _compile_fused(path, target, x)
    assert kernels == 1 and not softmax_left
    expected = _onnxruntime(path, x)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


TORCH_NOT_FUSED = [
    {"scale_on": "scores", "rank": 4, "softmax_dim": -2},  # normalized over the queries
    {"scale_on": "scores", "rank": 3, "softmax_dim": 1},
    {"scale_on": "scores_tensor", "rank": 4},  # the scores scaled by a computed value
]


@pytest.mark.parametrize(
    "kwargs",
    TORCH_NOT_FUSED,
    ids=["-".join(f"{a}={b}" for a, b in kw.items()) for kw in TORCH_NOT_FUSED],
)
def test_torch_exports_that_are_not_attention_are_left(tmp_path, target, rng, kwargs):
    pytest.importorskip("torch")
    _, hand = _torch_attention_models()
    x = rng.standard_normal((1, 13, E)).astype(np.float32)
    path = _export(tmp_path, hand(**kwargs), x)
    kernels, softmax_left, out = _compile_fused(path, target, x)
    assert kernels == 0 and softmax_left
    np.testing.assert_allclose(out, _onnxruntime(path, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "shape, strides, new_shape",
    [
        ((4, 6), (6, 1), (2, 2, 3, 2)),  # split
        ((2, 3, 4), (12, 4, 1), (6, 4)),  # merge
        ((3, 13, 16), (16, 144, 1), (1, 3, 13, 16)),  # a permuted view: add a dim
        ((13, 3, 16), (144, 16, 1), (13, 48)),  # a slice's rows: merge the inner two
        ((4, 2), (1, 4), (2, 4)),  # column-major: no view
        ((3, 13, 16), (16, 144, 1), (39, 16)),  # heads and rows do not merge
    ],
)
def test_strided_reshape_agrees_with_numpy(shape, strides, new_shape):
    """The operand tracer's reshape of a strided view, against numpy's (None: numpy copies)."""
    from tvm_sparse.passes.fuse_attention import _Strided

    memory = np.arange(4096, dtype=np.float64)  # every view below ends before 1,800
    itemsize = memory.itemsize
    array = np.lib.stride_tricks.as_strided(memory[5:], shape, [s * itemsize for s in strides])
    view = _Strided(5, shape, strides).reshape(new_shape)
    expected = array.reshape(new_shape)
    if view is None:
        assert not np.shares_memory(expected, memory)
        return
    got = np.lib.stride_tricks.as_strided(
        memory[view.offset :], new_shape, [s * itemsize for s in view.strides]
    )
    np.testing.assert_array_equal(got, expected)
