"""Masks and pruning: shapes, densities, and the complementary structure the packer relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.sparsify import apply_mask, complementary_mask, prune_l1, random_mask


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 80),
    st.sampled_from([0.02, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0]),
    st.integers(0, 2**32 - 1),
)
def test_complementary_mask_groups_are_disjoint_and_cover(n, k, density, seed):
    mask = complementary_mask((n, k), density, seed=seed)
    s = max(1, round(1 / density))
    assert mask.shape == (n, k) and mask.dtype == bool
    col = mask.sum(axis=0)
    full_groups = n // s
    # every input is used once per full group, plus at most once by the incomplete group
    assert (col >= full_groups).all() and (col <= -(-n // s)).all()
    rows = mask.sum(axis=1)
    assert (rows >= k // s).all() and (rows <= -(-k // s)).all()
    if n % s == 0:
        assert (col == n // s).all()


def test_complementary_mask_members_are_disjoint():
    mask = complementary_mask((40, 100), 0.25, seed=0)  # 10 groups of 4
    overlap = mask.astype(int) @ mask.T.astype(int)
    disjoint = overlap == 0
    # each unit is disjoint from exactly its 3 partners (random units almost always overlap)
    partners = disjoint.sum(axis=1)
    assert (partners >= 3).all()
    for row in np.flatnonzero(partners == 3):
        group = np.r_[row, np.flatnonzero(disjoint[row])]
        assert (mask[group].sum(axis=0) == 1).all()  # the 4 members tile the inputs


def test_complementary_mask_conv_shape_and_edges():
    mask = complementary_mask((64, 64, 5, 5), 0.2, seed=1)
    assert mask.shape == (64, 64, 5, 5)
    assert mask.reshape(64, -1).sum(axis=1).tolist() == [320] * 64
    assert not complementary_mask((4, 5), 0.0).any()
    assert complementary_mask((4, 5), 1.0).all()
    with pytest.raises(ValueError):
        complementary_mask((4, 5), 1.5)
    with pytest.raises(ValueError):
        complementary_mask((4,), 0.5)
    a = complementary_mask((30, 40), 0.1, seed=7)
    assert np.array_equal(a, complementary_mask((30, 40), 0.1, seed=7))


def test_random_mask_fixed_count_per_unit():
    mask = random_mask((50, 3, 3, 3), 0.3, seed=0)
    assert mask.shape == (50, 3, 3, 3)
    assert (mask.reshape(50, -1).sum(axis=1) == round(0.3 * 27)).all()
    assert not random_mask((3, 4), 0.0).any()


def test_apply_mask_keeps_dtype_and_checks_shape():
    w = np.arange(1, 7, dtype=np.float16).reshape(2, 3)
    mask = np.array([[True, False, True], [False, True, False]])
    out = apply_mask(w, mask)
    assert out.dtype == np.float16
    assert out.tolist() == [[1, 0, 3], [0, 5, 0]]
    with pytest.raises(ValueError):
        apply_mask(w, mask.T)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 20),
    st.integers(1, 30),
    st.floats(0, 1),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_prune_l1_keeps_largest(n, k, density, per_output, seed):
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    out = prune_l1(w, density, per_output=per_output)
    kept = out != 0
    assert np.array_equal(out[kept], w[kept])
    groups = [(kept[r], w[r]) for r in range(n)] if per_output else [(kept, w)]
    for g_kept, g_w in groups:
        assert g_kept.sum() == round(density * g_w.size)
        if g_kept.any() and (~g_kept).any():
            assert np.abs(g_w[g_kept]).min() >= np.abs(g_w[~g_kept]).max()
