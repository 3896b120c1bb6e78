"""BSR sparse-dense linear on x86, one family instance per block shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores
from .. import sparse_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from .base import CpuKernel, block_count, index_bytes, linear_args, skips_work
from .knobs import panel_space, settings_for

# Stored blocks may hold at most this many times the non-zeros: with a poorer fill BSR
# multiplies more zeros than its dense-block arithmetic saves over CSR.
MAX_BLOCK_OVERHEAD = 1.5
# A dense r x c block reuses each loaded input r times and vectorizes without gathers, so BSR
# reaches this multiple of the CSR rate on the MACs it stores.
BLOCK_RATE_GAIN = 1.5


@dataclass(frozen=True)
class BsrLinear(CpuKernel):
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
        nnz = int(np.count_nonzero(w))
        return stored <= MAX_BLOCK_OVERHEAD * max(nnz, 1) and skips_work(stored, w.size)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        blocks = block_count(w, self.rows, self.cols)
        stored = blocks * self.rows * self.cols
        rate = machine.sparse_gmacs if m < 4 else machine.sparse_batched_gmacs
        bsr_bytes = stored * 4 + blocks * index_bytes(k) + 4 * m * (n + k)
        return machine.seconds(m * stored, rate * BLOCK_RATE_GAIN, bsr_bytes, num_cores(target))

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = panel_space(layer.rows, num_cores(target), self.cols)
        return settings_for(sparse_x86.bsr_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return sparse_x86.bsr_linear(
            *linear_args(layer),
            (self.rows, self.cols),
            layer.bias,
            layer.activation,
            target,
            **knobs,
        )
