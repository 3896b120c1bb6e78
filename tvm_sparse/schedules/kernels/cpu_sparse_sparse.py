"""Sparse-sparse kernels on x86: complementary-packed weights, and only the non-zero inputs of
a layer whose input is known to be sparse (k-WTA, ReLU) are scattered."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import CONV2D, LayerSpec
from ...target import num_cores
from .. import sparse_sparse_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_sparse_conv_x86 import sparse_sparse_conv2d
from .base import CpuKernel, TakesGroupedConvs, build_conv, build_linear, conv_io_bytes
from .knobs import product, settings_for

# Seconds per input element of the scan that compacts x to its non-zeros before the scatter.
SCAN_S_PER_INPUT = 0.3e-9


def _space(layer: LayerSpec, cores: int) -> list[dict]:
    groups = [None, 1, 2, 4, 8, 16]
    par = [True, False] if cores > 1 and layer.rows > 1 else [None]
    space = product(max_groups=groups, parallel=par)
    if layer.kind == CONV2D:
        space = [{**s, "vector": v} for s in space for v in (None, True, False)]
    return space


class SparseSparseLinear(CpuKernel):
    name = "sparse_sparse"

    def fits(self, layer: LayerSpec) -> bool:
        return layer.input_density is not None

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        nnz = int(np.count_nonzero(w))
        active = max(m * k * layer.input_density, 1.0)
        ss_bytes = active * (nnz / max(k, 1)) * (4 + 2) + 4 * m * (n + k)
        scatter = machine.seconds(
            active * nnz / max(k, 1), machine.sparse_sparse_gmacs, ss_bytes, num_cores(target)
        )
        return scatter + m * k * SCAN_S_PER_INPUT

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = _space(layer, num_cores(target))
        return settings_for(sparse_sparse_x86.sparse_sparse_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_sparse_x86.sparse_sparse_linear, layer, target, knobs)


class SparseSparseConv2d(TakesGroupedConvs, CpuKernel):
    name = "sparse_sparse"
    layer_kind = CONV2D

    def fits(self, layer: LayerSpec) -> bool:
        return layer.conv_attrs["groups"] == 1 and layer.input_density is not None

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        density = np.count_nonzero(w) / max(w.size, 1)
        nnz = int(np.count_nonzero(w))
        in_elems = int(np.prod(layer.x_shape))
        ss_macs = layer.macs_dense * density * layer.input_density
        scatter = machine.seconds(
            ss_macs, machine.sparse_sparse_gmacs, nnz * 6 + conv_io_bytes(layer), num_cores(target)
        )
        return scatter + in_elems * SCAN_S_PER_INPUT

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = _space(layer, num_cores(target))
        return settings_for(sparse_sparse_conv2d, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_conv(sparse_sparse_conv2d, layer, target, knobs)
