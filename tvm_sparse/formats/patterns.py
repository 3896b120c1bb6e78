"""Which sparsity patterns a weight has: the numbers the analysis pass reports per layer.

A weight is looked at as a 2-D ``[N, K]`` matrix (N outputs, K inputs); a conv weight
``[O, C, KH, KW]`` (any ``ndim >= 2``) is flattened to ``[O, C*KH*KW]`` and a 1-D weight is one row.
Non-zero means ``w != 0`` (NaN counts). Every check is exact and vectorised: a 2048 x 2048 weight
takes well under a second, 4096 x 4096 a few seconds at most (the packing is the costly part and is
done on a row sample above ``max_pack_elements``).

Patterns:

- unstructured: always true; the baseline a sparse-dense CSR kernel handles.
- block r x c: fill = nnz / (non-empty blocks * r * c) on the zero-padded matrix.
- N:M along K: aligned groups of M consecutive inputs hold at most N non-zeros (``at most`` as in
  NVIDIA's 2:4: a 1:4 weight also satisfies 2:4). ``nm_max`` gives the least N for each M.
- partitioned: K splits into P equal partitions and every (output, partition) holds the same
  number of non-zeros (balanced work per partition); the largest such P. If P works, every
  divisor of P works too.
- complementary: packing stats of ``ComplementaryPacked`` with its default (cost-chosen) budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .complementary import packing_stats

__all__ = [
    "BLOCK_SIZES",
    "NM_WIDTHS",
    "BlockFill",
    "ComplementaryStats",
    "WeightPatterns",
    "as_matrix",
    "block_fills",
    "complementary_stats",
    "detect_patterns",
    "largest_partition",
    "nm_max",
    "satisfies_nm",
]

BLOCK_SIZES: tuple[tuple[int, int], ...] = (
    (1, 4),
    (1, 8),
    (1, 16),
    (4, 1),
    (8, 1),
    (16, 1),
    (2, 2),
    (4, 4),
    (8, 8),
)
NM_WIDTHS: tuple[int, ...] = (2, 4, 8, 16)
# A block size is "the" block pattern of a weight when at least this share of the stored
# block elements are non-zeros.
BLOCK_FILL_THRESHOLD = 0.9
# An N:M bound is the weight's real structure, not a loose bound any sparse matrix meets, when
# the density is at least this share of N/M: CSR serves the loose ones with fewer stored values.
NM_TIGHT_FILL = 0.9
# Above this many elements, complementary packing runs on a row sample.
MAX_PACK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class BlockFill:
    """Blocks of ``rows x cols``: how many are non-empty and how full they are."""

    rows: int
    cols: int
    n_blocks: int
    fill: float


@dataclass(frozen=True)
class ComplementaryStats:
    """Greedy complementary packing of the weight (see ``ComplementaryPacked``)."""

    groups: int  # G chosen by the cost model (a sample's G scaled up when sampled)
    fill_ratio: float
    residual_fraction: float
    whole_row_fraction: float  # output units packed whole in one group
    groups_lossless: int  # groups needed for zero residual with backfill: max column count
    groups_ideal: int  # ceil(nnz / K): the bound perfect packing reaches
    exact: bool  # zero residual and groups == groups_ideal: the weight is complementary
    sampled_rows: int | None  # rows packed when the weight was too big to pack whole


@dataclass(frozen=True)
class WeightPatterns:
    """Everything ``detect_patterns`` found; ``to_dict()`` is JSON-ready."""

    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    nnz: int
    density: float
    unstructured: bool
    blocks: tuple[BlockFill, ...]
    best_block: tuple[int, int] | None  # largest block area with fill >= BLOCK_FILL_THRESHOLD
    nm_max: tuple[tuple[int, int], ...]  # (M, least N) along K for M in NM_WIDTHS
    best_nm: tuple[int, int] | None  # (N, M), N < M, with the least N/M (ties: smaller M)
    partitions: int | None  # largest P >= 2 with balanced partitions, None if none
    nnz_per_partition: int | None
    complementary: ComplementaryStats | None  # None for an all-zero weight

    @property
    def nm_tight(self) -> bool:
        """``best_nm`` is the weight's real structure, not a loose bound any sparse matrix meets:
        the density is within 10 % of N/M (a 2:4-pruned weight is ~50 % dense)."""
        if self.best_nm is None:
            return False
        n, m = self.best_nm
        return self.density >= NM_TIGHT_FILL * n / m

    @property
    def summary(self) -> str:
        """A short label for tables: the strongest structure found."""
        if self.nnz == 0:
            return "empty"
        if self.density == 1.0:
            return "dense"
        if self.nm_tight:
            return f"{self.best_nm[0]}:{self.best_nm[1]}"
        if self.best_block is not None and self.best_block != (1, 1):
            return f"block {self.best_block[0]}x{self.best_block[1]}"
        if self.complementary is not None and self.complementary.exact:
            return f"complementary G={self.complementary.groups}"
        if self.partitions is not None:
            return f"partitioned P={self.partitions}"
        return "unstructured"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only, so ``json.dumps`` works; includes ``summary``."""
        d = dataclasses.asdict(self)
        d["blocks"] = {
            f"{b.rows}x{b.cols}": {"n_blocks": b.n_blocks, "fill": b.fill} for b in self.blocks
        }
        d["nm_max"] = {str(m): n for m, n in self.nm_max}
        d["nm_tight"] = self.nm_tight
        d["summary"] = self.summary
        return _plain(d)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def as_matrix(w: np.ndarray) -> np.ndarray:
    """The 2-D ``[N, K]`` view used by every check (conv flattened, 1-D as one row)."""
    w = np.asarray(w)
    if w.ndim == 0:
        return w.reshape(1, 1)
    if w.ndim == 1:
        return w.reshape(1, w.shape[0])
    return w.reshape(w.shape[0], int(np.prod(w.shape[1:])))


def _pad(mask: np.ndarray, r: int, c: int) -> np.ndarray:
    n, k = mask.shape
    pn, pk = -(-n // r) * r, -(-k // c) * c
    if (pn, pk) == (n, k):
        return mask
    out = np.zeros((pn, pk), dtype=bool)
    out[:n, :k] = mask
    return out


def _or_pairs(a: np.ndarray, axis: int) -> np.ndarray:
    """OR neighbouring pairs along ``axis`` (length must be even)."""
    if axis == 0:
        return a[0::2] | a[1::2]
    return a[:, 0::2] | a[:, 1::2]


def block_fills(
    mask: np.ndarray, sizes: tuple[tuple[int, int], ...] = BLOCK_SIZES
) -> list[BlockFill]:
    """Fill of each ``r x c`` block size (r, c powers of two, as in ``BLOCK_SIZES``).

    Occupancy of bigger blocks is built from smaller ones by OR-ing neighbouring pairs, so each
    size costs a fraction of one pass over the matrix.
    """
    nnz = int(mask.sum())
    max_r = max(r for r, _ in sizes)
    max_c = max(c for _, c in sizes)
    for r, c in sizes:
        if r & (r - 1) or c & (c - 1):
            raise ValueError(f"block sizes must be powers of two, got {r}x{c}")
    padded = _pad(mask, max_r, max_c)
    cache: dict[tuple[int, int], np.ndarray] = {(1, 1): padded}

    def occupancy(r: int, c: int) -> np.ndarray:
        if (r, c) not in cache:
            if c > 1 and (c >= r or r == 1):
                cache[(r, c)] = _or_pairs(occupancy(r, c // 2), 1)
            else:
                cache[(r, c)] = _or_pairs(occupancy(r // 2, c), 0)
        return cache[(r, c)]

    out = []
    for r, c in sizes:
        n_blocks = int(np.count_nonzero(occupancy(r, c)))
        fill = nnz / (n_blocks * r * c) if n_blocks else 0.0
        out.append(BlockFill(r, c, n_blocks, float(fill)))
    return out


def nm_max(mask: np.ndarray, widths: tuple[int, ...] = NM_WIDTHS) -> dict[int, int]:
    """For each M: the most non-zeros in any aligned group of M inputs (K zero-padded).

    Built by adding neighbouring pairs, so M must be a power of two.
    """
    for m in widths:
        if m & (m - 1) or m < 2:
            raise ValueError(f"N:M widths must be powers of two >= 2, got {m}")
    counts = _pad(mask, 1, max(widths)).astype(np.uint8)
    out: dict[int, int] = {}
    m = 1
    while m < max(widths):
        counts = counts[:, 0::2] + counts[:, 1::2]
        m *= 2
        if m in widths:
            out[m] = int(counts.max(initial=0))
    return out


def satisfies_nm(w: np.ndarray, n: int, m: int) -> bool:
    """Every aligned group of ``m`` consecutive inputs holds at most ``n`` non-zeros.

    Exact for any ``m`` (not only powers of two); K is zero-padded to a multiple of ``m``.
    """
    mask = _pad(as_matrix(w) != 0, 1, m)
    return bool(mask.reshape(mask.shape[0], -1, m).sum(axis=2).max(initial=0) <= n)


def _best_nm(maxes: dict[int, int]) -> tuple[int, int] | None:
    """The satisfied N:M (N < M) with the least N/M; ties go to the smaller, stricter M."""
    options = [(n / m, m, n) for m, n in maxes.items() if 0 < n < m]
    if not options:
        return None
    _, m, n = min(options)
    return n, m


def largest_partition(mask: np.ndarray) -> tuple[int | None, int | None]:
    """Largest P >= 2 dividing K with the same non-zero count in every (output, partition).

    Returns ``(P, count per partition)`` or ``(None, None)`` (also for an all-zero weight).
    """
    n, k = mask.shape
    row_nnz = mask.sum(axis=1)
    if n == 0 or k < 2 or row_nnz.max(initial=0) == 0 or (row_nnz != row_nnz[0]).any():
        return None, None
    prefix = np.zeros((n, k + 1), dtype=np.int32)
    np.cumsum(mask, axis=1, out=prefix[:, 1:])
    for p in sorted((d for d in range(2, k + 1) if k % d == 0), reverse=True):
        if row_nnz[0] % p:
            continue
        edges = prefix[:, :: k // p]
        counts = np.diff(edges, axis=1)
        if (counts == counts[0, 0]).all():
            return p, int(counts[0, 0])
    return None, None


def complementary_stats(
    mask: np.ndarray, *, max_pack_elements: int = MAX_PACK_ELEMENTS, seed: int = 0
) -> ComplementaryStats | None:
    """Pack the mask (a row sample if it has more than ``max_pack_elements``) and report."""
    n, k = mask.shape
    nnz = int(mask.sum())
    if nnz == 0:
        return None
    sampled = None
    sample = mask
    if n * k > max_pack_elements and n > 1:
        keep = max(1, max_pack_elements // max(k, 1))
        rows = np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))
        sample, sampled = mask[rows], keep
    packed = packing_stats(sample)
    groups = int(round(packed.n_groups * n / sample.shape[0]))
    ideal = -(-nnz // k)
    return ComplementaryStats(
        groups=groups,
        fill_ratio=float(packed.fill_ratio),
        residual_fraction=float(packed.residual_fraction),
        whole_row_fraction=float(packed.whole_row_fraction),
        groups_lossless=int(mask.sum(axis=0).max()),
        groups_ideal=int(ideal),
        exact=sampled is None and packed.residual_nnz == 0 and packed.n_groups == ideal,
        sampled_rows=sampled,
    )


def detect_patterns(w: np.ndarray, *, max_pack_elements: int = MAX_PACK_ELEMENTS) -> WeightPatterns:
    """All pattern checks on one weight (see the module doc for the definitions)."""
    w = np.asarray(w)
    mask = as_matrix(w) != 0
    n, k = mask.shape
    nnz = int(np.count_nonzero(mask))
    blocks = block_fills(mask) if mask.size else []
    good = [b for b in blocks if b.n_blocks and b.fill >= BLOCK_FILL_THRESHOLD]
    best_block = None
    if good:
        b = max(good, key=lambda b: (b.rows * b.cols, b.fill))
        best_block = (b.rows, b.cols)
    widths = tuple(m for m in NM_WIDTHS if m <= k)  # a group wider than K says nothing
    maxes = nm_max(mask, widths) if mask.size and widths else {}
    partitions, per_partition = largest_partition(mask)
    return WeightPatterns(
        shape=tuple(int(s) for s in w.shape),
        matrix_shape=(int(n), int(k)),
        nnz=nnz,
        density=nnz / mask.size if mask.size else 0.0,
        unstructured=True,
        blocks=tuple(blocks),
        best_block=best_block,
        nm_max=tuple(sorted(maxes.items())),
        best_nm=_best_nm(maxes) if nnz else None,
        partitions=partitions,
        nnz_per_partition=per_partition,
        complementary=complementary_stats(mask, max_pack_elements=max_pack_elements),
    )
