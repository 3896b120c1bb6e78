"""The fused residual add + layer norm kernel against a float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules.kernel import build_kernel
from tvm_sparse.schedules.layernorm_x86 import add_layer_norm_kernel
from tvm_sparse.target import resolve_target

TARGET = resolve_target("llvm")


def _reference(a, b, gamma, beta, eps):
    x = (a.astype(np.float64) + b.astype(np.float64)).reshape(-1, gamma.size)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _run(a, b, gamma, beta, eps, out_shape, target=TARGET):
    import tvm

    call = add_layer_norm_kernel(a.shape, b.shape, out_shape, eps, target=target)
    func = build_kernel(call, target)["main"]
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32))
    args = [tvm.runtime.tensor(v) for v in (a, b, gamma, beta)]
    func(*args, out)
    return out.numpy()


@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 9),
    channels=st.sampled_from([1, 7, 8, 13, 64, 384]),
    eps=st.sampled_from([1e-12, 1e-5]),
    seed=st.integers(0, 100),
)
def test_add_layer_norm_matches_reference(rows, channels, eps, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((1, rows, channels)).astype(np.float32) * 3
    b = rng.standard_normal((rows, channels)).astype(np.float32)  # a reshape's source: 2-D
    gamma = rng.standard_normal(channels).astype(np.float32)
    beta = rng.standard_normal(channels).astype(np.float32)
    out = _run(a, b, gamma, beta, eps, (1, rows, channels))
    ref = _reference(a, b, gamma, beta, eps).reshape(1, rows, channels)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_nan_stays_in_its_row_and_constant_row_gives_beta():
    a = np.ones((3, 16), np.float32)
    b = np.zeros((3, 16), np.float32)
    a[1, 5] = np.nan
    gamma = np.full(16, 2.0, np.float32)
    beta = np.arange(16, dtype=np.float32)
    out = _run(a, b, gamma, beta, 1e-5, (3, 16))
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]], np.broadcast_to(beta, (2, 16)), atol=1e-6)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="do not match"):
        add_layer_norm_kernel((2, 8), (2, 9), (2, 8), 1e-5)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_isa_variants(isa):
    """16 lanes (zmm) on AVX-512, 8 (ymm) on AVX2: built and checked for 512-bit code on any
    machine, run against the reference where this CPU can (384 channels = 24 x 16; 13 is a tail
    of each width)."""
    from .isa import ZMM, asm_of, count, isa_target, run_target

    call = add_layer_norm_kernel((3, 397), (3, 397), (3, 397), 1e-5, target=isa_target(isa))
    assert call.info["lanes"] == (16 if isa == "avx512" else 8)
    assert (count(ZMM, asm_of(call, isa_target(isa))) > 0) == (isa == "avx512")
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((3, 397)).astype(np.float32) for _ in range(2))
    gamma, beta = (rng.standard_normal(397).astype(np.float32) for _ in range(2))
    got = _run(a, b, gamma, beta, 1e-5, (3, 397), run_target(isa))
    np.testing.assert_allclose(got, _reference(a, b, gamma, beta, 1e-5), rtol=1e-4, atol=1e-4)


def _run_single(make, x, gamma, beta, eps, target=TARGET):
    import tvm

    func = build_kernel(make(x.shape, eps, target=target), target)["main"]
    out = tvm.runtime.tensor(np.zeros(x.shape, np.float32))
    func(*[tvm.runtime.tensor(v) for v in (x, gamma, beta)], out)
    return out.numpy()


def _reference_axis(x, gamma, beta, eps, axis):
    x = x.astype(np.float64)
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(bshape) + beta.reshape(bshape)


@pytest.mark.parametrize(
    "shape",  # pixels: full vectors only, vectors + a tail, fewer than one vector; batch 2
    [(1, 8, 4, 8), (1, 13, 7, 7), (1, 5, 1, 3), (2, 3, 9, 5), (1, 96, 5, 9), (1, 4, 33)],
)
def test_channels_first_layer_norm_matches_reference(shape):
    from tvm_sparse.schedules.layernorm_x86 import channels_first_layer_norm_kernel

    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    gamma = rng.standard_normal(shape[1]).astype(np.float32)
    beta = rng.standard_normal(shape[1]).astype(np.float32)
    out = _run_single(channels_first_layer_norm_kernel, x, gamma, beta, 1e-6)
    np.testing.assert_allclose(out, _reference_axis(x, gamma, beta, 1e-6, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 768), (1, 13), (3, 40), (2, 1, 5)])
def test_layer_norm_rows_matches_reference(shape):
    from tvm_sparse.schedules.layernorm_x86 import layer_norm_kernel

    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    gamma = rng.standard_normal(shape[-1]).astype(np.float32)
    beta = rng.standard_normal(shape[-1]).astype(np.float32)
    out = _run_single(layer_norm_kernel, x, gamma, beta, 1e-5)
    np.testing.assert_allclose(out, _reference_axis(x, gamma, beta, 1e-5, -1), rtol=1e-4, atol=1e-4)
