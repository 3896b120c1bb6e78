"""The dense 1x1 convolution as an NCHW GEMM: pixels are the vector lanes, weights broadcast.

Why not the implicit GEMM of ``dense_conv_x86``: that one transposes the input to NHWC and
writes its ``[pixels x channels]`` tiles back into NCHW, one short row per channel. For a 1x1
conv, whose MACs per input value are only ``Co``, those two relayouts cost up to a third of
the layer (ResNet-50's 56x56 1x1 convs ran at 0.66-0.72x onnxruntime on AVX-512). Here

    acc[n, co, p] = sum_ci W[co, ci] * x[n, ci, p]

is computed with ``mr`` output channels broadcast from the packed weight ``[Co/mr, Ci, mr]``
and ``nb`` pixels as vectors, so the output tile lands in NCHW rows as it is. The input is
packed once into ``[N, P/nb, Ci, nb]`` pixel panels (the stride is applied while packing, so a
stride-2 downsample reads only the pixels it uses): the micro-kernel then streams one
contiguous panel. The kernel reads and writes flat ``[N, C, H*W]`` views of the NCHW tensors
(declared on the same memory): an output tile spans image rows, and TIR's region analysis
cannot split a flattened index back into (row, column) ranges.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from .dense_conv_x86 import ConvGeometry
from .gemm_x86 import GemmTiling, apply_activation, round_up
from .kernel import finish


def is_pointwise(geo: ConvGeometry) -> bool:
    """A 1x1, unpadded, undilated, ungrouped conv: the layers this kernel takes."""
    _, _, kh, kw = geo.w_shape
    return (
        (kh, kw) == (1, 1) and geo.groups == 1 and not any(geo.padding) and (geo.dilation == (1, 1))
    )


# (mr output channels, nb pixels, relative speed), per vector width. Measured on Zen 4
# (AVX-512) against onnxruntime: 6x64 wins at 56x56, 12x32 at 28x28, 24x16 at 14x14.
_TILES = {
    16: ((6, 64, 1.0), (12, 32, 0.97), (24, 16, 0.95)),
    8: ((6, 16, 1.0), (12, 8, 0.9)),
    4: ((6, 8, 1.0), (12, 4, 0.9)),
}


def choose_pointwise_tiling(
    channels_out: int, pixels: int, lanes: int, num_cores: int = 1
) -> GemmTiling:
    """The tile that wastes least on padding channels and pixels, weighted by its speed."""
    tiles = _TILES.get(lanes, _TILES[8])
    mr, nb, _ = min(
        tiles, key=lambda t: round_up(channels_out, t[0]) * round_up(pixels, t[1]) / t[2]
    )
    return GemmTiling(mr=mr, nb=nb, parallel=num_cores > 1)


def pack_pointwise_weight(weight: np.ndarray, mr: int) -> np.ndarray:
    """OIHW ``[Co, Ci, 1, 1]`` -> ``[ceil(Co / mr), Ci, mr]``, zero padded: the broadcast rows."""
    co, ci = weight.shape[:2]
    padded = np.zeros((round_up(co, mr), ci), dtype=np.float32)
    padded[:co] = weight.reshape(co, ci)
    return np.ascontiguousarray(padded.reshape(-1, mr, ci).transpose(0, 2, 1))


def pointwise_compute(
    geo: ConvGeometry,
    tiling: GemmTiling,
    has_bias: bool,
    activation: str | None,
    residual: bool = False,
) -> list[te.Tensor]:
    """TE of the 1x1 conv over flat views: params ``[x (N, Ci, H*W), w_packed, bias?,
    residual?, out (N, Co, OH*OW)]``; blocks "x_panels" (the strided pixel packing), "gemm",
    "epilogue". A ``residual`` (a ResNet shortcut, ``passes.fuse_residual``) is added before
    the activation."""
    mr, nb = tiling.mr, tiling.nb
    batch, ci, h, w = geo.x_shape
    co = geo.w_shape[0]
    oh, ow = geo.out_hw
    sh, sw = geo.strides
    pixels = oh * ow
    p_pad, co_pad = round_up(pixels, nb), round_up(co, mr)

    x = te.placeholder((batch, ci, h * w), "float32", name="x")
    wp = te.placeholder((co_pad // mr, ci, mr), "float32", name="w_packed")
    last = tirx.const(pixels - 1, "int32")

    def pixel(n, panel, c, lane):  # padded pixels repeat the last one: loads stay in bounds
        p = te.min(panel * nb + lane, last)
        if (sh, sw) == (1, 1):
            return x[n, c, p]
        return x[n, c, (p // ow) * sh * w + (p % ow) * sw]

    panels = te.compute((batch, p_pad // nb, ci, nb), pixel, name="x_panels")
    k = te.reduce_axis((0, ci), name="k")
    acc = te.compute(
        (batch, co_pad, p_pad),
        lambda n, i, j: te.sum(wp[i // mr, k, i % mr] * panels[n, j // nb, k, j % nb], axis=k),
        name="gemm",
    )
    params = [x, wp]
    bias = None
    if has_bias:
        bias = te.placeholder((co,), "float32", name="bias")
        params.append(bias)

    res = None
    if residual:
        res = te.placeholder((batch, co, pixels), "float32", name="residual")
        params.append(res)

    def epilogue(n, c, p):
        value = acc[n, c, p] + bias[c] if bias is not None else acc[n, c, p]
        if res is not None:
            value = value + res[n, c, p]
        return apply_activation(value, activation)

    out = te.compute((batch, co, pixels), epilogue, name="epilogue")
    return [*params, out]


def schedule_pointwise(sch: s_tir.Schedule, tiling: GemmTiling) -> s_tir.Schedule:
    """Pixel panel outermost (its ``Ci x nb`` panel stays in cache for every channel tile),
    then ``mr`` channel tiles; the ``mr x nb`` accumulators stay in registers for all of Ci."""
    mr, nb = tiling.mr, tiling.nb
    pack = sch.get_sblock("x_panels")
    n_p, panel, _, lane = sch.get_loops(pack)
    sch.vectorize(lane)
    if tiling.parallel:
        sch.parallel(sch.fuse(n_p, panel))

    gemm = sch.get_sblock("gemm")
    n, i, j, k = sch.get_loops(gemm)
    i_o, i_i = sch.split(i, [None, mr])
    j_o, j_i = sch.split(j, [None, nb])
    sch.reorder(n, j_o, i_o, k, i_i, j_i)
    acc_local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc_local, i_o)
    sch.reverse_compute_at(sch.get_sblock("epilogue"), i_o)
    if tiling.parallel:
        sch.parallel(sch.fuse(n, j_o, i_o))
    sch.unroll(i_i)
    sch.vectorize(j_i)
    sch.decompose_reduction(gemm, k)
    sch.vectorize(sch.get_loops(acc_local)[-1])
    return sch


def with_nchw_params(func: tvm.tirx.PrimFunc, geo: ConvGeometry) -> tvm.tirx.PrimFunc:
    """The same kernel with NCHW ``x`` and ``out`` params: the flat ``[N, C, H*W]`` buffers the
    body uses are declared as views of the 4-D params' memory (a reshape that costs nothing)."""
    from tvm.tirx.stmt import DeclBuffer, SeqStmt

    shapes = {"x": geo.x_shape, "epilogue": geo.out_shape, "residual": geo.out_shape}
    params, views = [], []
    for buf in func.params:
        if buf.name not in shapes:
            params.append(buf)
            continue
        nchw = tvm.tirx.decl_buffer(shapes[buf.name], buf.dtype, buf.name, data=buf.data)
        params.append(nchw)
        views.append(DeclBuffer(buf, data=nchw.data))
    if len(views) < 2:
        raise RuntimeError(f"pointwise conv: params {[b.name for b in func.params]} lack x/out")
    return tvm.tirx.PrimFunc(params, SeqStmt([*views, func.body]), func.ret_type, func.attrs)


# The PrimFunc attribute that carries the kernel's spec (see pointwise_kernel)
SPEC_ATTR = "tvm_sparse.conv_pointwise"


def pointwise_kernel(spec: dict) -> tvm.tirx.PrimFunc:
    """The scheduled kernel of a spec: ``{"geometry": ConvGeometry fields, "tiling": GemmTiling
    fields, "has_bias", "activation", "residual"}``. The spec is kept on the function, so
    ``passes.fuse_residual`` can rebuild it with the shortcut added in the epilogue."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in spec["geometry"]))
    tiling = GemmTiling(**spec["tiling"])
    params = pointwise_compute(
        geo, tiling, spec["has_bias"], spec["activation"], spec.get("residual", False)
    )
    sch = schedule_pointwise(s_tir.Schedule(te.create_prim_func(params)), tiling)
    func = finish(with_nchw_params(sch.mod["main"], geo))
    return func.with_attr(SPEC_ATTR, json.dumps(spec))


def pointwise_spec(
    geo: ConvGeometry, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> dict:
    return {
        "geometry": list(dataclasses.astuple(geo)),
        "tiling": dataclasses.asdict(tiling),
        "has_bias": has_bias,
        "activation": activation,
        "residual": False,
    }
