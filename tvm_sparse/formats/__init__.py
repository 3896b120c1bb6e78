"""Sparse weight formats in plain numpy (no TVM): build, round-trip, measure.

Kernels in ``tvm_sparse.schedules`` consume these arrays; the analysis reads their statistics.
"""

from .bsr import BSR
from .complementary import ComplementaryPacked, sparse_sparse_reference
from .csr import CSR
from .nm import NM
from .patterns import WeightPatterns, detect_patterns

__all__ = [
    "BSR",
    "CSR",
    "NM",
    "ComplementaryPacked",
    "WeightPatterns",
    "detect_patterns",
    "sparse_sparse_reference",
]
