"""BSR (CSR = 1x1 blocks) weights regrouped by column panel, for the panel kernels.

A panel kernel walks the weight one panel of columns at a time, so the activations of a panel
stay in L1 while every row's blocks in that panel stream past. Two orders: by panel then block
row (``pack_column_panels``, the CUDA kernel's) and by row block, panel, then rows sorted by their
block count in the panel (``pack_row_panels``, the x86 kernel's slots).
"""

from __future__ import annotations

import numpy as np

from ..formats._index import as_index
from ..formats.bsr import BSR


def _block_panels(bsr: BSR, panel_cols: int):
    """``(npanels, brow, bcol, panel)``: the panel count and each block's row, column, panel.

    ``panel_cols`` is the panel width in weight columns, rounded to whole blocks.
    """
    _, c = bsr.block
    nbr, nbc = bsr.block_shape
    per_panel = max(1, panel_cols // c)
    npanels = max(1, -(-nbc // per_panel))
    brow = np.repeat(np.arange(nbr), np.diff(bsr.indptr.astype(np.int64)))
    bcol = bsr.indices.astype(np.int64)
    return npanels, brow, bcol, bcol // per_panel


def pack_column_panels(bsr: BSR, panel_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """BSR blocks regrouped by column panel, then block row: ``(values, cols, seg, npanels)``.

    ``panel_cols`` is the panel width in weight columns (rounded to whole blocks). ``seg`` has
    ``npanels * block_rows + 1`` entries; segment ``(p, ib)`` holds the blocks of block row
    ``ib`` whose columns fall in panel ``p``, in column order.
    """
    nbr = bsr.block_shape[0]
    npanels, brow, bcol, panel = _block_panels(bsr, panel_cols)
    order = np.lexsort((bcol, brow, panel))
    counts = np.bincount(panel * nbr + brow, minlength=npanels * nbr)
    seg = np.concatenate([[0], np.cumsum(counts)])
    values = np.ascontiguousarray(bsr.data[order].reshape(-1), dtype=np.float32)
    return values, np.ascontiguousarray(bsr.indices[order]), as_index(seg), npanels


def pack_row_panels(
    bsr: BSR, panel_cols: int, row_block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """BSR blocks regrouped into slots: ``(values, cols, seg, slot_rows, npanels)``.

    Block rows are cut into row blocks of ``row_block``, columns into panels of ``panel_cols``
    (rounded to whole blocks). Slots run over row block, then panel, then the row block's rows
    sorted by how many blocks they have in that panel (stable), so a kernel looping over a
    slot's blocks sees runs of equal trip counts. Slot ``i`` is block row ``slot_rows[i]`` with
    blocks ``seg[i] .. seg[i + 1]`` in column order.
    """
    nbr = bsr.block_shape[0]
    npanels, brow, bcol, panel = _block_panels(bsr, panel_cols)
    counts = np.bincount(panel * nbr + brow, minlength=npanels * nbr).reshape(npanels, nbr)
    # slot order: (row block, panel, count within the panel, row)
    row_ids = np.arange(nbr)
    rblk = row_ids // row_block
    slot_p = np.repeat(np.arange(npanels), nbr)
    slot_r = np.tile(row_ids, npanels)
    slot_n = counts.reshape(-1)
    slots = np.lexsort((slot_r, slot_n, slot_p, rblk[slot_r]))
    slot_p, slot_r = slot_p[slots], slot_r[slots]
    seg = np.concatenate([[0], np.cumsum(counts[slot_p, slot_r])])
    rank = np.empty(npanels * nbr, dtype=np.int64)  # slot of (panel, row)
    rank[slot_p * nbr + slot_r] = np.arange(npanels * nbr)
    order = np.lexsort((bcol, rank[panel * nbr + brow]))
    values = np.ascontiguousarray(bsr.data[order].reshape(-1), dtype=np.float32)
    if npanels * nbr == 0:
        slot_r = np.zeros(1, np.int64)
    return (
        values,
        np.ascontiguousarray(bsr.indices[order]),
        as_index(seg),
        as_index(slot_r),
        npanels,
    )


def panel_records(vals: np.ndarray, cols: np.ndarray, m_tile: int) -> np.ndarray:
    """CSR non-zeros as int64 records for the panel kernel: value bits low, xT offset high.

    The high word is ``col * m_tile``, the non-zero's row offset in a tile of the flat ``xT``
    scratch, so the kernel needs no shift; the low word is the float32 value's bit pattern
    (NaN payloads and infinities survive).
    """
    return offset_records(vals, np.asarray(cols, dtype=np.int64) * m_tile)


def offset_records(vals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Non-zeros as int64 records: the float32 value's bits low, ``offsets`` (where the
    kernel reads the activations the value multiplies) high."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.size and offsets.max() >= 2**31:
        raise ValueError("the panel kernel's xT offsets must fit int32 (K * m_tile < 2**31)")
    bits = np.ascontiguousarray(vals, dtype=np.float32).view(np.uint32).astype(np.int64)
    return (offsets << 32) | bits
