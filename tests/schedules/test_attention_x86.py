"""The encoder leftover rules: batched matmul (+ epilogue) and row reductions, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te

from tvm_sparse.schedules.attention_x86 import BatchMatmul, RowReduction, encoder_leftover_rules


def _build(func: tvm.tirx.PrimFunc, target):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target)["main"]


def _run(func, target, *arrays: np.ndarray, out_shape) -> np.ndarray:
    args = [tvm.runtime.tensor(a) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype=np.float32))
    _build(func, target)(*args, out)
    return out.numpy()


def _batch_matmul(b, m, n, k, b_transposed: bool, epilogue: bool):
    """C = A @ B (B as [b, k, n] or [b, n, k]); with epilogue C * 0.5 + mask[m, n]."""
    a = te.placeholder((b, m, k), name="A")
    bshape = (b, n, k) if b_transposed else (b, k, n)
    bt = te.placeholder(bshape, name="B")
    r = te.reduce_axis((0, k), name="k")

    def rhs(x, j, kk):
        return bt[x, j, kk] if b_transposed else bt[x, kk, j]

    c = te.compute((b, m, n), lambda x, i, j: te.sum(a[x, i, r] * rhs(x, j, r), axis=r), name="C")
    if not epilogue:
        return te.create_prim_func([a, bt, c]), (a, bt)
    mask = te.placeholder((m, n), name="mask")
    scaled = te.compute((b, m, n), lambda x, i, j: c[x, i, j] * 0.5, name="scaled")
    out = te.compute((b, m, n), lambda x, i, j: scaled[x, i, j] + mask[i, j], name="out")
    return te.create_prim_func([a, bt, mask, out]), (a, bt, mask)


@pytest.mark.parametrize(
    "b, m, n, k, b_transposed, epilogue",
    [
        (12, 128, 128, 32, False, True),  # Q K^T with scale and mask (K^T materialized)
        (12, 128, 32, 128, False, False),  # P V
        (3, 12, 20, 40, True, True),  # ragged tiles, B not transposed
        (2, 6, 10, 33, False, False),  # nothing divides evenly
        (3, 197, 197, 64, False, True),  # ViT's 197 tokens: padded to whole vector tiles
        (1, 5, 19, 8, True, False),  # padded, B transposed, m below a tile
        (2, 37, 197, 24, False, False),  # padded, no epilogue (the crop is the store)
    ],
)
def test_batch_matmul_matches_numpy(target, rng, b, m, n, k, b_transposed, epilogue):
    func, _ = _batch_matmul(b, m, n, k, b_transposed, epilogue)
    sch = BatchMatmul(min_macs=0).apply(func, target, False)
    assert sch is not None
    x = rng.standard_normal((b, m, k)).astype(np.float32)
    w = rng.standard_normal((b, n, k) if b_transposed else (b, k, n)).astype(np.float32)
    expected = x @ (w.transpose(0, 2, 1) if b_transposed else w)
    inputs = [x, w]
    if epilogue:
        mask = rng.standard_normal((m, n)).astype(np.float32)
        expected = expected * 0.5 + mask
        inputs.append(mask)
    out = _run(sch.mod["main"], target, *inputs, out_shape=(b, m, n))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _legalized(build, *shapes) -> tvm.tirx.PrimFunc:
    """The PrimFunc TVM's legalization makes for a one-op Relax function."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"p{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(build(*params))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) == 1
    return funcs[0]


def test_softmax_matches_numpy(target, rng):
    shape = (1, 3, 16, 128)
    func = _legalized(lambda x: relax.op.nn.softmax(x, axis=-1), shape)
    sch = RowReduction().apply(func, target, False)
    assert sch is not None
    x = rng.standard_normal(shape).astype(np.float32) * 4
    x[..., -3:] = -3.4e38  # masked positions, as BERT writes them
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    expected = e / e.sum(axis=-1, keepdims=True)
    out = _run(sch.mod["main"], target, x, out_shape=shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hidden", [384, 64, 20])
def test_layer_norm_matches_numpy(target, rng, hidden):
    shape = (1, 16, hidden)
    func = _legalized(
        lambda x, g, b: relax.op.nn.layer_norm(x, g, b, axes=[-1], epsilon=1e-12),
        shape,
        (hidden,),
        (hidden,),
    )
    sch = RowReduction().apply(func, target, False)
    assert sch is not None
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    g = rng.standard_normal(hidden).astype(np.float32)
    b = rng.standard_normal(hidden).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(x64.var(-1, keepdims=True) + 1e-12) * g + b
    out = _run(sch.mod["main"], target, x, g, b, out_shape=shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_rules_decline_what_they_do_not_handle(target):
    x = te.placeholder((64, 64), name="x")
    add = te.create_prim_func([x, te.compute((64, 64), lambda i, j: x[i, j] + 1.0, name="y")])
    for rule in encoder_leftover_rules():
        assert rule.apply(add, target, False) is None
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    func, _ = _batch_matmul(2, 16, 16, 16, False, False)
    assert BatchMatmul(min_macs=0).apply(func, cuda, False) is None
    assert BatchMatmul().apply(func, target, False) is None  # below min_macs


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_rules_use_the_targets_vector_width(rng, isa):
    """Both rules size their vectors from the target: zmm on AVX-512, ymm on AVX2 (built on any
    machine), and the results hold where this CPU runs them."""
    from .isa import ZMM, count, isa_target, run_target

    build_target = isa_target(isa)
    func, _ = _batch_matmul(2, 16, 64, 48, False, False)
    mm = BatchMatmul(min_macs=0).apply(func, build_target, False).mod["main"]
    rows = _legalized(lambda x: relax.op.nn.softmax(x, axis=-1), (2, 8, 128))
    sm = RowReduction().apply(rows, build_target, False).mod["main"]
    for sch_func in (mm, sm):
        built = tvm.tirx.build(sch_func.with_attr("global_symbol", "main"), target=build_target)
        assert (count(ZMM, built.inspect_source("asm")) > 0) == (isa == "avx512")
    target = run_target(isa)
    a = rng.standard_normal((2, 16, 48)).astype(np.float32)
    b = rng.standard_normal((2, 48, 64)).astype(np.float32)
    np.testing.assert_allclose(_run(mm, target, a, b, out_shape=(2, 16, 64)), a @ b, rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    x = rng.standard_normal((2, 8, 128)).astype(np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(
        _run(sm, target, x, out_shape=x.shape),
        e / e.sum(-1, keepdims=True),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_batch_matmul_vectorizes_a_prime_column_count(rng, isa):
    """ViT's scores are 197 x 197 (196 patches + the class token): no vector width divides
    197, and a divisor tile (1 x 1) was scalar code, 7 ms instead of 0.15 ms for 3 heads. The
    padded tile must be packed vector FMAs (zmm on AVX-512, ymm on AVX2)."""
    from .isa import count, isa_target, run_target

    func, _ = _batch_matmul(3, 197, 197, 64, False, True)
    sch = BatchMatmul(min_macs=0).apply(func, isa_target(isa), False)
    built = tvm.tirx.build(sch.mod["main"].with_attr("global_symbol", "main"), isa_target(isa))
    reg = "zmm" if isa == "avx512" else "ymm"
    assert count(rf"vfmadd\w*ps\s[^\n]*%{reg}", built.inspect_source("asm")) > 0
    target = run_target(isa)
    a = rng.standard_normal((3, 197, 64)).astype(np.float32)
    b = rng.standard_normal((3, 64, 197)).astype(np.float32)
    mask = rng.standard_normal((197, 197)).astype(np.float32)
    out = _run(sch.mod["main"], target, a, b, mask, out_shape=(3, 197, 197))
    np.testing.assert_allclose(out, (a @ b) * 0.5 + mask, rtol=1e-4, atol=1e-4)
