"""BSR sparse-dense linear on x86, one family instance per block shape."""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores
from .. import sparse_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from .base import CpuKernel, build_linear, index_bytes, skips_work
from .blocks import BLOCK_RATE_GAIN, BlockShape
from .knobs import panel_space, settings_for


@dataclass(frozen=True)
class BsrLinear(BlockShape, CpuKernel):
    def fits(self, layer: LayerSpec) -> bool:
        stored = self.stored_if_filled(layer.weight)
        return stored is not None and skips_work(stored, layer.weight.size)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        blocks = self.blocks(w)
        stored = blocks * self.rows * self.cols
        rate = machine.sparse_gmacs if m < 4 else machine.sparse_batched_gmacs
        bsr_bytes = stored * 4 + blocks * index_bytes(k) + 4 * m * (n + k)
        return machine.seconds(m * stored, rate * BLOCK_RATE_GAIN, bsr_bytes, num_cores(target))

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = panel_space(layer.rows, num_cores(target), self.cols)
        return settings_for(sparse_x86.bsr_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_x86.bsr_linear, layer, target, knobs, (self.rows, self.cols))
