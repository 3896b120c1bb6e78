"""The direct sparse convolution on x86 (weights stored sparse, activations dense)."""

from __future__ import annotations

import numpy as np
import tvm

from ...ir.layers import CONV2D, LayerSpec
from ...target import num_cores
from .._conv_dims import ConvAttrs
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..sparse_conv_panel_x86 import is_pointwise
from ..sparse_conv_x86 import sparse_conv2d
from .base import CpuKernel, TakesGroupedConvs, build_conv, conv_io_bytes, skips_work
from .knobs import parallel_choices, product, settings_for


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sparse_groups1(layer: LayerSpec) -> bool:
    """A groups=1 conv (or a grouped one's block-diagonal view) whose weights skip work: what
    every weight-sparse direct conv kernel takes."""
    w = layer.weight
    return layer.conv_attrs["groups"] == 1 and skips_work(int(np.count_nonzero(w)), w.size)


class SparseConv2d(TakesGroupedConvs, CpuKernel):
    """Grouped convs (not depthwise) come as their block-diagonal groups=1 view
    (``TakesGroupedConvs``); the subclasses inherit that."""

    name = "sparse_conv"
    layer_kind = CONV2D

    def fits(self, layer: LayerSpec) -> bool:
        """Not 1x1 convs: the tap-plane and panel kernels take those, 1.5-20x faster (ResNet-50
        at 90%, Intel, measured in the compile: 256 -> 64 at 56x56 4.1 ms against 0.22; 1024 ->
        256 at 14x14 0.29 against 0.14; 2048 -> 512 at 7x7 0.33 against 0.17), and timing a
        hopeless candidate costs compile time."""
        return sparse_groups1(layer) and not is_pointwise(
            layer.weight.shape, ConvAttrs.of(layer.conv_attrs)
        )

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        density = np.count_nonzero(w) / max(w.size, 1)
        nnz = int(np.count_nonzero(w))
        return machine.seconds(
            layer.macs_dense * density,
            machine.sparse_batched_gmacs,
            nnz * 6 + conv_io_bytes(layer),
            num_cores(target),
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        oh, ow = layer.out_shape[2], layer.out_shape[3]
        tiles = [
            (th, tw)
            for th in _divisors(oh)
            for tw in _divisors(ow)
            if 8 <= th * tw <= 128 or (oh * ow < 8 and (th, tw) == (oh, ow))
        ]
        # prefer whole rows (contiguous vectors), then bigger tiles: a bounded, sensible subset
        tiles.sort(key=lambda t: (t[1] != ow, -t[0] * t[1]))
        par = parallel_choices(num_cores(target))
        space = product(tile=[list(t) for t in tiles[:12]], parallel=par)
        return settings_for(sparse_conv2d, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        if "tile" in knobs:  # JSON lists -> the builder's tuple
            knobs = {**knobs, "tile": tuple(knobs["tile"])}
        return build_conv(sparse_conv2d, layer, target, knobs)
