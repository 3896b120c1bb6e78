"""CSR sparse-dense linear on CUDA: warp-per-row (small batch) or shared-memory panel tiles."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from .. import sparse_cuda
from ..cost_model import MachineModel
from ..gpu_cost_model import CSR_GFLOPS, GATHER_EFFICIENCY, gpu_seconds
from ..kernel import KernelCall
from .base import CudaKernel, build_linear, index_bytes
from .cuda_dense import linear_io_bytes
from .knobs import cuda_panel_space, settings_for


class CudaCsrLinear(CudaKernel):
    name = "csr"

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        n, k = layer.weight.shape
        nnz = int(np.count_nonzero(layer.weight))
        moved = nnz * (4 + index_bytes(k)) + 4 * (n + 1) + linear_io_bytes(layer)
        flops = 2 * layer.rows * nnz
        return gpu_seconds(moved, GATHER_EFFICIENCY, flops=flops, gflops=CSR_GFLOPS)

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        return settings_for(sparse_cuda.csr_linear, cuda_panel_space(layer.rows, 1))

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_cuda.csr_linear, layer, target, knobs)
