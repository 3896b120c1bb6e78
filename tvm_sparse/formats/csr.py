"""Compressed sparse row storage of a 2-D float32 weight (rows = outputs, columns = inputs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._index import as_index, as_matrix, frozen, nonzero_mask
from ._matrix import SparseMatrix


@dataclass(frozen=True, eq=False)
class CSR(SparseMatrix):
    """Row ``i`` holds ``data[indptr[i]:indptr[i+1]]`` at columns ``indices[...]`` (sorted).

    ``indices`` and ``indptr`` use the smallest of int16 / int32 that holds their largest value.
    """

    STREAMED = ("data", "indices", "indptr")

    shape: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def from_dense(cls, w: np.ndarray) -> CSR:
        """Store every entry of ``w`` that is not zero (NaN and Inf included)."""
        w = as_matrix(w)
        rows, cols = np.nonzero(nonzero_mask(w))
        counts = np.bincount(rows, minlength=w.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(
            shape=(int(w.shape[0]), int(w.shape[1])),
            data=frozen(w[rows, cols].astype(np.float32)),
            indices=frozen(as_index(cols, max(w.shape[1] - 1, 0))),
            indptr=frozen(as_index(indptr)),
        )

    def to_dense(self) -> np.ndarray:
        w = np.zeros(self.shape, dtype=np.float32)
        w[self.row_ids(), self.indices.astype(np.int64)] = self.data
        return w

    def row_ids(self) -> np.ndarray:
        """The row of each stored entry (int64), in storage order."""
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr.astype(np.int64)))

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    def row_nnz(self) -> np.ndarray:
        return np.diff(self.indptr.astype(np.int64))

    def stats(self) -> dict:
        """Numbers for the sparsity report."""
        per_row = self.row_nnz()
        return {
            "format": "csr",
            "shape": self.shape,
            "nnz": self.nnz,
            "density": self.density,
            "nbytes": self.nbytes,
            "dense_nbytes": self.shape[0] * self.shape[1] * 4,
            "index_dtype": str(self.indices.dtype),
            "row_nnz_min": int(per_row.min()) if per_row.size else 0,
            "row_nnz_max": int(per_row.max()) if per_row.size else 0,
            "row_nnz_mean": float(per_row.mean()) if per_row.size else 0.0,
        }
