"""The dense CUDA baseline family (dlight's GPU rules), first among the CUDA candidates."""

from __future__ import annotations

import tvm

from ...ir.layers import LayerSpec
from .. import dense_cuda
from ..cost_model import MachineModel
from ..gpu_cost_model import DENSE_GFLOPS, gpu_seconds
from ..kernel import KernelCall
from .base import CudaKernel, build_linear


def linear_io_bytes(layer: LayerSpec) -> int:
    """Bytes of the activations a linear layer reads and writes."""
    n, k = layer.weight.shape
    return 4 * layer.rows * (n + k)


class CudaDenseLinear(CudaKernel):
    name = "dense"
    skips_zeros = False

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        n, k = layer.weight.shape
        flops = 2 * layer.rows * n * k
        return gpu_seconds(
            layer.weight.nbytes + linear_io_bytes(layer), flops=flops, gflops=DENSE_GFLOPS
        )

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(dense_cuda.dense_linear, layer, target, knobs)
