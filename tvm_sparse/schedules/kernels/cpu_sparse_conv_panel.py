"""The panel sparse GEMM over channels (1x1) or taps (any other conv, read from tap planes) on
x86 (weights sparse, activations dense, NCHW): a panel of input channels or taps stays in L1
while every output channel's non-zeros in it stream past (``sparse_conv_panel_x86``). It wins on
ResNet's 1x1 layers and on its strided and 7x7 3x3 layers."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores, vector_lanes
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_conv_panel_x86 import NARROWEST_TILE, sparse_conv2d_panel, tile_widths
from .base import build_conv, conv_io_bytes
from .cpu_sparse_conv import SparseConv2d, sparse_groups1
from .knobs import parallel_choices, product, settings_for

# Non-zeros x tile passes a second a core, in 64-lane units: a pass over a tile costs about
# the same per non-zero at 16 lanes as at 64 (Intel AVX-512: ~5.5 cycles a non-zero either way,
# the slot's fixed costs), so the work is counted in passes, 64 lanes each.
_PANEL_GMACS = 40.0


class SparseConv2dPanel(SparseConv2d):
    """Takes the convs ``sparse_conv`` takes with at least a vector of output positions; its
    own estimate and knobs."""

    name = "sparse_conv_panel"

    def fits(self, layer: LayerSpec) -> bool:
        positions = layer.out_shape[2] * layer.out_shape[3]
        return sparse_groups1(layer) and positions >= NARROWEST_TILE

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        nnz = int(np.count_nonzero(layer.weight))
        batch, positions = layer.out_shape[0], layer.out_shape[2] * layer.out_shape[3]
        m_tile, tail = tile_widths(positions, lanes=vector_lanes(target))
        passes = positions // m_tile + (1 if tail else 0)
        lanes_computed = batch * nnz * passes * 64
        return machine.seconds(
            lanes_computed, _PANEL_GMACS, nnz * 8 + conv_io_bytes(layer), num_cores(target)
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        k = int(np.prod(layer.weight.shape[1:]))
        panels = sorted({min(c, k) for c in (64, 128, 256)})
        taps = layer.weight.shape[2] * layer.weight.shape[3] > 1
        expanded = [False, True] if taps else [None]
        space = product(m_tile=[64, 32], panel_cols=panels, expanded=expanded,
                        parallel=parallel_choices(num_cores(target)))  # fmt: skip
        return settings_for(sparse_conv2d_panel, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_conv(sparse_conv2d_panel, layer, target, knobs)
