"""Depthwise conv2d (groups = channels) for x86, output columns in the vector lanes.

Why: a depthwise conv does only KH*KW multiply-adds per output, so it is bound by memory and
by how many loads each FMA needs. The generic grouped loop nest (``dense_conv_x86``) tests the
padding for every input read and leaves vectorizing to LLVM; MobileNetV2's depthwise convs ran
there at about half of onnxruntime's speed. Here one task per (sample, channel): the channel is
copied once, zero padded, into a small buffer (so no read needs a bounds test), then each output
row is computed ``lanes`` columns at a time from contiguous loads of that buffer: unit stride
reads a shifted vector per tap; stride 2 reads ``2 * lanes`` floats and keeps the even or odd
ones (a ``Shuffle``), so both strides run on whole vectors. Bias and activation are fused.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ._epilogue import bias_const, check_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish
from .vector_math import install_llvm_lowering

STRIDES = (1, 2)  # the strides this kernel takes (others keep the generic loop nest)


def depthwise_applies(x_shape, w_shape, strides, dilation, groups: int) -> bool:
    """A depthwise conv (one filter per channel, multiplier 1) with stride 1 or 2 both ways
    and no dilation."""
    c = x_shape[1]
    return (
        groups == c
        and w_shape[0] == c
        and w_shape[1] == 1
        and strides[0] == strides[1]
        and strides[0] in STRIDES
        and tuple(dilation) == (1, 1)
    )


def depthwise_kernel(
    x_shape, kernel_hw, pads, stride: int, activation, has_bias: bool, nbias: int, lanes: int,
    parallel: bool,
) -> tvm.tirx.PrimFunc:  # fmt: skip
    bn, c, h, wd = x_shape
    kh, kw = kernel_hw
    top, left, bottom, right = pads
    s, L = stride, lanes
    oh = (h + top + bottom - kh) // s + 1
    ow = (wd + left + right - kw) // s + 1
    nvec = -(-ow // L)
    hp = h + top + bottom
    # every vector read stays inside the row: columns up to s * (nvec * L) + kw + L
    wp = s * nvec * L + kw + 2 * L
    hb = int(has_bias)
    even = [2 * i for i in range(L)]
    odd = [2 * i + 1 for i in range(L)]
    loop = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, c, h, wd), "float32"),
        w: T.Buffer((c * kh * kw,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((bn, c, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((bn * c * h * wd,), "float32", data=x.data)
        yf = T.decl_buffer((bn * c * oh * ow,), "float32", data=y.data)
        for nc in loop(bn * c):
            ch: T.let = nc % c
            xp = T.alloc_buffer((hp * wp,), "float32", scope="global")
            tail = T.alloc_buffer((L,), "float32", scope="global")
            for r in range(hp):  # the channel, zero padded
                if r < top or r >= top + h:
                    for v in T.vectorized(wp):
                        xp[r * wp + v] = T.float32(0)
                else:
                    for v in range(left):
                        xp[r * wp + v] = T.float32(0)
                    for v in T.vectorized(wd):
                        xp[r * wp + left + v] = xf[(nc * h + r - top) * wd + v]
                    for v in T.vectorized(wp - left - wd):
                        xp[r * wp + left + wd + v] = T.float32(0)
            for oy in range(oh):
                for vb in range(nvec):
                    acc = T.alloc_buffer((L,), "float32", scope="global")
                    acc[T.ramp(0, 1, L)] = T.broadcast(bias[ch * hb], L)
                    for i in T.unroll(kh):
                        for j in T.unroll(kw):
                            base: T.let = (oy * s + i) * wp + vb * L * s
                            ww: T.let = T.broadcast(w[(ch * kh + i) * kw + j], L)
                            if s == 1:
                                acc[T.ramp(0, 1, L)] = (
                                    acc[T.ramp(0, 1, L)] + ww * xp[T.ramp(base + j, 1, L)]
                                )
                            elif j % 2 == 0:
                                acc[T.ramp(0, 1, L)] = acc[T.ramp(0, 1, L)] + ww * T.Shuffle(
                                    [xp[T.ramp(base + j, 1, 2 * L)]], even
                                )
                            else:
                                acc[T.ramp(0, 1, L)] = acc[T.ramp(0, 1, L)] + ww * T.Shuffle(
                                    [xp[T.ramp(base + j - 1, 1, 2 * L)]], odd
                                )
                    out: T.let = (nc * oh + oy) * ow + vb * L
                    if vb * L + L <= ow:
                        yf[T.ramp(out, 1, L)] = _epilogue(acc[T.ramp(0, 1, L)], activation, L)
                    else:
                        tail[T.ramp(0, 1, L)] = acc[T.ramp(0, 1, L)]
                        for e in range(ow - vb * L):
                            yf[out + e] = _epilogue(tail[e], activation)

    return _finish(kernel)


def row_lanes(out_w: int, widest: int) -> int:
    """The vector width for output rows ``out_w`` wide: the fewest vector + scalar-tail steps
    per row (14 columns: 3 x 4 lanes + 2, not 14 scalars after no 16-lane vector), the wider
    vector on a tie."""
    widths = [w for w in (16, 8, 4) if w <= widest]
    return min(widths, key=lambda w: (out_w // w + out_w % w, -w))


def depthwise_conv2d(
    x_shape: tuple[int, int, int, int], weight: np.ndarray, bias: np.ndarray | None,
    strides, padding, dilation, groups: int, activation: str | None, target=None, *,
    lanes: int | None = None, parallel: bool = True,
) -> KernelCall:  # fmt: skip
    """``y = act(depthwise_conv2d(x, weight) + bias)``, NCHW, weight ``[C, 1, KH, KW]``.
    Consts: ``(weight, bias)`` (a 1-float bias placeholder without one)."""
    from ..target import num_cores, vector_lanes

    check_activation(activation)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    if not depthwise_applies(x_shape, weight.shape, strides, dilation, groups):
        raise ValueError(
            f"depthwise_conv2d needs one filter per channel, stride 1 or 2 and no dilation: "
            f"x {tuple(x_shape)}, weight {weight.shape}, strides {strides}, groups {groups}"
        )
    if activation == "gelu":
        install_llvm_lowering()
    bn, c, h, wd = (int(d) for d in x_shape)
    kh, kw = weight.shape[2:]
    top, left, bottom, right = (int(p) for p in padding)
    s = int(strides[0])
    oh, ow = (h + top + bottom - kh) // s + 1, (wd + left + right - kw) // s + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"depthwise conv output is empty: x {tuple(x_shape)}, w {weight.shape}")
    lanes = lanes or row_lanes(ow, vector_lanes(target))
    bias_arr, has_bias = bias_const(bias, c)
    func = depthwise_kernel(
        (bn, c, h, wd), (kh, kw), (top, left, bottom, right), s, activation, has_bias,
        bias_arr.size, lanes, parallel and num_cores(target) > 1,
    )  # fmt: skip
    return KernelCall(
        func=func,
        name="dense_depthwise_conv2d_" + "x".join(map(str, x_shape)),
        consts=(weight.reshape(-1), bias_arr),
        out_shape=(bn, c, oh, ow),
        info={
            "kind": "dense_conv2d",
            "layout": "depthwise",
            "macs": bn * c * oh * ow * kh * kw,
            "activation": activation,
            "groups": groups,
            "lanes": lanes,
        },
    )
