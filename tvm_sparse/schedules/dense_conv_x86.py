"""What the dense conv2d kernels share (the geometry, the implicit GEMM's tile choice and
weight packing; its kernel is ``implicit_gemm_conv_x86``) and the direct loop nest for grouped
convs that are not depthwise (``dense_x86.dense_conv2d`` builds them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from .gemm_x86 import GemmTiling, apply_activation, pack_gemm_panels, round_up


@dataclass(frozen=True)
class ConvGeometry:
    """Static shapes of one NCHW / OIHW conv2d; padding is (top, left, bottom, right)."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def out_hw(self) -> tuple[int, int]:
        _, _, h, w = self.x_shape
        _, _, kh, kw = self.w_shape
        top, left, bottom, right = self.padding
        oh = (h + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.strides[0] + 1
        ow = (w + left + right - self.dilation[1] * (kw - 1) - 1) // self.strides[1] + 1
        return oh, ow

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.x_shape[0], self.w_shape[0], *self.out_hw)

    @property
    def macs(self) -> int:
        _, ci_g, kh, kw = self.w_shape
        return int(np.prod(self.out_shape)) * ci_g * kh * kw


def _input_at(x: te.Tensor, geo: ConvGeometry, n, c, oh, ow, rh, rw):
    """``x_padded[n, c, oh*s + rh*d, ow*s + rw*d]``, zero outside the input."""
    _, _, h, w = geo.x_shape
    ih = oh * geo.strides[0] + rh * geo.dilation[0] - geo.padding[0]
    iw = ow * geo.strides[1] + rw * geo.dilation[1] - geo.padding[1]
    inside = tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)
    return te.if_then_else(inside, x[n, c, ih, iw], tirx.const(0.0, "float32"))


# Relative speed of an mr x nb tile, per vector width: 7 rows x 32 channels (14 zmm
# accumulators) measured best for ResNet's 3x3 convs on AVX-512 (Zen 4), 8 rows 6% faster on
# ResNet's 7x7 stem (Sapphire Rapids). A 14-pixel row segment (28 zmm accumulators, each loaded
# weight vector feeds 14 FMAs) ran 6-16% ahead of 7 on rows 14 to 112 wide (Emerald Rapids,
# warm: 128->128 3x3 s2 at 56x56 1670 against 1850 us, 256->256 s2 at 28x28 1448 against 1578,
# 64->64 at 56x56 1395 against 1590, the 7x7 stem 1618 against 1712); as two whole 7-wide rows
# it was no faster. 6 pixels x 64 channels (24 accumulators) wins where rows divide badly by
# 7 and 14 (Inception-v3's 192->192 1x7 at 17x17: 1025 against 1163 us for 6 x 32; 48->64 5x5
# at 35x35 1143 against 1307 for 7 x 32). On AVX2, 6x16 (12 ymm) is the classic FMA kernel and
# 7 rows spill.
_TILE_EFFICIENCY = {
    16: {(14, 32): 1.1, (6, 64): 1.1, (8, 32): 1.02, (7, 32): 1.0, (6, 32): 0.96,
         (5, 32): 0.92, (4, 32): 0.9},
    8: {(6, 16): 1.0, (5, 16): 0.97, (4, 16): 0.92},
}  # fmt: skip
# rows this narrow are taken whole, as many as fit in this many pixels (4-wide: 8 per tile)
_WHOLE_ROWS_PIXELS = {16: 8, 8: 6}


def choose_conv_tiling(
    out_w: int, num_cores: int = 1, lanes: int = 8, channels_out: int | None = None
) -> GemmTiling:
    """``mr`` output pixels x ``nb`` output channels per tile.

    Picks the tile that wastes least on padding the output width (and, given
    ``channels_out``, the channels), weighted by how fast each tile runs; rows at most half
    ``_WHOLE_ROWS_PIXELS`` wide are taken whole, as many as fit in it (4-wide rows: 8 pixels
    on AVX-512).
    """
    efficiency = _TILE_EFFICIENCY[16 if lanes >= 16 else 8]
    narrow = 2 * lanes  # the channel panel of the row-segment tiles
    whole = _WHOLE_ROWS_PIXELS[16 if lanes >= 16 else 8]
    if 2 * out_w <= whole:  # whole rows per tile (the implicit GEMM takes mr // out_w rows)
        return GemmTiling(mr=whole // out_w * out_w, nb=narrow, parallel=num_cores > 1)

    def cost(tile: tuple[int, int]) -> float:
        mr, nb = tile
        channels = round_up(channels_out, nb) / channels_out if channels_out else nb / narrow
        return round_up(out_w, mr) * channels / efficiency[tile]

    mr, nb = min(efficiency, key=cost)
    return GemmTiling(mr=mr, nb=nb, parallel=num_cores > 1)


def pack_conv_weight(weight: np.ndarray, nb: int, groups: int = 1) -> np.ndarray:
    """OIHW -> ``[ceil(Co / nb), KH*KW*Ci, nb]`` (reduction order kh, kw, ci), zero padded;
    grouped: each group's ``Co / groups`` channels packed so, the groups' panels one after
    another (``[groups * ceil(Co_g / nb), KH*KW*Ci_g, nb]``)."""
    co = weight.shape[0]
    rows = weight.transpose(0, 2, 3, 1).reshape(co, -1)
    co_g = co // groups
    return np.concatenate(
        [pack_gemm_panels(rows[g * co_g : (g + 1) * co_g], nb) for g in range(groups)]
    )


def unpack_conv_weight(packed: np.ndarray, w_shape: tuple[int, int, int, int]) -> np.ndarray:
    """``pack_conv_weight``'s inverse for an ungrouped conv: the OIHW weight of ``w_shape``."""
    co, ci, kh, kw = w_shape
    rows = packed.transpose(0, 2, 1).reshape(-1, kh * kw * ci)[:co]
    return np.ascontiguousarray(rows.reshape(co, kh, kw, ci).transpose(0, 3, 1, 2))


def conv_direct_compute(
    geo: ConvGeometry, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for grouped / depthwise conv2d as a direct loop nest (correct, not tuned)."""
    co, ci_g, kh, kw = geo.w_shape
    co_g = co // geo.groups
    x = te.placeholder(geo.x_shape, "float32", name="x")
    w = te.placeholder(geo.w_shape, "float32", name="weight")
    rc = te.reduce_axis((0, ci_g), name="rc")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    conv = te.compute(
        geo.out_shape,
        lambda n, c, y, z: te.sum(
            _input_at(x, geo, n, (c // co_g) * ci_g + rc, y, z, rh, rw) * w[c, rc, rh, rw],
            axis=[rc, rh, rw],
        ),
        name="conv",
    )
    return _with_epilogue(x, w, geo, lambda n, c, y, z: conv[n, c, y, z], has_bias, activation)


def _with_epilogue(x, w, geo: ConvGeometry, value_at, has_bias: bool, activation: str | None):
    """The PrimFunc's params ``[x, w, bias?, out]`` with ``out[n, c, y, z] = act(value_at(n, c,
    y, z) + bias[c])`` (the block named "epilogue" the schedules move into the tile loops)."""
    params = [x, w]
    bias = None
    if has_bias:
        bias = te.placeholder((geo.w_shape[0],), "float32", name="bias")
        params.append(bias)

    def epilogue(n, c, y, z):
        value = value_at(n, c, y, z)
        return apply_activation(value + bias[c] if bias is not None else value, activation)

    out = te.compute(geo.out_shape, epilogue, name="epilogue")
    return [*params, out]


def schedule_direct_conv(sch: s_tir.Schedule, parallel: bool) -> s_tir.Schedule:
    """Direct conv: parallel over (n, c), output row in registers via a local accumulator."""
    conv = sch.get_sblock("conv")
    n, c, y, z, rc, rh, rw = sch.get_loops(conv)
    sch.reorder(n, c, y, rc, rh, rw, z)
    acc_local = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(acc_local, y)
    epi = sch.get_sblock("epilogue")
    sch.reverse_compute_at(epi, y)
    if parallel:
        sch.parallel(sch.fuse(n, c))
    sch.decompose_reduction(conv, rc)
    return sch
