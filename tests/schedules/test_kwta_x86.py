"""The radix-select k-WTA kernel against the numpy reference and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse import models
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.kwta_x86 import kwta_kernel, kwta_maxpool_kernel

from ..conftest import ort_run


def _data(kind: str, rng: np.random.Generator, shape) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "ties":  # few distinct integers: many values equal the k-th
        return rng.integers(-3, 4, shape).astype(np.float32)
    if kind == "negative":
        return -rng.uniform(0.1, 100.0, shape).astype(np.float32)
    if kind == "equal":
        return np.full(shape, 1.5, np.float32)
    raise ValueError(kind)


def _check(target, x: np.ndarray, k: int, boost: np.ndarray | None = None) -> np.ndarray:
    call = kwta_kernel(x.shape[0], x.shape[1], k, boost)
    got = run_kernel(call, target, x)
    np.testing.assert_array_equal(got, models.kwta_reference(x, k, boost))
    return got


@settings(max_examples=12, deadline=None)
@given(
    batch=st.sampled_from([1, 3, 8]),
    n=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["normal", "ties", "negative", "equal"]),
    boosted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_reference(target, batch, n, k_frac, kind, boosted, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    x = _data(kind, rng, (batch, n))
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    _check(target, x, k, boost)


@pytest.mark.parametrize("k", [1, 17, 600])
def test_k_extremes_and_ties(target, rng, k):
    x = rng.integers(-5, 6, (3, 600)).astype(np.float32)
    got = _check(target, x, k)
    kth = -np.sort(-x, axis=1)[:, k - 1 : k]
    assert np.all((got != 0).sum(axis=1) <= (x >= kth).sum(axis=1))
    assert np.all((x >= kth).sum(axis=1) >= k)  # ties: at least k winners


@pytest.mark.parametrize("boosted", [False, True])
def test_gsc_size_uses_the_wide_top_digit(target, rng, boosted):
    n, k = 64 * 28 * 28, 4767
    x = rng.standard_normal((2, n)).astype(np.float32)
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    assert kwta_kernel(2, n, k, boost).info["digits"] == (11, 7)
    got = _check(target, x, k, boost)
    assert np.all((got != 0).sum(axis=1) == k)  # continuous values: exactly k winners


def test_signed_zeros_tie(target):
    x = np.array([[-0.0, 0.0, -0.0, -1.0, -2.0, 3.0]], np.float32)
    got = _check(target, x, 3)  # the 3rd largest is a zero: every zero wins
    np.testing.assert_array_equal(got != 0, [[False, False, False, False, False, True]])


def test_nan_follows_onnxruntime(target):
    """NaN ranks above +inf in onnxruntime's TopK, and NaN >= t is false."""
    x = np.array(
        [
            [1.0, np.nan, 3.0, 2.0, 5.0, 0.0, -1.0, 4.0],  # one NaN takes a winner's place
            [1.0, np.nan, np.nan, np.nan, 5.0, 0.0, -1.0, 4.0],  # k-th is NaN: all zero
            [np.inf, -np.inf, 2.0, -np.nan, 7.0, 7.0, 1.0, 0.5],
        ],
        np.float32,
    )
    model = models.kwta_model(x.shape, 3)
    got = run_kernel(kwta_kernel(3, 8, 3), target, x)
    np.testing.assert_array_equal(got, ort_run(model, x))


@pytest.mark.parametrize(
    "args",
    [(1, 10, 0, None), (1, 10, 11, None), (1, 10, 3, np.ones(9)), (0, 10, 3, None)],
)
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        kwta_kernel(*args)


def _maxpool_reference(y: np.ndarray, size, strides) -> np.ndarray:
    """NCHW max-pool, no padding, floor mode."""
    (ph, pw), (sh, sw) = size, strides
    b, c, h, w = y.shape
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.full((b, c, oh, ow), -np.inf, np.float32)
    for i in range(ph):
        for j in range(pw):
            out = np.maximum(
                out, y[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            )
    return out


@settings(max_examples=10, deadline=None)
@given(
    batch=st.sampled_from([1, 2]),
    chw=st.tuples(st.integers(1, 5), st.integers(2, 9), st.integers(2, 9)),
    pool=st.sampled_from([((2, 2), (2, 2)), ((3, 2), (1, 2)), ((2, 3), (3, 1))]),
    k_frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["normal", "ties", "negative"]),
    boosted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kwta_maxpool_matches_reference(target, batch, chw, pool, k_frac, kind, boosted, seed):
    (ph, pw), strides = pool
    c, h, w = chw
    h, w = max(h, ph), max(w, pw)
    n = c * h * w
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    x = _data(kind, rng, (batch, c, h, w))
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    call = kwta_maxpool_kernel(x.shape, (c, h, w), k, (ph, pw), strides, boost)
    ranked_boost = None if boost is None else boost.reshape(1, c, h, w)
    expected = _maxpool_reference(models.kwta_reference(x, k, ranked_boost), (ph, pw), strides)
    assert call.out_shape == expected.shape
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_kwta_maxpool_gsc_size(target, rng):
    x = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)
    call = kwta_maxpool_kernel(x.shape, (64, 28, 28), 4767, (2, 2))
    expected = _maxpool_reference(models.kwta_reference(x, 4767), (2, 2), (2, 2))
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_kwta_reads_any_row_major_input_shape(target, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    call = kwta_kernel(2, 105, 20, x_shape=x.shape)
    expected = models.kwta_reference(x, 20).reshape(2, 105)
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        kwta_kernel(2, 100, 5, x_shape=(2, 99))
    with pytest.raises(ValueError):
        kwta_maxpool_kernel((1, 2, 3, 3), (2, 3, 3), 4, (4, 4))
    with pytest.raises(ValueError):
        kwta_maxpool_kernel((1, 18), (2, 3, 3), 0, (2, 2))
