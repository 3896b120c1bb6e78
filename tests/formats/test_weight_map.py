"""The weight map the report keeps per layer: the exact corner mask and the coarse density map
equal what numpy computes from the weight, and the map stays small."""

from __future__ import annotations

import json

import numpy as np

from tvm_sparse.formats.weight_map import coarse_map, corner_mask, quantize_density, weight_map


def nm_weight(rows: int, cols: int, n: int = 2, m: int = 4, seed: int = 0) -> np.ndarray:
    """A random weight with exactly n non-zeros in every aligned group of m inputs."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) + 3.0  # no accidental zero
    groups = w.reshape(rows, cols // m, m)
    keep = np.argsort(rng.random(groups.shape), axis=2)[..., :n]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=2)
    return (groups * mask).reshape(rows, cols)


def block_weight(rows: int, cols: int, block: int = 4, keep: float = 0.3, seed: int = 1):
    """A weight whose non-zeros are whole ``block x block`` squares."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((rows // block, cols // block)) < keep
    mask = np.kron(blocks, np.ones((block, block), dtype=bool))
    return np.where(mask, rng.standard_normal((rows, cols)) + 3.0, 0.0).astype(np.float32)


def test_corner_mask_is_the_exact_nm_mask():
    w = nm_weight(48, 96)
    wmap = weight_map(w)
    mask = corner_mask(wmap)
    assert mask.shape == (32, 64)
    np.testing.assert_array_equal(mask, w[:32, :64] != 0)
    groups = mask.reshape(32, 16, 4).sum(axis=2)
    assert (groups == 2).all()  # 2:4 is visible element by element


def test_coarse_map_is_the_block_density():
    w = block_weight(96, 192)
    wmap = weight_map(w)
    assert wmap["cell"] == [4, 8] and wmap["grid"] == [24, 24]
    expected = (w != 0).reshape(24, 4, 24, 8).mean(axis=(1, 3))
    np.testing.assert_array_equal(coarse_map(wmap), quantize_density(expected))
    # 4x4 blocks inside 4x8 cells: each cell holds 0, 1 or 2 whole blocks
    assert set(np.unique(coarse_map(wmap))) <= {0, 128, 255}
    np.testing.assert_array_equal(corner_mask(wmap), w[:32, :64] != 0)


def test_coarse_map_edge_cells_count_only_their_elements():
    w = np.zeros((50, 70), np.float32)
    w[48:, 68:] = 1.0  # the last, cut-short cell is full
    wmap = weight_map(w)
    grid = coarse_map(wmap)
    cr, cc = wmap["cell"]
    assert grid.shape == (-(-50 // cr), -(-70 // cc))
    assert grid[-1, -1] == 255 and grid.sum() == 255
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            cell = w[r * cr : (r + 1) * cr, c * cc : (c + 1) * cc] != 0
            assert grid[r, c] == quantize_density(np.array([cell.mean()]))[0]


def test_quantized_density_keeps_empty_and_full_exact():
    q = quantize_density(np.array([0.0, 1e-4, 0.5, 0.9999, 1.0]))
    assert list(q) == [0, 1, 128, 254, 255]


def test_weight_map_stays_small():
    w = nm_weight(2048, 4608)  # ResNet-50's largest conv, flattened
    wmap = weight_map(w)
    assert max(wmap["grid"]) <= 32 and wmap["corner"] == [32, 64]
    assert len(json.dumps(wmap)) < 2000
