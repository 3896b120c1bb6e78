"""The fused attention kernel against a float64 numpy softmax(scale Q K^T + mask) V."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm.script import tirx as T

from tvm_sparse.schedules.attention_fused_x86 import (
    AttentionShape,
    Layout,
    _exp2_nonpositive,
    attention_kernel,
)
from tvm_sparse.schedules.kernel import build_kernel

NEG = np.float32(-3.4028234663852886e38)  # what exporters write for a masked position


def attention_ref(q, k, v, mask, shape: AttentionShape, scale: float) -> np.ndarray:
    """relax.nn.softmax semantics in float64: subtract the row max, then normalize."""
    b, s, h, d = shape.batch, shape.seq, shape.heads, shape.dim

    def heads(x):
        return x.astype(np.float64).reshape(b, s, h, d).transpose(0, 2, 1, 3)

    with np.errstate(invalid="ignore", over="ignore"):
        x = heads(q) @ heads(k).transpose(0, 1, 3, 2) * scale
        if mask is not None:
            x = x + mask.astype(np.float64)
        p = np.exp(x - x.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        return (p @ heads(v)).transpose(0, 2, 1, 3).reshape(b, s, h * d)


def run(shape: AttentionShape, scale, q, k, v, mask, target, **kwargs) -> np.ndarray:
    call = attention_kernel(
        shape, scale, mask_shape=None if mask is None else mask.shape, target=target, **kwargs
    )
    module = build_kernel(call, target)
    arrays = [q, k, v] + ([] if mask is None else [mask])
    out = tvm.runtime.tensor(np.zeros(call.out_shape, np.float32))
    module["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def inputs(rng, shape: AttentionShape, mask_shape, masked: float = 0.2):
    act = (shape.batch, shape.seq, shape.hidden)
    q, k, v = (rng.standard_normal(act).astype(np.float32) for _ in range(3))
    if mask_shape is None:
        return q, k, v, None
    mask = np.where(rng.random(mask_shape) < masked, NEG, np.float32(0)).astype(np.float32)
    return q, k, v, mask


@pytest.mark.parametrize(
    "b, s, h, d, mask_shape",
    [
        (1, 128, 12, 32, (1, 1, 128, 128)),  # MiniLM: the shape this kernel is for
        (1, 128, 12, 32, None),
        (2, 13, 3, 16, (2, 1, 1, 13)),  # padding mask per batch row; s not a multiple of 8
        (1, 37, 5, 40, (1, 5, 37, 37)),  # a full per-head mask; 16 + 16 + 8 output columns
        (2, 8, 1, 64, (8, 8)),  # 2-D mask, right-aligned
        (1, 30, 2, 24, (30,)),  # s pads to 32 inside a 16-wide tile
        (1, 1, 1, 8, None),  # one token
    ],
)
def test_matches_numpy(target, rng, b, s, h, d, mask_shape):
    shape = AttentionShape(b, s, h, d)
    q, k, v, mask = inputs(rng, shape, mask_shape)
    scale = 1.0 / np.sqrt(d)
    out = run(shape, scale, q, k, v, mask, target)
    np.testing.assert_allclose(
        out, attention_ref(q, k, v, mask, shape, scale), rtol=1e-4, atol=2e-5
    )


@pytest.mark.parametrize("b, s, h, d", [(1, 197, 3, 64), (2, 13, 3, 16)])
def test_strided_layouts(target, rng, b, s, h, d):
    """q, k, v read where a packed ``[s, b, 3 * h * d]`` in-projection holds them (what
    nn.MultiheadAttention exports, sequence first), the output written ``[s, b, h, d]``;
    197 tokens: the ViT-Ti/16 shape, no vector width divides it."""
    shape = AttentionShape(b, s, h, d)
    e = h * d
    packed = rng.standard_normal((s, b, 3 * e)).astype(np.float32)
    layouts = [Layout(i * e, 3 * e, d, b * 3 * e) for i in range(3)]  # q, k, v thirds
    layouts.append(Layout(0, e, d, b * e))  # out [s, b, h, d]
    call = attention_kernel(shape, 0.125, q_shape=packed.shape, k_shape=packed.shape,
                            v_shape=packed.shape, out_shape=(s, b, e), layouts=layouts,
                            target=target)  # fmt: skip
    module = build_kernel(call, target)
    out = tvm.runtime.tensor(np.zeros((s, b, e), np.float32))
    arg = tvm.runtime.tensor(packed)
    module["main"](arg, arg, arg, out)
    q, k, v = (packed[:, :, i * e : (i + 1) * e].transpose(1, 0, 2) for i in range(3))
    expected = attention_ref(q, k, v, None, shape, 0.125)  # [b, s, e]
    np.testing.assert_allclose(out.numpy().transpose(1, 0, 2), expected, rtol=1e-4, atol=2e-5)


def test_layout_outside_its_buffer_is_refused():
    shape = AttentionShape(1, 8, 2, 16)
    with pytest.raises(ValueError, match="does not hold"):
        attention_kernel(shape, 0.125, layouts=(Layout(16, 64, 16, 32), None, None, None))


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize(
    "b, s, h, d, mask_shape",
    [
        (1, 128, 12, 32, (1, 1, 128, 128)),
        (2, 13, 3, 16, (2, 1, 1, 13)),  # a 32-column tile that is mostly padding
        (1, 37, 5, 40, (1, 5, 37, 37)),  # 32 + 8 output columns; 32 + 8 score columns
        (1, 100, 2, 64, None),  # scores: 3 x 32 + one 8-wide rest (sp = 104)
    ],
)
def test_isa_tiles(rng, isa, b, s, h, d, mask_shape):
    """``mr x 32`` tiles (2 zmm a row) on AVX-512, ``mr x 16`` (2 ymm) on AVX2: built for either
    on any machine, checked for zmm FMAs, and run against the reference where this CPU can."""
    from .isa import ZMM, count, isa_target, run_target

    shape = AttentionShape(b, s, h, d)
    call = attention_kernel(shape, 0.125, mask_shape=mask_shape, target=isa_target(isa))
    rows = (12 if d >= 64 else 6) if isa == "avx512" else 5
    assert call.info["tile"] == (rows, 32 if isa == "avx512" else 16)
    asm = build_kernel(call, isa_target(isa)).inspect_source("asm")
    assert (count(r"vfmadd\w+\s+[^\n]*" + ZMM, asm) > 0) == (isa == "avx512")
    q, k, v, mask = inputs(rng, shape, mask_shape)
    out = run(shape, 0.125, q, k, v, mask, run_target(isa))
    np.testing.assert_allclose(
        out, attention_ref(q, k, v, mask, shape, 0.125), rtol=1e-4, atol=2e-5
    )


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    b=st.integers(1, 2),
    s=st.integers(8, 70),
    h=st.integers(1, 12),
    d=st.sampled_from([16, 24, 32, 48, 64]),
    mr=st.integers(1, 6),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(target, b, s, h, d, mr, masked, seed):
    rng = np.random.default_rng(seed)
    shape = AttentionShape(b, s, h, d)
    q, k, v, mask = inputs(rng, shape, (b, 1, s, s) if masked else None, masked=0.3)
    out = run(shape, 0.125, q, k, v, mask, target, mr=mr)
    np.testing.assert_allclose(
        out, attention_ref(q, k, v, mask, shape, 0.125), rtol=1e-4, atol=2e-5
    )


@pytest.mark.parametrize("mr", [7, 9, 12])
def test_wide_row_tiles_on_avx512(rng, mr):
    """7-12 query rows a tile (24 zmm accumulators at 12) where the target has AVX-512; the
    16-register AVX2 form refuses them by name."""
    from .isa import isa_target, run_target

    shape = AttentionShape(1, 45, 3, 64)
    q, k, v, mask = inputs(rng, shape, (1, 1, 45, 45), masked=0.3)
    out = run(shape, 0.125, q, k, v, mask, run_target("avx512"), mr=mr)
    np.testing.assert_allclose(
        out, attention_ref(q, k, v, mask, shape, 0.125), rtol=1e-4, atol=2e-5
    )
    with pytest.raises(ValueError, match="mr must be 1..6"):
        attention_kernel(shape, 0.125, target=isa_target("avx2"), mr=mr)


def test_fully_masked_rows_are_uniform(target, rng):
    """TVM and onnxruntime give a row masked out entirely uniform weights (x - max = 0)."""
    shape = AttentionShape(1, 20, 2, 16)
    q, k, v, mask = inputs(rng, shape, (1, 1, 20, 20))
    mask[0, 0, 3, :] = NEG
    mask[0, 0, 7, :] = NEG
    out = run(shape, 0.25, q, k, v, mask, target)
    np.testing.assert_allclose(out, attention_ref(q, k, v, mask, shape, 0.25), rtol=1e-4, atol=2e-5)
    uniform = v.reshape(20, 2, 16).mean(axis=0).reshape(32)
    np.testing.assert_allclose(out[0, 3], uniform, rtol=1e-4, atol=1e-5)


def test_nan_propagates_to_its_row_only(target, rng):
    shape = AttentionShape(1, 16, 2, 16)
    q, k, v, mask = inputs(rng, shape, (1, 1, 16, 16), masked=0.0)
    q[0, 5, :16] = np.nan  # head 0, query 5
    mask[0, 0, 9, 4] = np.nan  # query 9, both heads
    out = run(shape, 0.25, q, k, v, mask, target)
    assert np.isnan(out[0, 5, :16]).all() and np.isfinite(out[0, 5, 16:]).all()
    assert np.isnan(out[0, 9]).all()
    finite = np.ones(16, bool)
    finite[[5, 9]] = False
    expected = attention_ref(q, k, v, mask, shape, 0.25)
    np.testing.assert_allclose(out[0, finite], expected[0, finite], rtol=1e-4, atol=2e-5)


def test_large_scores_do_not_overflow(target, rng):
    """Scores in the thousands: only the row max makes exp representable."""
    shape = AttentionShape(1, 24, 1, 16)
    q, k, v, _ = inputs(rng, shape, None)
    out = run(shape, 300.0, q, k, v, None, target)
    np.testing.assert_allclose(
        out, attention_ref(q, k, v, None, shape, 300.0), rtol=1e-3, atol=1e-4
    )


def test_reads_any_row_major_layout(target, rng):
    """q, k, v as [b, s, h, d] (a reshape the pass reads through) and out as [b, s, h, d]."""
    shape = AttentionShape(1, 16, 2, 16)
    q, k, v, mask = inputs(rng, shape, (1, 1, 16, 16))
    four = (1, 16, 2, 16)
    call = attention_kernel(
        shape, 0.25, mask_shape=mask.shape, q_shape=four, k_shape=(16, 32), out_shape=four,
        target=target,
    )  # fmt: skip
    module = build_kernel(call, target)
    out = tvm.runtime.tensor(np.zeros(four, np.float32))
    args = [q.reshape(four), k.reshape(16, 32), v, mask]
    module["main"](*[tvm.runtime.tensor(a) for a in args], out)
    expected = attention_ref(q, k, v, mask, shape, 0.25).reshape(four)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=2e-5)


def test_parallel_over_heads_is_deterministic(target, rng):
    shape = AttentionShape(2, 24, 3, 16)
    q, k, v, mask = inputs(rng, shape, (2, 1, 1, 24))
    call = attention_kernel(shape, 0.25, mask_shape=mask.shape, target=target, parallel=True)
    module = build_kernel(call, target)
    args = [tvm.runtime.tensor(a) for a in (q, k, v, mask)]
    outs = []
    for _ in range(4):
        out = tvm.runtime.tensor(np.zeros(call.out_shape, np.float32))
        module["main"](*args, out)
        outs.append(out.numpy())
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(
        outs[0], attention_ref(q, k, v, mask, shape, 0.25), rtol=1e-4, atol=2e-5
    )


def test_rejects_what_it_cannot_do(target):
    with pytest.raises(ValueError, match="multiple of 8"):
        attention_kernel(AttentionShape(1, 16, 2, 12), 1.0, target=target)
    with pytest.raises(ValueError, match="broadcast"):
        attention_kernel(AttentionShape(1, 16, 2, 16), 1.0, mask_shape=(1, 1, 16, 1))
    with pytest.raises(ValueError, match="broadcast"):
        attention_kernel(AttentionShape(1, 16, 2, 16), 1.0, mask_shape=(1, 3, 16, 16))
    with pytest.raises(ValueError, match="does not hold"):
        attention_kernel(AttentionShape(1, 16, 2, 16), 1.0, q_shape=(1, 16, 16))


def test_exp2_polynomial(target):
    """2^x for x <= 0 within 3e-7 relative; clamps at 2^-124; NaN stays NaN."""
    n = 4096
    x = np.concatenate([-np.linspace(0, 130, n - 8), [np.nan, -np.inf, 0, -0.0, -124, -200]])
    x = np.concatenate([x, [-1e-30, -0.5]]).astype(np.float32)

    @T.prim_func
    def kernel(a: T.Buffer((n,), "float32"), o: T.Buffer((n,), "float32")):
        for i in range(n // 8):
            o[T.ramp(i * 8, 1, 8)] = _exp2_nonpositive(a[T.ramp(i * 8, 1, 8)], 8)

    func = kernel.with_attr("global_symbol", "main")
    module = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros(n, np.float32))
    module["main"](tvm.runtime.tensor(x), out)
    got = out.numpy().astype(np.float64)
    ref = np.exp2(x.astype(np.float64))
    normal = x >= -124
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) < 3e-7
    assert np.isnan(got[np.isnan(x)]).all()
    below = x < -124
    assert (got[below] == 2.0**-124).all()
    assert (got[x == 0] == 1.0).all()
