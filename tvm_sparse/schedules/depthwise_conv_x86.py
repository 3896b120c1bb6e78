"""Depthwise conv2d (groups = channels) for x86, output columns in the vector lanes.

Why: a depthwise conv does only KH*KW multiply-adds per output, so it is bound by memory and
by how many loads each FMA needs. The generic grouped loop nest (``dense_conv_x86``) tests the
padding for every input read and leaves vectorizing to LLVM; MobileNetV2's depthwise convs ran
there at about half of onnxruntime's speed. Here one task per (sample, channel): the channel is
copied once, zero padded, into a small buffer (so no read needs a bounds test), then each output
row is computed ``lanes`` columns at a time from contiguous loads of that buffer: unit stride
reads a shifted vector per tap; for stride 2 the padded rows are stored as their even then
their odd columns (split once per input row by a ``Shuffle``), so each tap again reads one
contiguous vector (a shuffle per tap and output vector before: 96 channels at 112x112, stride 2,
338 against 381 us; 192 at 28x28 27 against 34, Sapphire Rapids). Rows up to two vectors wide
are one vector of exactly their width (no scalar tail). Bias and activation are fused.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ._epilogue import bias_const, check_activation, register_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish

STRIDES = (1, 2)  # the strides this kernel takes (others keep the generic loop nest)
SPLIT = 16  # a stride-2 row is split into even and odd columns 2 x 16 floats at a time


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
    if s == 1:
        # every vector read stays inside the row: columns up to nvec * L + kw
        wp = nvec * L + kw + L
        halves = 0
    else:
        # a stride-2 row is kept as its even then its odd padded columns ("halves" floats
        # each), so every tap reads a contiguous vector: tap j of output column o is padded
        # column 2 * o + j, i.e. entry o + j // 2 of half j % 2
        halves = SPLIT * -(-(nvec * L + kw // 2 + 1) // SPLIT)
        wp = 2 * halves
    hb = int(has_bias)
    even = [2 * i for i in range(SPLIT)]
    odd = [2 * i + 1 for i in range(SPLIT)]
    loop = T.parallel if parallel else T.serial
    # a heavy activation waits for a pass of its own at stride 2; stride 1 measured even or
    # 2-4% slower so (144 at 56x56: 300 -> 310 us)
    inline = register_activation(activation) if s == 2 else activation
    plane = oh * ow

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
            row = T.alloc_buffer((wp,), "float32", scope="global")
            tail = T.alloc_buffer((L,), "float32", scope="global")
            for r in range(hp):  # the channel, zero padded (stride 2: each row split in halves)
                if r < top or r >= top + h:
                    for v in T.vectorized(wp):
                        xp[r * wp + v] = T.float32(0)
                elif s == 1:
                    for v in range(left):
                        xp[r * wp + v] = T.float32(0)
                    for v in T.vectorized(wd):
                        xp[r * wp + left + v] = xf[(nc * h + r - top) * wd + v]
                    for v in T.vectorized(wp - left - wd):
                        xp[r * wp + left + wd + v] = T.float32(0)
                else:
                    for v in range(left):
                        row[v] = T.float32(0)
                    for v in T.vectorized(wd):
                        row[left + v] = xf[(nc * h + r - top) * wd + v]
                    for v in T.vectorized(wp - left - wd):
                        row[left + wd + v] = T.float32(0)
                    for q in range(halves // SPLIT):
                        pair: T.let = row[T.ramp(2 * q * SPLIT, 1, 2 * SPLIT)]
                        xp[T.ramp(r * wp + q * SPLIT, 1, SPLIT)] = T.Shuffle([pair], even)
                        xp[T.ramp(r * wp + halves + q * SPLIT, 1, SPLIT)] = T.Shuffle([pair], odd)
            for oy in range(oh):
                for vb in range(nvec):
                    acc = T.alloc_buffer((L,), "float32", scope="global")
                    acc[T.ramp(0, 1, L)] = T.broadcast(bias[ch * hb], L)
                    for i in T.unroll(kh):
                        for j in T.unroll(kw):
                            ww: T.let = T.broadcast(w[(ch * kh + i) * kw + j], L)
                            if s == 1:
                                base: T.let = (oy + i) * wp + vb * L + j
                                acc[T.ramp(0, 1, L)] = (
                                    acc[T.ramp(0, 1, L)] + ww * xp[T.ramp(base, 1, L)]
                                )
                            else:
                                half: T.let = (oy * 2 + i) * wp + (j % 2) * halves
                                acc[T.ramp(0, 1, L)] = (
                                    acc[T.ramp(0, 1, L)]
                                    + ww * xp[T.ramp(half + vb * L + j // 2, 1, L)]
                                )
                    out: T.let = (nc * oh + oy) * ow + vb * L
                    if vb * L + L <= ow:
                        yf[T.ramp(out, 1, L)] = _epilogue(acc[T.ramp(0, 1, L)], inline, L)
                    else:
                        # the activation in one vector, then the stores
                        tail[T.ramp(0, 1, L)] = _epilogue(acc[T.ramp(0, 1, L)], inline, L)
                        for e in range(ow - vb * L):
                            yf[out + e] = tail[e]
            if inline != activation:
                # a heavy activation (SiLU: ~40 ops, one long dependency chain) after each
                # vector's chain of 9-25 FMAs kept the core waiting on both; as a pass of its
                # own over the channel's output, just written and still cached, the vectors'
                # activations overlap. Stride 2, SiLU, Zen 4: 96 channels at 112x112 523 ->
                # 386 us (onnxruntime 350), 144 at 56x56 5x5 355 -> 314
                for v in range(plane // L):
                    yf[T.ramp(nc * plane + v * L, 1, L)] = _epilogue(
                        yf[T.ramp(nc * plane + v * L, 1, L)], activation, L
                    )
                for e in range(plane % L):
                    yf[nc * plane + plane // L * L + e] = _epilogue(
                        yf[nc * plane + plane // L * L + e], activation
                    )

    return _finish(kernel)


FLAT_BLOCK = (6, 4, 3)  # output vectors sharing each weight broadcast in the flat kernel


def flat_block(vectors: int) -> int:
    """Output vectors per block of the flat kernel: all of a small plane's (at most 6), else
    the block of ``FLAT_BLOCK`` that wastes the fewest vectors, the larger on a tie. One
    weight broadcast serves a block: alone, each FMA needed a broadcast load beside its input
    load (1152 channels at 7x7, 5x5 filter: 96 us with 4 of 5 blocked, 8 computed)."""
    if vectors <= FLAT_BLOCK[0]:
        return vectors
    return min(FLAT_BLOCK, key=lambda b: (-(-vectors // b) * b, -b))


def flat_kernel(
    x_shape, kernel_hw, pads, activation, has_bias: bool, nbias: int, lanes: int, parallel: bool
) -> tvm.tirx.PrimFunc:
    """Stride 1 over the flattened padded plane: output (oy, ox) is entry ``oy * wp + ox`` of a
    plane as wide as the padded input, so tap (i, j) of every output is entry
    ``i * wp + j`` further on: one contiguous vector per tap and ``lanes`` outputs, rows and
    all. The ``wp - ow`` columns past each row's end are computed and dropped. For narrow
    images that is far fewer instructions than a vector per row: 7x7 with a 5x5 filter is 5
    vectors of 16 per tap against 7 rows of 7 lanes (4 + 2 + 1 instructions each)."""
    bn, c, h, wd = x_shape
    kh, kw = kernel_hw
    top, left, bottom, right = pads
    L = lanes
    hp, wp = h + top + bottom, wd + left + right
    oh, ow = hp - kh + 1, wp - kw + 1
    qb = flat_block(-(-(oh * wp) // L))  # output vectors per weight broadcast
    nq = qb * -(-(oh * wp) // (L * qb))  # output vectors over the flat plane, whole blocks
    span = nq * L + (kh - 1) * wp + kw  # padded entries the last vector's taps reach
    hb = int(has_bias)
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
            xp = T.alloc_buffer((span,), "float32", scope="global")
            out = T.alloc_buffer((nq * L,), "float32", scope="global")
            for v in T.vectorized(span):
                xp[v] = T.float32(0)
            for r in range(h):
                for v in T.vectorized(wd):
                    xp[(top + r) * wp + left + v] = xf[(nc * h + r) * wd + v]
            for qo in range(nq // qb):
                acc = T.alloc_buffer((qb * L,), "float32", scope="local")
                for b in T.unroll(qb):
                    acc[T.ramp(b * L, 1, L)] = T.broadcast(bias[ch * hb], L)
                for i in T.unroll(kh):
                    for j in T.unroll(kw):
                        tap: T.let = T.broadcast(w[(ch * kh + i) * kw + j], L)
                        for b in T.unroll(qb):
                            acc[T.ramp(b * L, 1, L)] = (
                                acc[T.ramp(b * L, 1, L)]
                                + tap * xp[T.ramp((qo * qb + b) * L + i * wp + j, 1, L)]
                            )
                for b in T.unroll(qb):
                    out[T.ramp((qo * qb + b) * L, 1, L)] = _epilogue(
                        acc[T.ramp(b * L, 1, L)], activation, L
                    )
            for oy in range(oh):
                for v in T.vectorized(ow):
                    yf[(nc * oh + oy) * ow + v] = out[oy * wp + v]

    return _finish(kernel)


def row_instructions(out_w: int, widest: int) -> int:
    """Vector (or scalar tail) instructions per output row and tap of the row kernel: a row
    of at most ``WHOLE_ROW_VECTORS`` vectors is split by LLVM into power-of-two pieces."""
    lanes = row_lanes(out_w, widest)
    if lanes == out_w:
        full, rest = divmod(out_w, widest)
        return full + sum(1 for piece in (8, 4, 2, 1) if piece < widest and rest & piece)
    return out_w // lanes + out_w % lanes


def prefers_flat(oh: int, ow: int, padded_w: int, widest: int) -> bool:
    """Whether the flat-plane kernel (stride 1) takes fewer instructions per tap than rows."""
    return -(-(oh * padded_w) // widest) < oh * row_instructions(ow, widest)


# rows at most this many vectors wide are computed as one vector of exactly their width
# (LLVM splits a 28-wide vector into 16 + 8 + 4 lanes): no scalar tail at all. 960 channels
# at 7x7 ran in 22 us against 125 with 4-lane vectors and a 3-column scalar tail, 384 at 14x14
# in 41 against 92 (Sapphire Rapids); 56-wide rows were slower so (register pressure).
WHOLE_ROW_VECTORS = 2


def row_lanes(out_w: int, widest: int) -> int:
    """The vector width for output rows ``out_w`` wide: the whole row when it is at most
    ``WHOLE_ROW_VECTORS`` vectors, else the fewest vector + scalar-tail steps per row, the wider
    vector on a tie."""
    if out_w <= WHOLE_ROW_VECTORS * widest:
        return out_w
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
    bn, c, h, wd = (int(d) for d in x_shape)
    kh, kw = weight.shape[2:]
    top, left, bottom, right = (int(p) for p in padding)
    s = int(strides[0])
    oh, ow = (h + top + bottom - kh) // s + 1, (wd + left + right - kw) // s + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"depthwise conv output is empty: x {tuple(x_shape)}, w {weight.shape}")
    widest = vector_lanes(target)
    bias_arr, has_bias = bias_const(bias, c)
    pads = (top, left, bottom, right)
    threads = parallel and num_cores(target) > 1
    flat = lanes is None and s == 1 and prefers_flat(oh, ow, wd + left + right, widest)
    if flat:
        lanes = widest
        func = flat_kernel((bn, c, h, wd), (kh, kw), pads, activation, has_bias, bias_arr.size,
                           lanes, threads)  # fmt: skip
    else:
        # a one-column output still takes 2 lanes (its tail stores the one): TIR has no
        # 1-lane ramp, and the kernel failed to build for it
        lanes = max(lanes or row_lanes(ow, widest), 2)
        func = depthwise_kernel((bn, c, h, wd), (kh, kw), pads, s, activation, has_bias,
                                bias_arr.size, lanes, threads)  # fmt: skip
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
            "form": "flat" if flat else "rows",
        },
    )
