"""Gather-row packing of the CSR row kernel (the kernel itself runs in test_sparse_x86)."""

from __future__ import annotations

import numpy as np

from tvm_sparse.formats.csr import CSR
from tvm_sparse.schedules.sparse_rows_x86 import pack_gather_rows


def test_gather_packing_pads_with_read_columns():
    w = np.zeros((3, 20), np.float32)
    w[0, [1, 4, 19]] = 1.0
    w[2, :9] = 2.0
    vals, cols, ptr = pack_gather_rows(CSR.from_dense(w), 8)
    assert ptr.tolist() == [0, 1, 1, 3]
    assert cols[:8].tolist() == [1, 4, 19, 19, 19, 19, 19, 19]
    assert vals[3:8].tolist() == [0.0] * 5
    assert vals.sum() == w.sum()
