"""Making sparse weights: masks (complementary, random) and magnitude pruning, in plain numpy.

Masks are boolean arrays of the weight's shape. A conv weight ``[O, C, KH, KW]`` (any ``ndim >= 2``)
is handled as its flattened ``[O, C*KH*KW]`` matrix, the same view the packing and the pattern
detection use, and the mask is reshaped back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_mask", "complementary_mask", "prune_l1", "random_mask"]


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"expected a weight shape with >= 2 dims, got {shape}")
    return shape[0], int(np.prod(shape[1:]))


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")


def complementary_mask(
    shape: tuple[int, ...],
    density: float,
    *,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """A mask whose output units pack perfectly: ``s = round(1 / density)`` units per group.

    The output units are shuffled into groups of ``s``; inside a group the K inputs are dealt out
    at random, ``K / s`` (rounded down or up) to each member, so members are disjoint and together
    cover every input. The realised density is ``1 / s`` (0.05 -> 20 per group -> exactly 5 %).
    A last, incomplete group keeps the same per-unit density (its members cover only part of K).
    ``density == 0`` gives an all-False mask.
    """
    _check_density(density)
    n, k = _matrix_shape(shape)
    mask = np.zeros((n, k), dtype=bool)
    if density == 0 or n == 0 or k == 0:
        return mask.reshape(shape)
    rng = _rng(seed)
    s = max(1, round(1.0 / density))
    n_groups = -(-n // s)
    members = np.full(n_groups * s, -1, dtype=np.int64)
    members[:n] = rng.permutation(n)
    members = members.reshape(n_groups, s)
    # member slot (0..s-1) owning each input, shuffled independently per group
    slot = rng.permuted(np.broadcast_to(np.arange(k) % s, (n_groups, k)), axis=1)
    rows = members[np.arange(n_groups)[:, None], slot]  # [n_groups, K]
    g, c = np.nonzero(rows >= 0)
    mask[rows[g, c], c] = True
    return mask.reshape(shape)


def random_mask(
    shape: tuple[int, ...],
    density: float,
    seed: int | np.random.Generator | None = None,
) -> np.ndarray:
    """A post-hoc-pruning-like mask: each output unit keeps ``round(density * K)`` random inputs.

    A fixed count per unit is what nupic.torch's ``SparseWeights`` makes.
    """
    _check_density(density)
    n, k = _matrix_shape(shape)
    keep = int(round(density * k))
    mask = np.zeros((n, k), dtype=bool)
    if keep:
        cols = np.argpartition(_rng(seed).random((n, k)), keep - 1, axis=1)[:, :keep]
        mask[np.arange(n)[:, None], cols] = True
    return mask.reshape(shape)


def apply_mask(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``w`` with the entries where ``mask`` is False set to 0 (same shape and dtype)."""
    w = np.asarray(w)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {mask.shape} != weight shape {w.shape}")
    return np.where(mask, w, np.zeros((), dtype=w.dtype))


def prune_l1(w: np.ndarray, density: float, *, per_output: bool = False) -> np.ndarray:
    """Magnitude pruning: keep the ``round(density * size)`` entries of largest ``|w|``.

    ``per_output=True`` keeps ``round(density * K)`` per output unit instead (flattened conv
    filters), the balanced variant. Exactly that many entries are kept (ties broken arbitrarily);
    NaN counts as the largest magnitude.
    """
    _check_density(density)
    w = np.asarray(w)
    if per_output:
        n, k = _matrix_shape(w.shape)
        a = np.abs(w.reshape(n, k))
        keep = int(round(density * k))
        mask = np.zeros((n, k), dtype=bool)
        if keep:
            cols = np.argpartition(-np.nan_to_num(a, nan=np.inf), keep - 1, axis=1)[:, :keep]
            mask[np.arange(n)[:, None], cols] = True
        return apply_mask(w, mask.reshape(w.shape))
    a = np.nan_to_num(np.abs(w).ravel(), nan=np.inf)
    keep = int(round(density * a.size))
    mask = np.zeros(a.size, dtype=bool)
    if keep:
        mask[np.argpartition(-a, keep - 1)[:keep]] = True
    return apply_mask(w, mask.reshape(w.shape))
