"""Complementary packing: lossless for any mask, optimal for complementary ones; the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.formats.complementary import (
    ComplementaryPacked,
    choose_num_groups,
    packing_stats,
    sparse_sparse_reference,
)
from tvm_sparse.sparsify import complementary_mask, random_mask


@st.composite
def sparse_weights(draw, max_n: int = 24, max_k: int = 40) -> np.ndarray:
    """Random [N, K] float32 weights: empty, one non-zero, dense, random or complementary masks,
    some with NaN/Inf."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(0, max_k))
    kind = draw(st.sampled_from(["zero", "one", "dense", "random", "random", "complementary"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((n, k)).astype(np.float32)
    if kind == "zero":
        mask = np.zeros((n, k), dtype=bool)
    elif kind == "one":
        mask = np.zeros((n, k), dtype=bool)
        if n and k:
            mask[rng.integers(n), rng.integers(k)] = True
    elif kind == "dense":
        mask = np.ones((n, k), dtype=bool)
    elif kind == "complementary" and n and k:
        mask = complementary_mask((n, k), draw(st.sampled_from([0.05, 0.2, 0.25, 0.5])), seed=rng)
    else:
        mask = rng.random((n, k)) < draw(st.floats(0.0, 1.0))
    w = np.where(mask, w, np.float32(0))
    if w.size and draw(st.booleans()):
        special = rng.random((n, k)) < 0.05
        w[special] = rng.choice(
            np.array([np.nan, np.inf, -np.inf], dtype=np.float32), special.sum()
        )
    return w


def assert_bit_exact(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a.view(np.uint32), (b + np.float32(0)).view(np.uint32))  # -0.0 -> 0.0


@settings(max_examples=80, deadline=None)
@given(sparse_weights(), st.booleans(), st.sampled_from([None, 0, 1, 2, 5, 100]))
def test_round_trip_is_lossless(w, backfill, max_groups):
    p = ComplementaryPacked.from_dense(w, max_groups, backfill=backfill)
    assert_bit_exact(p.to_dense(), w)
    assert max_groups is None or p.n_groups <= max_groups
    n, k = w.shape
    empty = p.owner == n
    assert (p.packed_values[empty] == 0).all()
    assert p.packed_nnz + p.residual_nnz == np.count_nonzero(w)
    assert p.residual_indptr.shape == (k + 1,) and p.residual_indptr[-1] == p.residual_nnz
    for r in np.flatnonzero(p.row_group >= 0):
        assert (p.owner[p.row_group[r], np.flatnonzero(w[r] != 0)] == r).all()
    if not backfill:  # every row is whole in a group or whole in the residual
        res_rows = set(p.residual_indices.tolist())
        assert all(p.row_group[r] < 0 for r in res_rows)
        assert all(r in res_rows for r in np.flatnonzero((w != 0).any(axis=1) & (p.row_group < 0)))


@settings(max_examples=40, deadline=None)
@given(sparse_weights(), st.sampled_from([None, 0, 1, 3, 8]))
def test_backfill_residual_is_column_overflow(w, max_groups):
    """With backfill, budget G leaves exactly sum_k max(0, c_k - G): the least possible."""
    p = ComplementaryPacked.from_dense(w, max_groups)
    col = np.count_nonzero(w, axis=0)
    assert p.residual_nnz == int(np.maximum(col - p.n_groups, 0).sum())
    s = packing_stats(w, max_groups)
    assert (s.n_groups, s.residual_nnz, s.packed_nnz) == (p.n_groups, p.residual_nnz, p.packed_nnz)
    assert s.fill_ratio == pytest.approx(p.fill_ratio)
    assert s.whole_row_fraction == pytest.approx(p.whole_row_fraction)


@settings(max_examples=30, deadline=None)
@given(sparse_weights(max_n=16, max_k=16), st.booleans())
def test_default_budget_minimises_estimated_cost(w, backfill):
    k = w.shape[1]

    def cost(g: int) -> float:
        p = ComplementaryPacked.from_dense(w, g, backfill=backfill)
        return p.n_groups * k + 2.0 * p.residual_nnz

    chosen = ComplementaryPacked.from_dense(w, backfill=backfill)
    assert chosen.n_groups == choose_num_groups(w != 0, backfill=backfill)
    best = min(cost(g) for g in range(w.shape[0] + 1))
    assert chosen.n_groups * k + 2.0 * chosen.residual_nnz == best


@pytest.mark.parametrize(
    ("shape", "density"),
    [((1500, 1600), 0.05), ((1000, 1600), 0.1), ((200, 64 * 25), 0.02), ((60, 300), 0.25)],
)
def test_complementary_masks_pack_perfectly(shape, density):
    mask = complementary_mask(shape, density, seed=3)
    w = np.where(mask, np.float32(1.5), np.float32(0))
    p = ComplementaryPacked.from_dense(w)
    assert p.n_groups == round(shape[0] * density)
    assert p.residual_nnz == 0
    assert p.fill_ratio >= 0.99
    assert_bit_exact(p.to_dense(), w)


def test_partial_last_group_fits_when_budget_allows():
    mask = complementary_mask((1510, 1600), 0.05, seed=0)  # 75 full groups + 10 units
    p = ComplementaryPacked.from_dense(mask.astype(np.float32), max_groups=76)
    assert p.n_groups == 76 and p.residual_nnz == 0


def test_random_mask_packs_densely_with_small_residual():
    mask = random_mask((1500, 1600), 0.05, seed=1)
    p = ComplementaryPacked.from_dense(mask.astype(np.float32))
    assert p.fill_ratio > 0.9 and p.residual_fraction < 0.07
    whole_only = ComplementaryPacked.from_dense(mask.astype(np.float32), backfill=False)
    assert whole_only.residual_nnz >= p.residual_nnz


def test_conv_weight_is_flattened_oihw():
    rng = np.random.default_rng(0)
    mask = complementary_mask((64, 16, 5, 5), 0.2, seed=rng)
    w = np.where(mask, rng.standard_normal(mask.shape), 0).astype(np.float32)
    p = ComplementaryPacked.from_conv_weight(w)
    assert p.shape == (64, 16, 5, 5) and p.n_in == 16 * 25
    assert_bit_exact(p.to_dense(), w)
    assert_bit_exact(p.to_matrix(), w.reshape(64, -1))
    assert p.residual_nnz == 0 and p.n_groups == 13  # 64 / 5 -> 12 full groups + 4 units


def test_from_dense_rejects_4d():
    with pytest.raises(ValueError, match="from_conv_weight"):
        ComplementaryPacked.from_dense(np.zeros((2, 2, 3, 3), np.float32))


@pytest.mark.parametrize(("n", "dtype"), [(255, np.uint8), (256, np.uint16), (70000, np.uint32)])
def test_owner_dtype_holds_n_plus_sentinel(n, dtype):
    w = np.zeros((n, 2), np.float32)
    w[n - 1, 0] = 1.0
    p = ComplementaryPacked.from_dense(w, max_groups=1)
    assert p.owner.dtype == dtype
    assert p.owner[0, 0] == n - 1 and p.owner[0, 1] == n == p.empty_owner


def test_nan_and_inf_are_carried():
    w = np.zeros((4, 6), np.float32)
    w[0, 1], w[1, 1], w[2, 3] = np.nan, np.inf, -np.inf
    bits = np.array([0x7FC01234], dtype=np.uint32).view(np.float32)[0]  # a NaN payload
    w[3, 5] = bits
    p = ComplementaryPacked.from_dense(w)
    assert p.nnz == 4
    assert_bit_exact(p.to_dense(), w)


def test_views_agree_with_packed_arrays():
    rng = np.random.default_rng(5)
    w = np.where(rng.random((50, 70)) < 0.3, rng.standard_normal((50, 70)), 0).astype(np.float32)
    p = ComplementaryPacked.from_dense(w, max_groups=8)
    view = p.by_input()
    assert view.values.shape == (70, 8) and view.values.flags.c_contiguous
    assert np.array_equal(view.owner, p.owner.T)
    indptr, indices, values = p.residual_by_output()
    dense = np.zeros_like(w)
    for r in range(50):
        sl = slice(int(indptr[r]), int(indptr[r + 1]))
        dense[r, indices[sl].astype(np.int64)] = values[sl]
    rebuilt = dense.copy()
    g, c = np.nonzero(p.owner != 50)
    rebuilt[p.owner[g, c].astype(np.int64), c] = p.packed_values[g, c]
    assert np.array_equal(rebuilt, w)
    assert p.nbytes == sum(
        a.nbytes
        for a in (p.packed_values, p.owner, p.residual_indptr, view.residual_indices, values)
    )
    stats = p.stats()
    assert stats["n_groups"] == 8 and stats["residual_nnz"] == p.residual_nnz


@settings(max_examples=40, deadline=None)
@given(sparse_weights(max_n=30, max_k=50), st.integers(0, 2**32 - 1), st.sampled_from([None, 1]))
def test_sparse_sparse_reference_matches_dense(w, seed, max_groups):
    w = np.nan_to_num(w, nan=0.5, posinf=2.0, neginf=-2.0)
    n, k = w.shape
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(k) < 0.3, rng.standard_normal(k), 0).astype(np.float32)
    idx = np.flatnonzero(x)
    p = ComplementaryPacked.from_dense(w, max_groups)
    y = sparse_sparse_reference(idx, x[idx], p, n)
    assert y.shape == (n,) and y.dtype == np.float32
    np.testing.assert_allclose(y, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


def test_sparse_sparse_reference_uses_residual_and_checks_inputs():
    rng = np.random.default_rng(2)
    w = np.where(rng.random((40, 60)) < 0.5, rng.standard_normal((40, 60)), 0).astype(np.float32)
    p = ComplementaryPacked.from_dense(w, max_groups=3)
    assert p.residual_nnz > 0
    x = rng.standard_normal(60).astype(np.float32)
    idx = np.arange(60)
    np.testing.assert_allclose(sparse_sparse_reference(idx, x, p), w @ x, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        sparse_sparse_reference(idx, x, p, n_out=41)
    with pytest.raises(IndexError):
        sparse_sparse_reference(np.array([60]), np.array([1.0]), p)
