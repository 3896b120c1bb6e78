"""Dense linear and conv2d kernels for x86 CPUs with AVX2, as scheduled TIR.

Why this exists: TVM 0.27 ships no BLAS and no x86 schedules for matmul or conv, and its
fallback is ~40x slower than onnxruntime. tvm-sparse keeps a layer dense wherever sparse does
not pay, so the dense kernels set the floor of every compiled model.

Both ops become one GEMM with a register-blocked micro-kernel:

    acc[i, j] = sum_k A[i, k] * B[j // nb, k, j % nb]

``A`` is the *broadcast* operand (``mr`` rows, one scalar broadcast per row and k), ``B`` the
*panel* operand, packed as ``[cols / nb, K, nb]`` so that one k step reads ``nb`` contiguous
floats (``nb / 8`` AVX2 registers). The ``mr x nb`` accumulator tile lives in registers
(``cache_write`` to ``local``, rows unrolled, columns vectorized) for the whole K loop.

- linear: A = the activation ``x[m, K]`` (rows padded to ``mr`` at run time, a cheap copy),
  B = the weight, packed and zero padded once in numpy (a constant).
- conv2d (groups=1): by shape (``default_conv_layout``) a 1x1 pixel-panel GEMM
  (``pointwise_conv_x86``), tap planes for few input channels, Winograd for wide 3x3 stride-1
  outputs, else an implicit GEMM (``implicit_gemm_conv_x86``): A = ``mr`` consecutive output
  pixels of one row, broadcast from the zero padded NCHW input, B = the weight packed as
  ``[Co/nb, KH*KW*Ci, nb]``. No im2col matrix is built: a pixel's address is affine in the
  (kh, kw, ci) loops. (An im2col-panel version measured 2x slower on the GSC convs: the
  gather's index arithmetic cost more than the FMAs.)
- conv2d (depthwise): ``depthwise_conv_x86``; other grouped convs a direct loop nest.

Bias and activation (relu, relu6, gelu in erf form) are fused into each kernel's epilogue. The
linear micro-kernel, its schedule and weight packing live in ``gemm_x86``; this module builds
the kernels.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from ..target import cpu_isa, num_cores, resolve_target, vector_lanes
from ._conv_dims import DEFAULT_CONV, ConvAttrs
from ._epilogue import ACTIVATIONS
from .dense_conv_planes_x86 import dense_conv2d_planes
from .dense_conv_x86 import (
    ConvGeometry,
    choose_conv_tiling,
    conv_direct_compute,
    pack_conv_weight,
    schedule_direct_conv,
)
from .depthwise_conv_x86 import depthwise_applies, depthwise_conv2d
from .gemm_x86 import (
    GemmTiling,
    apply_activation,
    choose_tiling,
    pack_gemm_panels,
    round_up,
    schedule_gemm,
)
from .implicit_gemm_conv_x86 import implicit_gemm_kernel
from .kernel import KernelCall
from .kernel import finish as _finish
from .pointwise_conv_x86 import (
    choose_pointwise,
    is_pointwise,
    pointwise_kernel,
    pointwise_outputs_computed,
    pointwise_spec,
    pointwise_weight,
)
from .winograd_conv_x86 import winograd_applies, winograd_conv2d

# the PrimFunc attribute with a dense linear kernel's sizes and packing (JSON): a fusion pass
# (``fuse_recurrent_cell``) rebuilds the product from its packed panels
SPEC_ATTR = "tvm_sparse.dense_linear"


def linear_compute(
    m: int, k: int, n: int, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for ``act(x @ W.T + b)`` with a panel-packed weight; returns the PrimFunc's params."""
    mr, nb = tiling.mr, tiling.nb
    m_pad, n_pad = round_up(m, mr), round_up(n, nb)
    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n_pad // nb, k, nb), "float32", name="w_packed")
    if m_pad != m:
        zero = tirx.const(0.0, "float32")
        a = te.compute((m_pad, k), lambda i, r: te.if_then_else(i < m, x[i, r], zero), "x_pad")
    else:
        a = x
    rk = te.reduce_axis((0, k), name="k")
    acc = te.compute(
        (m_pad, n_pad),
        lambda i, j: te.sum(a[i, rk] * w[j // nb, rk, j % nb], axis=rk),
        name="gemm",
    )
    params = [x, w]
    if has_bias:
        bias = te.placeholder((n,), "float32", name="bias")
        params.append(bias)
        out = te.compute(
            (m, n), lambda i, j: apply_activation(acc[i, j] + bias[j], activation), "epilogue"
        )
    else:
        out = te.compute((m, n), lambda i, j: apply_activation(acc[i, j], activation), "epilogue")
    return [*params, out]


def dense_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: tvm.target.Target | None = None,
    tiling: GemmTiling | None = None,
) -> KernelCall:
    """``y[m, N] = act(x[m, K] @ weight[N, K].T + bias[N])`` as a scheduled kernel.

    The weight (torch / ONNX-Gemm transB layout) is packed here into ``[N/nb, K, nb]`` panels;
    consts are ``(packed_weight, bias?)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    target = resolve_target(target or "llvm")
    weight = np.asarray(weight, dtype=np.float32)
    n, k = weight.shape
    tiling = tiling or choose_tiling(
        m, n, num_cores(target), vector_lanes(target), cpu_isa(target).zmm_split
    )
    params = linear_compute(m, k, n, tiling, bias is not None, activation)
    sch = s_tir.Schedule(te.create_prim_func(params))
    schedule_gemm(sch, tiling)
    consts = [pack_gemm_panels(weight, tiling.nb)]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(n))
    m_pad, n_pad = round_up(m, tiling.mr), round_up(n, tiling.nb)
    spec = {"m": m, "k": k, "n": n, "nb": tiling.nb, "bias": bias is not None,
            "activation": activation}  # fmt: skip
    return KernelCall(
        func=_finish(sch.mod["main"]).with_attr(SPEC_ATTR, json.dumps(spec)),
        name=f"dense_linear_m{m}_k{k}_n{n}",
        consts=tuple(consts),
        out_shape=(m, n),
        info={
            "kind": "dense_linear",
            "macs": m * n * k,
            "macs_padded": m_pad * n_pad * k,
            "tiling": tiling,
            "activation": activation,
        },
    )


# groups=1 convs with at most this many input channels take the tap-plane kernel: with so few
# channels the implicit GEMM's NHWC copy and short NCHW stores cost more than its FMAs (ResNet
# stem 3 -> 64, 7x7 s2: 0.99x onnxruntime against 0.89x; GSC's 1 -> 64 5x5: 1.25x against 0.76x).
PLANES_MAX_CHANNELS = 16
# ... and a reduction shorter than this: a long one (ResNet's 7x7 stem over 3 channels, 147)
# amortizes the implicit GEMM's transposed stores (1654 against 1836 us warm, Sapphire Rapids),
# a short one (MobileNetV2's 3x3 stem, 27; GSC's 5x5 over 1 channel, 25) does not (278 against
# 284 for MobileNetV2's)
PLANES_MAX_REDUCTION = 64
CONV_LAYOUTS = ("pointwise", "implicit_gemm", "planes", "winograd", "direct")
# the layouts of a grouped conv that is not depthwise ("direct": the untuned loop nest, kept as
# a reference)
GROUPED_LAYOUTS = ("implicit_gemm", "planes", "direct")


def grouped_nb(co_g: int, lanes: int) -> int:
    """Channels per panel of a grouped implicit GEMM: a vector, or the widest of half and a
    quarter of one that divides the group's channels (no padded lanes), else a vector."""
    for nb in (lanes, lanes // 2, lanes // 4):
        if nb >= 1 and co_g % nb == 0:
            return nb
    return lanes


# Relative speed of a grouped implicit GEMM's row segment of mr pixels at one vector of
# channels: RegNetX-400MF's 3x3 convs (group width 16) on an AVX-512 Xeon, 1 thread, measured
# 14 pixels fastest (64 GMAC/s at 28 and 14 wide), 12 and 7 a few percent slower where they
# divide the row.
_GROUPED_ROWS = {14: 1.0, 12: 0.95, 7: 0.94, 6: 0.85, 4: 0.8}


def choose_grouped_tiling(co_g: int, out_w: int, num_cores: int = 1, lanes: int = 8
                          ) -> GemmTiling:  # fmt: skip
    """The implicit GEMM's tile for a grouped conv: ``grouped_nb`` channels and the row segment
    that wastes least on overlapping the row's last tile (whole rows where a row is under 7
    pixels)."""
    nb = grouped_nb(co_g, lanes)
    if out_w < 7:
        return GemmTiling(mr=14 // out_w * out_w, nb=nb, parallel=num_cores > 1)
    fits = {r: e for r, e in _GROUPED_ROWS.items() if r <= out_w}
    mr = min(fits, key=lambda r: round_up(out_w, r) / fits[r])
    return GemmTiling(mr=mr, nb=nb, parallel=num_cores > 1)


def default_grouped_layout(geo: ConvGeometry, lanes: int) -> str:
    """A grouped conv whose group fills whole vectors of output channels takes the implicit
    GEMM (channels in the lanes), a narrower group or a 1x1 conv the tap planes (positions in
    the lanes; a 1x1 unit-stride conv reads its input in place)."""
    _, _, kh, kw = geo.w_shape
    if kh * kw > 1 and (geo.w_shape[0] // geo.groups) % lanes == 0:
        return "implicit_gemm"
    return "planes"


# The attribute an ungrouped implicit-GEMM conv carries: its geometry, activation and panel
# width, so a pass can unpack its weight (``unpack_conv_weight``) and rebuild it as another
# kernel (``passes.fuse_conv_pool``: the stem conv with the max pool after it).
IMPLICIT_GEMM_ATTR = "tvm_sparse.dense_conv_implicit_gemm"


def default_conv_layout(geo: ConvGeometry) -> str:
    """The groups=1 kernel a conv gets unless told: 1x1 pointwise, few channels planes (short
    reductions), 3x3 stride 1 Winograd (1.5x onnxruntime on ResNet's 3x3 convs, Zen 4), else
    the implicit GEMM."""
    if is_pointwise(geo):
        return "pointwise"
    _, ci, kh, kw = geo.w_shape
    if geo.x_shape[1] <= PLANES_MAX_CHANNELS and ci * kh * kw < PLANES_MAX_REDUCTION:
        return "planes"
    conv = ConvAttrs(geo.strides, geo.padding, geo.dilation, geo.groups)
    if winograd_applies(geo.x_shape, geo.w_shape, conv):
        return "winograd"
    return "implicit_gemm"


def conv_geometry(x_shape, weight_shape, conv: ConvAttrs) -> ConvGeometry:
    """The static geometry of one conv2d, all Python ints."""
    return ConvGeometry(
        tuple(int(d) for d in x_shape),
        tuple(int(d) for d in weight_shape),
        tuple(int(d) for d in conv.strides),
        tuple(int(d) for d in conv.padding),
        tuple(int(d) for d in conv.dilation),
        int(conv.groups),
    )


def is_pointwise_layer(layer) -> bool:
    """Whether a conv ``LayerSpec`` takes the 1x1 pixel-panel kernel (its own tile knobs)."""
    return is_pointwise(
        conv_geometry(layer.x_shape, layer.weight.shape, ConvAttrs.of(layer.conv_attrs))
    )


def winograd_layer(layer) -> bool:
    """Whether a conv ``LayerSpec`` can take the Winograd kernel (a tuning knob)."""
    return winograd_applies(layer.x_shape, layer.weight.shape, ConvAttrs.of(layer.conv_attrs))


def dense_conv2d(
    x_shape: tuple[int, int, int, int], weight: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None,
    target: tvm.target.Target | None = None, tiling: GemmTiling | None = None,
    layout: str | None = None, planes_tile: tuple[int, int] | None = None,
    winograd_tile: tuple[int, int] | None = None, pointwise_order: str | None = None,
) -> KernelCall:  # fmt: skip
    """``y = act(conv2d(x, weight) + bias)`` in NCHW / OIHW as a scheduled kernel.

    ``layout`` (default: by shape, see ``default_conv_layout``) picks the kernel for groups=1:
    ``pointwise`` (1x1: an NCHW GEMM over pixel panels, ``tiling`` = channels x pixels,
    ``pointwise_order`` = ``panel`` or ``cotile`` outer, default by the input's size),
    ``implicit_gemm`` (pixels x channels micro-kernel over an NHWC copy, ``tiling`` = pixels x
    channels; consts ``(weight packed as [Co/nb, KH*KW*Ci, nb], bias?)``) or ``planes``
    (positions in the lanes over tap planes, ``planes_tile`` = (channels, vectors); consts
    ``(packed weight, tap offsets, bias)``) or ``winograd`` (3x3 stride 1 by F(2x2, 3x3) or
    F(4x4, 3x3), ``winograd_tile`` = (channels, tile panels[, output tile side]); consts
    ``(transformed weight, bias, residual placeholder)``).
    Depthwise convs (stride 1 or 2) run ``depthwise_conv_x86`` (consts ``(weight, bias)``);
    other groups>1 convs a direct loop nest (consts = ``(weight, bias?)``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    target = resolve_target(target or "llvm")
    weight = np.asarray(weight, dtype=np.float32)
    co, ci_g, kh, kw = weight.shape
    groups = conv.groups
    if x_shape[1] != ci_g * groups or co % groups:
        raise ValueError(
            f"conv2d shapes disagree: x {tuple(x_shape)}, weight {weight.shape}, groups {groups}"
        )
    geo = conv_geometry(x_shape, weight.shape, conv)
    if min(geo.out_hw) <= 0:
        raise ValueError(f"conv2d output is empty: x {tuple(x_shape)}, weight {weight.shape}")
    info = {"kind": "dense_conv2d", "macs": geo.macs, "activation": activation, "groups": groups}
    if groups > 1 and depthwise_applies(x_shape, weight.shape, conv.strides, conv.dilation,
                                        groups):  # fmt: skip
        return depthwise_conv2d(
            x_shape, weight, bias, conv.strides, conv.padding, conv.dilation, groups,
            activation, target,
        )  # fmt: skip
    if groups > 1:
        layout = layout or default_grouped_layout(geo, vector_lanes(target))
        if layout not in GROUPED_LAYOUTS:
            raise ValueError(f"a grouped conv's layout is one of {GROUPED_LAYOUTS}, not {layout!r}")
        return _grouped_conv2d(geo, weight, bias, conv, activation, target, info, layout,
                               tiling, planes_tile)  # fmt: skip
    layout = layout or default_conv_layout(geo)
    if layout not in CONV_LAYOUTS[:4]:
        raise ValueError(f"layout must be one of {CONV_LAYOUTS[:4]}, not {layout!r}")
    if groups == 1 and layout == "planes":
        mr, vectors = planes_tile or (None, None)
        call = dense_conv2d_planes(
            x_shape, weight, bias, conv, activation, target, mr=mr, vectors=vectors
        )
        return dataclasses.replace(call, info={**call.info, "groups": 1})
    if groups == 1 and layout == "winograd":
        call = winograd_conv2d(x_shape, weight, bias, conv, activation, target, tile=winograd_tile)
        return dataclasses.replace(call, info={**call.info, "groups": 1})
    if layout == "pointwise" and not is_pointwise(geo):
        raise ValueError(f"layout 'pointwise' needs an unpadded 1x1 conv, got {weight.shape}")
    if groups == 1 and layout == "pointwise":
        if tiling is None:
            isa = cpu_isa(target)
            tiling, default_order = choose_pointwise(
                geo, isa.lanes, num_cores(target), isa.zmm_split
            )
            pointwise_order = pointwise_order or default_order
        spec = pointwise_spec(
            geo, tiling, bias is not None, activation, pointwise_order, num_cores(target)
        )
        func = pointwise_kernel(spec)
        consts = [pointwise_weight(weight, spec)]
        info.update(tiling=tiling, layout="pointwise", order=spec["order"])
        info["macs_padded"] = geo.x_shape[0] * ci_g * pointwise_outputs_computed(spec)
    else:
        tiling = tiling or choose_conv_tiling(
            geo.out_hw[1], num_cores(target), vector_lanes(target), co
        )
        func = implicit_gemm_kernel(geo, tiling, bias is not None, activation).with_attr(
            IMPLICIT_GEMM_ATTR,
            json.dumps(
                {"geometry": dataclasses.astuple(geo), "activation": activation, "nb": tiling.nb}
            ),
        )
        consts = [pack_conv_weight(weight, tiling.nb)]
        info.update(tiling=tiling, layout="implicit_gemm")
        ow = geo.out_hw[1]
        info["macs_padded"] = (
            geo.macs // (co * ow) * round_up(co, tiling.nb) * round_up(ow, min(tiling.mr, ow))
        )
    return _conv_call(geo, func, consts, bias, info)


def _conv_call(geo: ConvGeometry, func, consts: list, bias, info: dict) -> KernelCall:
    """The KernelCall of a conv kernel whose params are ``[x, *consts, bias?, out]``."""
    co = geo.w_shape[0]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(co))
    return KernelCall(
        func=_finish(func),
        name=f"dense_conv2d_{'x'.join(map(str, geo.x_shape))}_w{'x'.join(map(str, geo.w_shape))}",
        consts=tuple(consts),
        out_shape=geo.out_shape,
        info=info,
    )


def _grouped_conv2d(
    geo: ConvGeometry, weight: np.ndarray, bias, conv: ConvAttrs, activation, target,
    info: dict, layout: str, tiling: GemmTiling | None, planes_tile: tuple[int, int] | None,
) -> KernelCall:  # fmt: skip
    """A grouped conv that is not depthwise: the implicit GEMM with a group's channels in the
    lanes (each panel inside one group), the tap planes with a group's channels broadcast, or
    the direct loop nest."""
    co, ci_g = geo.w_shape[:2]
    groups = geo.groups
    if layout == "planes":
        mr, vectors = planes_tile or (None, None)
        call = dense_conv2d_planes(
            geo.x_shape, weight, bias, conv, activation, target, mr=mr, vectors=vectors
        )
        return dataclasses.replace(call, info={**call.info, "groups": groups})
    if layout == "implicit_gemm":
        co_g = co // groups
        tiling = tiling or choose_grouped_tiling(
            co_g, geo.out_hw[1], num_cores(target), vector_lanes(target)
        )
        func = implicit_gemm_kernel(geo, tiling, bias is not None, activation)
        ow = geo.out_hw[1]
        info.update(tiling=tiling, layout="implicit_gemm")
        info["macs_padded"] = (
            geo.macs // (co * ow) * groups * round_up(co_g, tiling.nb)
            * round_up(ow, min(tiling.mr, ow))
        )  # fmt: skip
        return _conv_call(geo, func, [pack_conv_weight(weight, tiling.nb, groups)], bias, info)
    params = conv_direct_compute(geo, bias is not None, activation)
    sch = schedule_direct_conv(s_tir.Schedule(te.create_prim_func(params)), num_cores(target) > 1)
    info.update(layout="direct")
    return _conv_call(geo, sch.mod["main"], [np.ascontiguousarray(weight)], bias, info)
