"""Block sparse row storage: the weight cut into (r, c) blocks; blocks with a non-zero are kept.

A kernel vectorizes over the block, so a block's zeros cost as much as its non-zeros: the fill
ratio (non-zeros / stored entries) says how much of the stored work is useful. A shape that is
not a multiple of the block is padded with zeros on the bottom / right and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._index import as_index, as_matrix, frozen, nonzero_mask
from ._matrix import SparseMatrix


@dataclass(frozen=True, eq=False)
class BSR(SparseMatrix):
    """Block row ``i`` holds blocks ``data[indptr[i]:indptr[i+1]]`` ([nblocks, r, c]) at block
    columns ``indices[...]`` (sorted)."""

    STREAMED = ("data", "indices", "indptr")

    shape: tuple[int, int]
    block: tuple[int, int]
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def from_dense(cls, w: np.ndarray, block: tuple[int, int] = (1, 8)) -> BSR:
        w = as_matrix(w)
        r, c = (int(block[0]), int(block[1]))
        if r < 1 or c < 1:
            raise ValueError(f"block must be positive, got {block}")
        n, k = w.shape
        nbr, nbc = -(-n // r), -(-k // c)
        padded = np.zeros((nbr * r, nbc * c), dtype=np.float32)
        padded[:n, :k] = w
        blocks = padded.reshape(nbr, r, nbc, c).transpose(0, 2, 1, 3)  # [nbr, nbc, r, c]
        keep = nonzero_mask(blocks).any(axis=(2, 3))
        brow, bcol = np.nonzero(keep)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(brow, minlength=nbr))])
        return cls(
            shape=(int(n), int(k)),
            block=(r, c),
            data=frozen(blocks[brow, bcol].astype(np.float32).reshape(-1, r, c)),
            indices=frozen(as_index(bcol, max(nbc - 1, 0))),
            indptr=frozen(as_index(indptr)),
        )

    @property
    def block_shape(self) -> tuple[int, int]:
        """(block rows, block columns) of the padded grid."""
        r, c = self.block
        return (-(-self.shape[0] // r), -(-self.shape[1] // c))

    def to_dense(self) -> np.ndarray:
        r, c = self.block
        nbr, nbc = self.block_shape
        grid = np.zeros((nbr, nbc, r, c), dtype=np.float32)
        brow = np.repeat(np.arange(nbr), np.diff(self.indptr.astype(np.int64)))
        grid[brow, self.indices.astype(np.int64)] = self.data
        return grid.transpose(0, 2, 1, 3).reshape(nbr * r, nbc * c)[
            : self.shape[0], : self.shape[1]
        ]

    @property
    def nblocks(self) -> int:
        return int(self.data.shape[0])

    @property
    def nnz(self) -> int:
        """Non-zero entries inside the stored blocks (the stored zeros are not counted)."""
        return int(np.count_nonzero(nonzero_mask(self.data)))

    @property
    def stored(self) -> int:
        """Entries stored (blocks x block size), zeros included."""
        return int(self.data.size)

    @property
    def fill_ratio(self) -> float:
        """Non-zeros / stored entries: 1.0 when every stored block is full."""
        return self.nnz / self.stored if self.stored else 1.0

    def stats(self) -> dict:
        return {
            "format": "bsr",
            "shape": self.shape,
            "block": self.block,
            "nnz": self.nnz,
            "nblocks": self.nblocks,
            "stored": self.stored,
            "fill_ratio": self.fill_ratio,
            "density": self.density,
            "nbytes": self.nbytes,
            "dense_nbytes": self.shape[0] * self.shape[1] * 4,
            "index_dtype": str(self.indices.dtype),
        }
