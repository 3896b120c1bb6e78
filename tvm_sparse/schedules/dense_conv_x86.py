"""The dense conv2d computes and schedules: an implicit GEMM for groups=1, a direct loop nest
for grouped / depthwise convs (``dense_x86.dense_conv2d`` builds them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from .gemm_x86 import GemmTiling, apply_activation, pack_gemm_panels, parallel_elementwise, round_up


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
# accumulators) measured best for ResNet's 3x3 convs on AVX-512 (Zen 4); on AVX2, 6x16 (12 ymm)
# is the classic FMA kernel and 7 rows spill.
_ROW_EFFICIENCY = {
    16: (32, {7: 1.0, 6: 0.96, 5: 0.92, 4: 0.9}),
    8: (16, {6: 1.0, 5: 0.97, 4: 0.92}),
}


def choose_conv_tiling(out_w: int, num_cores: int = 1, lanes: int = 8) -> GemmTiling:
    """``mr`` consecutive output pixels of one row x ``nb`` output channels per tile.

    Picks the row block that wastes least on padding the output width, weighted by how fast
    each tile height runs.
    """
    nb, efficiency = _ROW_EFFICIENCY[16 if lanes >= 16 else 8]
    if out_w < 4:
        return GemmTiling(mr=out_w, nb=nb, parallel=num_cores > 1)
    mr = min(efficiency, key=lambda r: round_up(out_w, r) / efficiency[r])
    return GemmTiling(mr=mr, nb=nb, parallel=num_cores > 1)


def _nhwc_padded_input(x: te.Tensor, geo: ConvGeometry) -> te.Tensor:
    """The input as zero padded NHWC: channels contiguous, so the reduction reads both operands
    sequentially and the loads need no bounds checks. One cheap pass over the input."""
    top, left, bottom, right = geo.padding
    n, c, h, w = geo.x_shape
    zero = tirx.const(0.0, "float32")

    def value(b, y, z, ch):
        if not any(geo.padding):
            return x[b, ch, y, z]
        inside = tirx.all(y >= top, y < top + h, z >= left, z < left + w)
        return te.if_then_else(inside, x[b, ch, y - top, z - left], zero)

    return te.compute((n, h + top + bottom, w + left + right, c), value, name="x_nhwc")


def pack_conv_weight(weight: np.ndarray, nb: int) -> np.ndarray:
    """OIHW -> ``[ceil(Co / nb), KH*KW*Ci, nb]`` (reduction order kh, kw, ci), zero padded."""
    co = weight.shape[0]
    return pack_gemm_panels(weight.transpose(0, 2, 3, 1).reshape(co, -1), nb)


def conv_implicit_gemm_compute(
    geo: ConvGeometry, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for conv2d (groups=1) as an implicit GEMM: output pixels x output channels.

    ``acc[n, oh, ow, co] = sum_{kh, kw, c} x_nhwc[n, oh*s + kh*d, ow*s + kw*d, c] * W[co, c, kh,
    kw]`` with the weight packed as ``[Co / nb, KH*KW*Ci, nb]`` (channels are the vector lanes)
    and the output width padded to ``mr`` (padded pixels re-read the last real column, so every
    load stays in bounds). No im2col is built: the micro-kernel broadcasts input pixels straight
    from ``x_nhwc`` with addresses that are affine in the loops.
    """
    mr, nb = tiling.mr, tiling.nb
    batch, ci, _, _ = geo.x_shape
    co, _, kh, kw = geo.w_shape
    oh, ow = geo.out_hw
    sh, sw = geo.strides
    dh, dw = geo.dilation
    co_pad, ow_pad = round_up(co, nb), round_up(ow, mr)

    x = te.placeholder(geo.x_shape, "float32", name="x")
    w = te.placeholder((co_pad // nb, kh * kw * ci, nb), "float32", name="w_packed")
    xt = _nhwc_padded_input(x, geo)
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, ci), name="rc")
    last = tirx.const(ow - 1, "int32")
    acc = te.compute(  # channels innermost: the register tile is [mr pixels, nb channels]
        (batch, oh, ow_pad, co_pad),
        lambda n, y, z, c: te.sum(
            xt[n, y * sh + rh * dh, te.min(z, last) * sw + rw * dw, rc]
            * w[c // nb, (rh * kw + rw) * ci + rc, c % nb],
            axis=[rh, rw, rc],
        ),
        name="gemm",
    )
    return _with_epilogue(x, w, geo, lambda n, c, y, z: acc[n, y, z, c], has_bias, activation)


def schedule_conv_implicit_gemm(
    sch: s_tir.Schedule,
    tiling: GemmTiling,
    channels_outer: bool = True,
) -> s_tir.Schedule:
    """Schedule :func:`conv_implicit_gemm_compute`: an ``mr`` pixel x ``nb`` channel tile.

    ``channels_outer`` walks all pixels for one packed weight panel (panel stays in L1/L2);
    otherwise all panels for one row of pixels (the input stays in L1).
    """
    mr, nb = tiling.mr, tiling.nb
    gemm = sch.get_sblock("gemm")

    # Step 0. The NHWC padded input is one cheap parallel pass.
    parallel_elementwise(sch, sch.get_sblock("x_nhwc"), tiling.parallel)

    # Step 1. Tile: output channels by nb (one weight panel), output width by mr.
    n, y, z, c, rh, rw, rc = sch.get_loops(gemm)
    c_o, c_i = sch.split(c, [None, nb])
    z_o, z_i = sch.split(z, [None, mr])
    outer = [c_o, n, y, z_o] if channels_outer else [n, y, z_o, c_o]
    sch.reorder(*outer, rh, rw, rc, z_i, c_i)

    # Step 2. Accumulators in registers for the whole reduction; epilogue per tile.
    acc_local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc_local, outer[-1])
    sch.reverse_compute_at(sch.get_sblock("epilogue"), outer[-1])

    # Step 3. Parallel over all tiles.
    if tiling.parallel:
        sch.parallel(sch.fuse(*outer))

    # Step 4. Micro-kernel: unroll pixels, vectorize channels.
    sch.unroll(z_i)
    sch.vectorize(c_i)
    sch.decompose_reduction(gemm, rh)
    return sch


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
