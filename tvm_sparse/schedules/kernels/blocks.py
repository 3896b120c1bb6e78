"""What the BSR families of every target share: the block shape, its name, its fill check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stored blocks may hold at most this many times the non-zeros: with a poorer fill BSR
# multiplies more zeros than its dense-block arithmetic saves over CSR.
MAX_BLOCK_OVERHEAD = 1.5
# A dense r x c block reuses each loaded input r times and vectorizes without gathers, so BSR
# reaches this multiple of the CSR rate on the MACs it stores.
BLOCK_RATE_GAIN = 1.5


@dataclass(frozen=True)
class BlockShape:
    """``rows x cols`` blocks; a BSR family is one instance per block shape."""

    rows: int
    cols: int

    @property
    def name(self) -> str:
        return f"bsr{self.rows}x{self.cols}"

    def blocks(self, weight: np.ndarray) -> int:
        """Non-empty blocks of a weight whose shape the blocks divide."""
        n, k = weight.shape
        tiles = weight.reshape(n // self.rows, self.rows, k // self.cols, self.cols)
        return np.count_nonzero(tiles.any(axis=(1, 3)))

    def stored_if_filled(self, weight: np.ndarray) -> int | None:
        """Values the blocks store, or None when they do not tile the weight or store more than
        ``MAX_BLOCK_OVERHEAD`` times its non-zeros."""
        n, k = weight.shape
        if n % self.rows or k % self.cols:
            return None
        stored = self.blocks(weight) * self.rows * self.cols
        if stored > MAX_BLOCK_OVERHEAD * max(int(np.count_nonzero(weight)), 1):
            return None
        return stored
