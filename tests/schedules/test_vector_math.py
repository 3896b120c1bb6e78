"""Vector exp / erf polynomials: float32 accuracy over the whole range, edge cases kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from tvm_sparse.schedules.vector_math import install_llvm_lowering

N = 4096


def _kernel(fn: str, target):
    install_llvm_lowering()
    a = te.placeholder((N,), name="a")
    b = te.compute((N,), lambda i: getattr(te, fn)(a[i]), name="b")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    (loop,) = sch.get_loops(sch.get_sblock("b"))
    _, lanes = sch.split(loop, factors=[None, 8])
    sch.vectorize(lanes)  # the lowering must produce the vector form
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target)["main"]


def _apply(kernel, x: np.ndarray) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros(N, dtype=np.float32))
    kernel(tvm.runtime.tensor(x.astype(np.float32)), out)
    return out.numpy()


EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30], dtype=np.float32)


def _inputs(rng, lo, hi) -> np.ndarray:
    body = rng.uniform(lo, hi, N - EDGES.size).astype(np.float32)
    return np.concatenate([body, EDGES])


def _relative_error(actual, expected) -> np.ndarray:
    return np.abs(actual - expected) / np.maximum(np.abs(expected), np.finfo(np.float32).tiny)


def test_exp_is_float32_accurate(target, rng):
    x = _inputs(rng, -87.0, 88.7)
    y = _apply(_kernel("exp", target), x)
    ref = np.exp(x.astype(np.float64))
    finite = np.isfinite(ref) & (ref > np.finfo(np.float32).tiny) & (ref < 3.4e38)
    assert _relative_error(y[finite], ref[finite]).max() < 5e-7  # a few ulps
    assert np.isnan(y[-7]) and y[-6] == np.inf and y[-5] == 0.0
    assert y[-4] == 1.0 and y[-3] == 1.0


@pytest.mark.parametrize("lo, hi", [(-100.0, 100.0), (-120.0, -88.0)])
def test_exp_overflows_and_underflows_like_float32(target, rng, lo, hi):
    x = _inputs(rng, lo, hi)
    y = _apply(_kernel("exp", target), x)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(np.float32)
    normal = np.isfinite(x) & (np.abs(ref) >= np.finfo(np.float32).tiny)
    np.testing.assert_allclose(y[normal], ref[normal], rtol=5e-7)
    assert np.all(y[np.isfinite(x) & (ref < np.finfo(np.float32).tiny)] <= 1.2e-38)


@pytest.mark.parametrize("lo, hi", [(-6.0, 6.0), (-1e-3, 1e-3)])
def test_erf_is_float32_accurate(target, rng, lo, hi):
    x = _inputs(rng, lo, hi)
    y = _apply(_kernel("erf", target), x)
    ref = np.vectorize(math.erf)(np.nan_to_num(x.astype(np.float64)))
    ok = np.isfinite(x) & (x != 0)
    assert _relative_error(y[ok], ref[ok]).max() < 5e-7
    assert np.isnan(y[-7]) and y[-6] == 1.0 and y[-5] == -1.0 and y[-4] == 0.0


def test_install_is_idempotent(target):
    install_llvm_lowering()
    install_llvm_lowering()
    y = _apply(_kernel("exp", target), np.zeros(N, dtype=np.float32))
    assert np.all(y == 1.0)
