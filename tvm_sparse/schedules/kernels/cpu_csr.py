"""CSR sparse-dense linear on x86: the row kernel (small batch) or the batch-panel kernel."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores
from .. import sparse_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from .base import CpuKernel, build_linear, index_bytes, skips_work
from .knobs import panel_space, settings_for


class CsrLinear(CpuKernel):
    name = "csr"

    def fits(self, layer: LayerSpec) -> bool:
        return skips_work(int(np.count_nonzero(layer.weight)), layer.weight.size)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        nnz = int(np.count_nonzero(w))
        csr_bytes = nnz * (4 + index_bytes(k)) + 4 * (n + 1) + 4 * m * (n + k)
        rate = machine.sparse_gmacs if m < 4 else machine.sparse_batched_gmacs
        stream_gbs = machine.gather_bandwidth_gbs if m < 4 else None  # the row kernel gathers
        return machine.seconds(m * nnz, rate, csr_bytes, num_cores(target), stream_gbs)

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = panel_space(layer.rows, num_cores(target), 1)
        return settings_for(sparse_x86.csr_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_x86.csr_linear, layer, target, knobs)
