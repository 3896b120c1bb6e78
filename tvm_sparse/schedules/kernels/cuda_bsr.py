"""BSR sparse-dense linear on CUDA, one family instance per block shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from .. import sparse_cuda
from ..cost_model import MachineModel
from ..gpu_cost_model import GATHER_EFFICIENCY, gpu_seconds
from ..kernel import KernelCall
from .base import CudaKernel, block_count, index_bytes, linear_args
from .cpu_bsr import BLOCK_RATE_GAIN, MAX_BLOCK_OVERHEAD
from .cuda_dense import linear_io_bytes


@dataclass(frozen=True)
class CudaBsrLinear(CudaKernel):
    rows: int
    cols: int

    @property
    def name(self) -> str:
        return f"bsr{self.rows}x{self.cols}"

    def fits(self, layer: LayerSpec) -> bool:
        w = layer.weight
        n, k = w.shape
        if n % self.rows or k % self.cols:
            return False
        stored = block_count(w, self.rows, self.cols) * self.rows * self.cols
        return stored <= MAX_BLOCK_OVERHEAD * max(int(np.count_nonzero(w)), 1)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        k = layer.weight.shape[1]
        blocks = block_count(layer.weight, self.rows, self.cols)
        stored = blocks * self.rows * self.cols
        moved = stored * 4 + blocks * index_bytes(k) + linear_io_bytes(layer)
        return gpu_seconds(moved, GATHER_EFFICIENCY * BLOCK_RATE_GAIN)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return sparse_cuda.bsr_linear(
            *linear_args(layer),
            (self.rows, self.cols),
            layer.bias,
            layer.activation,
            target,
            **knobs,
        )
