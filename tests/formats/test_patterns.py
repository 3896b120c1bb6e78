"""Pattern detection finds exactly the structure a weight was built with."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.formats.patterns import (
    block_fills,
    detect_patterns,
    largest_partition,
    nm_max,
    satisfies_nm,
)
from tvm_sparse.sparsify import complementary_mask, random_mask

RNG = np.random.default_rng(1234)


def nm_weight(n: int, k: int, keep: int, m: int, rng=RNG) -> np.ndarray:
    """Exactly ``keep`` non-zeros in every aligned group of ``m`` along K."""
    scores = rng.random((n, k // m, m))
    mask = scores < np.sort(scores, axis=2)[:, :, keep : keep + 1]
    w = rng.standard_normal((n, k)).astype(np.float32) + 3.0  # no accidental zeros
    return np.where(mask.reshape(n, k), w, np.float32(0))


def block_weight(n: int, k: int, r: int, c: int, density: float, rng=RNG) -> np.ndarray:
    blocks = rng.random((n // r, k // c)) < density
    mask = np.kron(blocks, np.ones((r, c), dtype=bool)).astype(bool)
    return np.where(mask, np.float32(1.0), np.float32(0))


def fills(w: np.ndarray) -> dict[tuple[int, int], float]:
    return {(b.rows, b.cols): b.fill for b in detect_patterns(w).blocks}


@pytest.mark.parametrize(("keep", "m"), [(2, 4), (1, 4), (1, 2), (4, 8), (2, 8)])
def test_nm_is_detected_exactly(keep, m):
    w = nm_weight(64, 128, keep, m)
    p = detect_patterns(w)
    assert p.best_nm == (keep, m)
    assert p.nm_tight and p.summary == f"{keep}:{m}"
    assert satisfies_nm(w, keep, m) and not satisfies_nm(w, keep - 1, m)
    # exactly `keep` per group of m is also a balanced partition of K into K/m parts
    assert p.partitions == 128 // m and p.nnz_per_partition == keep


def test_nm_max_matches_brute_force():
    w = nm_weight(16, 40, 2, 4)
    w[3, 4:8] = [1.0, 1.0, 1.0, 0.0]  # 3 in one group of 4: breaks 2:4
    maxes = nm_max(w != 0)
    for m, n in maxes.items():
        padded = np.zeros((16, -(-40 // m) * m), bool)
        padded[:, :40] = w != 0
        assert n == padded.reshape(16, -1, m).sum(axis=2).max()
    assert not satisfies_nm(w, 2, 4) and satisfies_nm(w, 3, 4)


@pytest.mark.parametrize(("r", "c"), [(4, 4), (1, 8), (8, 1), (2, 2), (8, 8)])
def test_block_pattern_is_detected(r, c):
    w = block_weight(128, 256, r, c, 0.15)
    p = detect_patterns(w)
    assert p.best_block == (r, c)
    assert p.summary == f"block {r}x{c}"
    f = fills(w)
    for (br, bc), fill in f.items():
        if r % br == 0 and c % bc == 0:
            assert fill == 1.0  # sub-blocks of a full block are full


def test_block_fills_match_brute_force():
    mask = RNG.random((37, 53)) < 0.1
    for b in block_fills(mask):
        padded = np.zeros((-(-37 // 16) * 16, -(-53 // 16) * 16), bool)
        padded[:37, :53] = mask
        occ = padded.reshape(padded.shape[0] // b.rows, b.rows, -1, b.cols).any(axis=(1, 3))
        assert b.n_blocks == occ.sum()
        assert b.fill == pytest.approx(mask.sum() / (occ.sum() * b.rows * b.cols))


def test_partitioned_is_detected_with_largest_p():
    n, k, p_true, per = 32, 96, 4, 5
    mask = np.zeros((n, k), bool)
    size = k // p_true
    for row in range(n):
        for part in range(p_true):
            mask[row, part * size + RNG.choice(size, per, replace=False)] = True
    p = detect_patterns(np.where(mask, np.float32(2.0), 0))
    assert (p.partitions, p.nnz_per_partition) == (4, 5)  # 20 per row: no finer P divides it
    assert p.summary == "partitioned P=4"


def test_unbalanced_is_not_partitioned():
    mask = random_mask((32, 64), 0.25, seed=0)  # same count per row, random positions
    assert largest_partition(mask) == (None, None)
    assert largest_partition(np.zeros((3, 8), bool)) == (None, None)


def test_complementary_is_detected():
    w = complementary_mask((400, 640), 0.05, seed=2).astype(np.float32)
    p = detect_patterns(w)
    c = p.complementary
    assert c.exact and c.groups == c.groups_ideal == 20 and c.residual_fraction == 0.0
    assert c.fill_ratio >= 0.99
    assert p.summary == "complementary G=20"
    assert p.best_block is None and not p.nm_tight and p.partitions is None


def test_random_mask_is_only_unstructured():
    w = random_mask((256, 512), 0.1, seed=4).astype(np.float32)
    p = detect_patterns(w)
    assert p.summary == "unstructured"
    assert p.best_block is None and not p.nm_tight and p.partitions is None
    assert not p.complementary.exact and p.complementary.residual_fraction > 0
    assert p.nnz == int(w.sum()) and p.density == pytest.approx(0.1, abs=1e-3)


def test_conv_weight_is_flattened_and_json_ready():
    w = complementary_mask((64, 64, 5, 5), 0.2, seed=0).astype(np.float32)
    p = detect_patterns(w)
    assert p.shape == (64, 64, 5, 5) and p.matrix_shape == (64, 1600)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["summary"] == p.summary and d["matrix_shape"] == [64, 1600]
    assert set(d["blocks"]) == {"1x4", "1x8", "1x16", "4x1", "8x1", "16x1", "2x2", "4x4", "8x8"}
    assert d["complementary"]["groups"] == 13


@pytest.mark.parametrize(
    ("w", "summary"),
    [
        (np.zeros((5, 7), np.float32), "empty"),
        (np.ones((5, 7), np.float32), "dense"),
        (np.array([0, 1, 0, 0, 0, 0, 2, 0], np.float32), "1:4"),
        (np.zeros((0, 4), np.float32), "empty"),
    ],
)
def test_edge_cases(w, summary):
    p = detect_patterns(w)
    assert p.summary == summary
    json.dumps(p.to_dict())


def test_nan_counts_as_nonzero():
    w = np.zeros((4, 8), np.float32)
    w[0, 0], w[1, 1] = np.nan, np.inf
    p = detect_patterns(w)
    assert p.nnz == 2


def test_large_weight_is_packed_on_a_sample():
    w = random_mask((512, 512), 0.05, seed=0).astype(np.float32)
    full = detect_patterns(w).complementary
    sampled = detect_patterns(w, max_pack_elements=128 * 512).complementary
    assert full.sampled_rows is None and sampled.sampled_rows == 128
    assert sampled.groups == pytest.approx(full.groups, rel=0.35)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 40), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_detected_nm_and_partition_hold(n, k, density, seed):
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((n, k)) < density, 1.0, 0.0).astype(np.float32)
    p = detect_patterns(w)
    if p.best_nm is not None:
        assert satisfies_nm(w, *p.best_nm)
    if p.partitions is not None:
        counts = (w != 0).reshape(n, p.partitions, -1).sum(axis=2)
        assert (counts == p.nnz_per_partition).all()
    json.dumps(p.to_dict())
