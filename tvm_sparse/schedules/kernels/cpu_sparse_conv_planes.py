"""The tap-plane sparse convolution on x86: position tiles outermost (weights sparse,
activations dense); the kernel for pruned CNN layers with large outputs (ResNet's 56x56 and
28x28 stages), where the channel-blocked ``sparse_conv`` reloads its tile per non-zero."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores, vector_lanes
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_conv_planes_x86 import (
    _MAX_VECTORS,
    default_vectors,
    expansion_helps,
    sparse_conv2d_planes,
)
from .base import build_conv, conv_io_bytes
from .cpu_sparse_conv import SparseConv2d, sparse_groups1
from .knobs import parallel_choices, product, settings_for

# Streamed MACs per second per core over the lanes a tile computes (measured on Zen 4 with
# AVX-512: 15-23 GMAC/s on ResNet-50's layers at 90% sparsity).
_PLANES_GMACS = 18.0


class SparseConv2dPlanes(SparseConv2d):
    """Takes every weight-sparse groups=1 conv (1x1 too); its own loop order, estimate and
    knobs."""

    name = "sparse_conv_planes"

    def fits(self, layer: LayerSpec) -> bool:
        return sparse_groups1(layer)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        nnz = int(np.count_nonzero(layer.weight))
        batch, positions = layer.out_shape[0], layer.out_shape[2] * layer.out_shape[3]
        lanes = vector_lanes(target)
        taps = int(np.prod(layer.weight.shape[1:]))
        tile = default_vectors(positions, lanes, taps) * lanes
        lanes_computed = batch * nnz * tile * -(-positions // tile)
        return machine.seconds(
            lanes_computed, _PLANES_GMACS, nnz * 8 + conv_io_bytes(layer), num_cores(target)
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        lanes = vector_lanes(target)
        positions = layer.out_shape[2] * layer.out_shape[3]
        need = -(-positions // lanes)
        vectors = sorted({min(v, need) for v in (4, 6, 8, 12, 16, 24) if v <= _MAX_VECTORS[lanes]})
        par = parallel_choices(num_cores(target))
        kernel_hw, out_hw = layer.weight.shape[2:], layer.out_shape[2:]
        expanded = [False, True] if expansion_helps(kernel_hw, out_hw) else [False]
        shares = [1, 2, 3] if lanes == 16 else [1]
        # input-channel blocks: 1.19x on 64 -> 64 3x3 at 56x56, a loss on most other shapes
        cblocks = [0] + [b for b in (16, 32) if b < layer.weight.shape[1]]
        space = product(vectors=vectors, parallel=par, expanded=expanded, share=shares,
                        cblock=cblocks)  # fmt: skip
        return settings_for(sparse_conv2d_planes, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_conv(sparse_conv2d_planes, layer, target, knobs)
