"""N:M structured sparsity: at most ``n`` non-zeros in every ``m`` consecutive inputs of a row.

Each group of ``m`` inputs stores exactly ``n`` (value, position-in-group) pairs, so rows have a
fixed length and need no row pointer. Groups with fewer non-zeros are filled with zeros at
positions the group does not use. A column count that is not a multiple of ``m`` is padded
with zeros on the right and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._index import as_index, as_matrix, frozen, nonzero_mask
from ._matrix import SparseMatrix


def _groups(w: np.ndarray, m: int) -> np.ndarray:
    rows, k = w.shape
    ngroups = -(-k // m)
    padded = np.zeros((rows, ngroups * m), dtype=np.float32)
    padded[:, :k] = w
    return padded.reshape(rows, ngroups, m)


@dataclass(frozen=True, eq=False)
class NM(SparseMatrix):
    """``values[i, g, :]`` sit at columns ``g * m + positions[i, g, :]`` of row ``i``."""

    STREAMED = ("values", "positions")

    shape: tuple[int, int]
    n: int
    m: int
    values: np.ndarray
    positions: np.ndarray

    @staticmethod
    def satisfies(w: np.ndarray, n: int, m: int) -> bool:
        """Whether every group of ``m`` inputs of ``w`` holds at most ``n`` non-zeros."""
        w = as_matrix(w)
        return bool((nonzero_mask(_groups(w, m)).sum(axis=-1) <= n).all())

    @classmethod
    def from_dense(cls, w: np.ndarray, n: int = 2, m: int = 4) -> NM:
        """Raises ValueError when ``w`` does not have the pattern (the format is lossless)."""
        w = as_matrix(w)
        if not 1 <= n <= m:
            raise ValueError(f"need 1 <= n <= m, got {n}:{m}")
        groups = _groups(w, m)
        mask = nonzero_mask(groups)
        worst = int(mask.sum(axis=-1).max()) if mask.size else 0
        if worst > n:
            raise ValueError(f"weight is not {n}:{m} sparse: a group holds {worst} non-zeros")
        # non-zeros first, then the group's zero slots, each in column order
        key = np.where(mask, 0, m) + np.arange(m)
        pos = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :n], axis=-1)
        return cls(
            shape=(int(w.shape[0]), int(w.shape[1])),
            n=int(n),
            m=int(m),
            values=frozen(np.take_along_axis(groups, pos, axis=-1)),
            positions=frozen(as_index(pos, m - 1)),
        )

    def to_dense(self) -> np.ndarray:
        rows, k = self.shape
        ngroups = self.values.shape[1]
        out = np.zeros((rows, ngroups, self.m), dtype=np.float32)
        np.put_along_axis(out, self.positions.astype(np.int64), self.values, axis=-1)
        return out.reshape(rows, ngroups * self.m)[:, :k]

    def columns(self) -> np.ndarray:
        """Absolute input column of every stored slot, [rows, groups, n] (int64)."""
        base = np.arange(self.values.shape[1], dtype=np.int64)[None, :, None] * self.m
        return base + self.positions.astype(np.int64)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(nonzero_mask(self.values)))

    @property
    def stored(self) -> int:
        return int(self.values.size)

    def stats(self) -> dict:
        return {
            "format": "nm",
            "shape": self.shape,
            "pattern": f"{self.n}:{self.m}",
            "nnz": self.nnz,
            "stored": self.stored,
            "fill_ratio": self.nnz / self.stored if self.stored else 1.0,
            "density": self.density,
            "nbytes": self.nbytes,
            "dense_nbytes": self.shape[0] * self.shape[1] * 4,
        }
