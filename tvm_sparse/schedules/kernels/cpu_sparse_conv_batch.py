"""The sparse convolution with the samples in the vector lanes, on x86: for batches of small
images (GSC's cnn2 at batch 64), where a narrow output wastes lanes and misaligns the loads of
the position-lane kernels."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores, vector_lanes
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_conv_batch_x86 import MAX_VECTORS, sparse_conv2d_batch_lanes
from .base import build_conv, conv_io_bytes
from .cpu_sparse_conv import SparseConv2d, sparse_groups1
from .knobs import product, settings_for

# The transposed input and output of one group of samples (a vector per channel and position)
# must each sit in L2, where the output channels stream them block by block: 1 MiB at 16
# lanes. GSC's cnn2 takes 0.8 MB and 0.4 MB; its cnn1 (3.2 MB of output) measured 2.4x slower
# than the tap-plane kernel on one core and 7x on two.
_MAX_SCRATCH = 1 << 20
# Streamed MACs per second per core, relative to the flat kernel's estimate: 1.44x on GSC's
# cnn2 at batch 64, one thread (48 against 69 us a sample on a Sapphire Rapids core).
_SPEEDUP_OVER_FLAT = 1.4


class SparseConv2dBatchLanes(SparseConv2d):
    """Takes ``sparse_conv``'s layers when the batch fills the lanes and one group's
    transposed input fits L2."""

    name = "sparse_conv_batch"

    def fits(self, layer: LayerSpec) -> bool:
        batch, ci, h, w = layer.x_shape
        o, oh, ow = layer.out_shape[1:]
        vector = 16 * 4
        return (
            sparse_groups1(layer)
            and batch >= 8
            and ci * h * w * vector <= _MAX_SCRATCH
            and o * oh * ow * vector <= _MAX_SCRATCH
        )

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        lanes = vector_lanes(target)
        batch = layer.x_shape[0]
        if lanes not in MAX_VECTORS or batch < lanes:
            return float("inf")  # lanes the batch cannot fill
        nnz = int(np.count_nonzero(layer.weight))
        positions = layer.out_shape[2] * layer.out_shape[3]
        padded_batch = -(-batch // lanes) * lanes
        return machine.seconds(
            nnz * positions * padded_batch,
            machine.sparse_batched_gmacs * _SPEEDUP_OVER_FLAT,
            nnz * 6 + conv_io_bytes(layer),
            num_cores(target),
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        ow = layer.out_shape[3]
        most = MAX_VECTORS.get(vector_lanes(target), 12)
        cols = min(ow, most)
        tiles = sorted({(max(1, most // cols), cols), (1, cols), (1, -(-cols // 2))})
        space = product(tile=[list(t) for t in tiles], cblock=[None, 2, 4])
        return settings_for(sparse_conv2d_batch_lanes, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        if "tile" in knobs:  # JSON lists -> the builder's tuple
            knobs = {**knobs, "tile": tuple(knobs["tile"])}
        return build_conv(sparse_conv2d_batch_lanes, layer, target, knobs)
