"""x86 linear kernels for a symbolic row count (``LayerSpec.dynamic_rows``): a model with a
dynamic batch or sequence axis. They are the only families such a layer gets, and the static
families never see one (``KernelFamily.applies``)."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores
from .. import dynamic_linear_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from .base import CpuKernel, index_bytes, skips_work


class DynamicDenseLinear(CpuKernel):
    name = "dense"
    skips_zeros = False
    dynamic_rows = True

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        n, k = layer.weight.shape
        return machine.seconds(
            layer.rows * n * k, machine.gemv_gmacs, layer.weight.nbytes, num_cores(target)
        )

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        if knobs:
            raise ValueError(f"{self.name} (dynamic rows) has no knobs, got {sorted(knobs)}")
        return dynamic_linear_x86.dense_linear_dynamic(
            layer.weight, layer.bias, layer.activation, target, example_rows=layer.rows
        )


class DynamicCsrLinear(CpuKernel):
    name = "csr"
    dynamic_rows = True

    def fits(self, layer: LayerSpec) -> bool:
        return skips_work(int(np.count_nonzero(layer.weight)), layer.weight.size)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        n, k = layer.weight.shape
        nnz = int(np.count_nonzero(layer.weight))
        csr_bytes = nnz * (4 + index_bytes(k)) + 4 * (n + 1)
        return machine.seconds(
            layer.rows * nnz, machine.sparse_gmacs, csr_bytes, num_cores(target),
            machine.gather_bandwidth_gbs,
        )  # fmt: skip

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        if knobs:
            raise ValueError(f"{self.name} (dynamic rows) has no knobs, got {sorted(knobs)}")
        return dynamic_linear_x86.csr_linear_dynamic(
            layer.weight, layer.bias, layer.activation, target, example_rows=layer.rows
        )
