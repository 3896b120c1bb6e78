"""Every kernel family tvm-sparse can choose for a layer, in candidate order.

The order is the order in which a layer's candidates are listed and, on equal estimates, the
order in which they win ties: the dense families come first. Adding a kernel family is one new
module here and one line in ``FAMILIES``.
"""

from __future__ import annotations

from .base import Candidate, CpuKernel, CudaKernel, KernelFamily
from .cpu_bsr import BsrLinear
from .cpu_csr import CsrLinear
from .cpu_dense import DenseConv2d, DenseLinear
from .cpu_dynamic import DynamicCsrLinear, DynamicDenseLinear
from .cpu_nm import NMLinear
from .cpu_sparse_conv import SparseConv2d
from .cpu_sparse_conv_batch import SparseConv2dBatchLanes
from .cpu_sparse_conv_panel import SparseConv2dPanel
from .cpu_sparse_conv_planes import SparseConv2dPlanes
from .cpu_sparse_conv_rows import SparseConv2dRows
from .cpu_sparse_sparse import SparseSparseConv2d, SparseSparseLinear
from .cuda_bsr import CudaBsrLinear
from .cuda_csr import CudaCsrLinear
from .cuda_dense import CudaDenseLinear
from .cuda_sparse_sparse import CudaSparseSparseLinear

FAMILIES: tuple[KernelFamily, ...] = (
    DenseLinear(),
    DenseConv2d(),
    CsrLinear(),
    SparseConv2d(),
    SparseConv2dPlanes(),
    SparseConv2dPanel(),
    SparseConv2dRows(),
    SparseConv2dBatchLanes(),
    SparseSparseLinear(),
    SparseSparseConv2d(),
    BsrLinear(1, 8),
    BsrLinear(4, 1),
    BsrLinear(8, 1),
    BsrLinear(16, 1),
    NMLinear(),
    DynamicDenseLinear(),
    DynamicCsrLinear(),
    CudaDenseLinear(),
    CudaCsrLinear(),
    CudaBsrLinear(4, 1),
    CudaBsrLinear(8, 1),
    CudaBsrLinear(1, 4),
    CudaSparseSparseLinear(),
)

__all__ = ["FAMILIES", "Candidate", "CpuKernel", "CudaKernel", "KernelFamily"]
