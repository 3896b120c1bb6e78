"""Dense x86 kernels: the register-blocked GEMM and the implicit-GEMM convolution.

Always the first candidate of a layer, so the choice can never be forced onto a slower sparse
kernel, and offered even when sparse kernels are turned off.
"""

from __future__ import annotations

import tvm

from ...ir.layers import CONV2D, LayerSpec
from ...target import num_cores, vector_lanes
from .. import dense_x86
from ..cost_model import MachineModel
from ..kernel import KernelCall
from ..pointwise_conv_x86 import ORDERS as POINTWISE_ORDERS
from .base import CpuKernel, build_conv, build_linear, conv_io_bytes
from .knobs import parallel_choices, product, round_up, settings_for

# (output channels, position vectors) of the tap-plane conv's register tile
PLANES_TILES = [(4, 4), (6, 4), (4, 3), (3, 3), (2, 6)]
# (output channels, tile panels) of the Winograd GEMMs' register tile, and the output tile
# side (F(2x2, 3x3) or F(4x4, 3x3))
WINOGRAD_TILES = [
    (mr, vectors, m) for m in (2, 4) for mr, vectors in ((4, 4), (6, 4), (8, 2), (4, 3), (16, 1))
]


def _tiling(knobs: dict) -> dict:
    """JSON knobs -> keyword arguments: the ``tiling`` dict becomes a ``GemmTiling``, the
    ``planes_tile`` list a tuple."""
    if "tiling" in knobs:
        knobs = {**knobs, "tiling": dense_x86.GemmTiling(**knobs["tiling"])}
    for key in ("planes_tile", "winograd_tile"):
        if key in knobs:
            knobs = {**knobs, key: tuple(knobs[key])}
    return knobs


class DenseLinear(CpuKernel):
    name = "dense"
    skips_zeros = False

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        gmacs = machine.gemv_gmacs if m < 4 else machine.dense_gmacs
        dense_bytes = w.nbytes + 4 * m * (n + k)
        return machine.seconds(m * n * k, gmacs, dense_bytes, num_cores(target))

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        m, n = layer.rows, layer.weight.shape[0]
        lanes = vector_lanes(target)
        mrs = ([4, 5, 6, 8] if lanes >= 16 else [4, 5, 6]) if m >= 4 else [m]
        col_cap = max(16, round_up(n, 16))
        nbs = [nb for nb in (16, 32, 64, 128) if nb <= col_cap and (m < 4 or nb <= 4 * lanes)]
        par = parallel_choices(num_cores(target))
        space = [{"tiling": t} for t in product(mr=mrs, nb=nbs, k_unroll=[1, 4], parallel=par)]
        return settings_for(dense_x86.dense_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(dense_x86.dense_linear, layer, target, _tiling(knobs))


class DenseConv2d(CpuKernel):
    name = "dense"
    layer_kind = CONV2D
    skips_zeros = False

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        return machine.seconds(
            layer.macs_dense,
            machine.conv_dense_gmacs,
            layer.weight.nbytes + conv_io_bytes(layer),
            num_cores(target),
        )

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        par = parallel_choices(num_cores(target))
        lanes = vector_lanes(target)
        groups = layer.conv_attrs.get("groups", 1)
        if groups != 1:
            return self._grouped_knobs(layer, groups, lanes, par)
        if dense_x86.is_pointwise_layer(layer):  # mr channels x nb pixels; <= 28 accumulators
            tiles = product(mr=[6, 8, 12, 24], nb=[16, 32, 64], parallel=par)
            tiles = [t for t in tiles if t["mr"] * t["nb"] <= 28 * lanes]
            orders = POINTWISE_ORDERS
            space = [{"tiling": t, "pointwise_order": o} for t in tiles for o in orders]
            return settings_for(dense_x86.dense_conv2d, space)
        ow = layer.out_shape[3]
        mrs = [4, 5, 6, 7] if ow >= 4 else [ow]
        gemm = product(mr=mrs, nb=[16, 32], parallel=par)
        space = [{"layout": "implicit_gemm", "tiling": t} for t in gemm]
        space += [{"layout": "planes", "planes_tile": t} for t in PLANES_TILES]
        if dense_x86.winograd_layer(layer):
            space += [{"layout": "winograd", "winograd_tile": t} for t in WINOGRAD_TILES]
        return settings_for(dense_x86.dense_conv2d, space)

    @staticmethod
    def _grouped_knobs(layer: LayerSpec, groups: int, lanes: int, par: list) -> list[dict]:
        """A grouped conv's: the tap planes' tiles and the grouped implicit GEMM's (channels of
        one group per panel); none for a depthwise conv (its own kernel)."""
        co, ci_g = layer.weight.shape[:2]
        if ci_g == 1 and co == groups:  # depthwise (or its fallback): no knobs
            return [{}]
        co_g, ow = co // groups, layer.out_shape[3]
        nbs = [dense_x86.grouped_nb(co_g, lanes)]
        nbs += [2 * lanes] if co_g % (2 * lanes) == 0 else []
        mrs = sorted({min(r, ow) for r in (4, 7, 12, 14)})
        gemm = [t for t in product(mr=mrs, nb=nbs, parallel=par) if t["mr"] * t["nb"] <= 16 * lanes]
        space = [{"layout": "planes", "planes_tile": t} for t in PLANES_TILES]
        space += [{"layout": "implicit_gemm", "tiling": t} for t in gemm]
        return settings_for(dense_x86.dense_conv2d, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_conv(dense_x86.dense_conv2d, layer, target, _tiling(knobs))
