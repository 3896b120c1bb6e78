"""The row-tile sparse convolution on x86: stride-1 convs over few input channels (a network's
first layer), where the other direct convs spend their time outside the multiply-adds."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import LayerSpec
from ...target import num_cores, vector_lanes
from .._conv_dims import ConvAttrs
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_conv_rows_x86 import (
    default_rows,
    fits_rows,
    max_rows,
    row_geometry,
    sparse_conv2d_rows,
)
from .base import build_conv, conv_io_bytes
from .cpu_sparse_conv import SparseConv2d
from .knobs import parallel_choices, product, settings_for

# Lanes computed per second per core (GSC's first conv on an AVX-512 Xeon: 688K lanes of
# multiply-adds in 14.2 us, ~48 G/s, bound by the loads beside each FMA).
_ROWS_GLANES = 40.0


class SparseConv2dRows(SparseConv2d):
    """Offered only where ``fits_rows`` holds for the target's vector width: stride 1, output
    rows at least a vector wide, the planes of one sample in at most 256 KiB."""

    name = "sparse_conv_rows"

    def applies(self, layer: LayerSpec, target: tvm.target.Target) -> bool:
        return (
            super().applies(layer, target)  # weight-sparse, groups=1 view, not 1x1
            and fits_rows(
                tuple(layer.x_shape),
                tuple(layer.weight.shape[2:]),
                ConvAttrs.of(layer.conv_attrs),
                vector_lanes(target),
            )
        )

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        nnz = int(np.count_nonzero(layer.weight))
        batch, oh, ow = layer.out_shape[0], layer.out_shape[2], layer.out_shape[3]
        pw, _ = row_geometry(ow, vector_lanes(target))
        return machine.seconds(
            batch * nnz * oh * pw, _ROWS_GLANES, nnz * 8 + conv_io_bytes(layer), num_cores(target)
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        lanes = vector_lanes(target)
        oh, ow = layer.out_shape[2], layer.out_shape[3]
        _, segs = row_geometry(ow, lanes)
        most = max_rows(segs, lanes)
        rows = sorted({min(r, oh) for r in (default_rows(oh, segs, lanes), most, 4, 7, 8)
                       if r <= most})  # fmt: skip
        space = product(rows=rows, parallel=parallel_choices(num_cores(target)))
        return settings_for(sparse_conv2d_rows, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_conv(sparse_conv2d_rows, layer, target, knobs)
