"""Panel packing of BSR / CSR weights: every block kept once, in the order each kernel walks."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.formats.bsr import BSR
from tvm_sparse.schedules.panel_packing import pack_column_panels, pack_row_panels, panel_records

from .reference import sparse_weight


def test_row_panel_packing_sorts_slots_and_keeps_every_block():
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (10, 40), 0.3)
    bsr = BSR.from_dense(w, (1, 1))
    vals, cols, seg, rows, npanels = pack_row_panels(bsr, 16, 4)
    assert npanels == 3 and seg.size == 3 * 10 + 1 and rows.size == 3 * 10
    dense = np.zeros_like(w)
    lengths = np.diff(seg.astype(np.int64))
    slot = 0
    for rb in range(3):  # row blocks of 4, 4, 2 rows
        rl = min(4, 10 - rb * 4)
        for p in range(npanels):
            block = slice(slot, slot + rl)
            assert sorted(rows[block]) == list(range(rb * 4, rb * 4 + rl))
            assert np.all(np.diff(lengths[block]) >= 0)  # sorted by trip count
            for s in range(slot, slot + rl):
                c = cols[seg[s] : seg[s + 1]].astype(np.int64)
                assert np.all((c // 16) == p) and np.all(np.diff(c) > 0)
                dense[rows[s], c] = vals[seg[s] : seg[s + 1]]
            slot += rl
    np.testing.assert_array_equal(dense, w)


def test_column_panel_packing_orders_panel_then_row_and_keeps_every_block():
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (12, 40), 0.3)
    bsr = BSR.from_dense(w, (2, 4))
    vals, cols, seg, npanels = pack_column_panels(bsr, 16)
    nbr = 6
    assert npanels == 3 and seg.size == npanels * nbr + 1
    dense = np.zeros((12, 40), np.float32)
    blocks = vals.reshape(-1, 2, 4)
    for p in range(npanels):
        for ib in range(nbr):
            s = p * nbr + ib
            c = cols[seg[s] : seg[s + 1]].astype(np.int64)
            assert np.all(c * 4 // 16 == p) and np.all(np.diff(c) > 0)
            for j, col in zip(range(seg[s], seg[s + 1]), c):
                dense[ib * 2 : ib * 2 + 2, col * 4 : col * 4 + 4] = blocks[j]
    np.testing.assert_array_equal(dense, w)


def test_panel_records_keep_value_bits_and_offsets():
    vals = np.array([1.5, -0.0, np.nan, np.inf, -np.inf, 1e-45, -3.25], np.float32)
    vals[2] = np.frombuffer(np.uint32(0x7FC01234).tobytes(), np.float32)[0]  # a NaN payload
    cols = np.array([0, 1, 2, 300, 301, 7, 65535], np.int32)
    recs = panel_records(vals, cols, 64)
    assert recs.dtype == np.int64
    low = (recs & 0xFFFFFFFF).astype(np.uint32)
    np.testing.assert_array_equal(low, vals.view(np.uint32))
    np.testing.assert_array_equal(recs >> 32, cols.astype(np.int64) * 64)
    with pytest.raises(ValueError, match="int32"):
        panel_records(vals[:1], np.array([2**25], np.int64), 64)
