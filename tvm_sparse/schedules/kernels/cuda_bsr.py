"""BSR sparse-dense linear on CUDA, one family instance per block shape."""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from ...ir.layers import LayerSpec
from .. import sparse_cuda
from ..cost_model import MachineModel
from ..gpu_cost_model import BSR_GFLOPS, GATHER_EFFICIENCY, gpu_seconds
from ..kernel import KernelCall
from .base import CudaKernel, build_linear, index_bytes
from .blocks import BLOCK_RATE_GAIN, BlockShape
from .cuda_dense import linear_io_bytes
from .knobs import cuda_panel_space, settings_for


@dataclass(frozen=True)
class CudaBsrLinear(BlockShape, CudaKernel):
    def fits(self, layer: LayerSpec) -> bool:
        return self.stored_if_filled(layer.weight) is not None

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        k = layer.weight.shape[1]
        blocks = self.blocks(layer.weight)
        stored = blocks * self.rows * self.cols
        moved = stored * 4 + blocks * index_bytes(k) + linear_io_bytes(layer)
        flops = 2 * layer.rows * stored
        return gpu_seconds(
            moved, GATHER_EFFICIENCY * BLOCK_RATE_GAIN, flops=flops, gflops=BSR_GFLOPS
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        return settings_for(sparse_cuda.bsr_linear, cuda_panel_space(layer.rows, self.cols))

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_cuda.bsr_linear, layer, target, knobs, (self.rows, self.cols))
