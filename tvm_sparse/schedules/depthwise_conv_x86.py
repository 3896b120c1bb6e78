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
338 against 381 us; 192 at 28x28 27 against 34, Sapphire Rapids). Row vectors are 8 or 16 lanes
(``row_lanes``); one past the row's end spills into the next rows, which overwrite it, so only
a plane's last row has a scalar tail. Bias and activation are fused (a heavy one as a pass of
its own over the channel's output).
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
SPLIT = 16  # a stride-2 row's even and odd halves are each a whole number of 16 floats


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
    # stride 2: input column 2m (2m + 1) is padded column 2m + left (+ 1), so the input's
    # even columns go, as one run, to one half and its odd columns to the other
    ev_dst = left // 2 if left % 2 == 0 else halves + (left - 1) // 2
    od_dst = halves + left // 2 if left % 2 == 0 else (left + 1) // 2
    assert s == 1 or (wd + left + 1) // 2 <= halves, "a split row overflows its half"
    # the input row is split 2 x 16, then 2 x 8, then 2 x 4 columns at a time, then one by one
    n16, rest = divmod(wd, 32)
    n8, rest = divmod(rest, 16)
    n4, n1 = divmod(rest, 8)
    at8, at4, at1 = 32 * n16, 32 * n16 + 16 * n8, 32 * n16 + 16 * n8 + 8 * n4

    @T.macro
    def split(xp, xf, src, dst, at, width, count):
        """``count`` runs of ``2 * width`` input columns from column ``at``: their even
        columns to one half, their odd columns to the other."""
        for q in range(count):
            pair: T.let = xf[T.ramp(src + at + 2 * width * q, 1, 2 * width)]
            xp[T.ramp(dst + ev_dst + at // 2 + width * q, 1, width)] = T.Shuffle(
                [pair], list(range(0, 2 * width, 2))
            )
            xp[T.ramp(dst + od_dst + at // 2 + width * q, 1, width)] = T.Shuffle(
                [pair], list(range(1, 2 * width, 2))
            )

    loop = T.parallel if parallel else T.serial
    # a heavy activation waits for a pass of its own (stride 1 too since the rows took the
    # small planes: 1152 channels at 7x7, 5x5, SiLU: 159 -> 108 us, Zen 4)
    inline = register_activation(activation)
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
                    # split straight from the input: through a padded row buffer, its loads
                    # straddled the just-made unaligned stores and stalled on store forwarding
                    # (72 channels at 56x56, stride 2: 82 -> 43 us, Zen 4)
                    src: T.let = (nc * h + r - top) * wd
                    dst: T.let = r * wp
                    for v in T.vectorized(wp):
                        xp[dst + v] = T.float32(0)
                    split(xp, xf, src, dst, 0, 16, n16)
                    split(xp, xf, src, dst, at8, 8, n8)
                    split(xp, xf, src, dst, at4, 4, n4)
                    for e in range(n1):
                        col: T.let = at1 + e + left
                        xp[dst + (col % 2) * halves + col // 2] = xf[src + at1 + e]
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
                    # a vector past the row's end spills into the next rows of the channel,
                    # which are written after it: only the channel's last row needs the tail
                    if oy * ow + vb * L + L <= oh * ow:
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


def prefers_flat(kernel_hw: tuple[int, int], oh: int, padded_w: int) -> bool:
    """Whether stride 1 takes the flat-plane kernel: for 5x5 and larger filters on planes of
    more than one block of output vectors. At 3x3 the rows measured as fast or faster (Zen 4:
    144 at 56x56 147 against 197 us, 192 at 28x28 59 against 71), and a plane of one block
    (7x7) has every index constant, so LLVM keeps the padded plane in registers and builds
    each tap's window by shuffles (960 at 7x7, 3x3: 40 against 20 us in rows; 1152 at 7x7,
    5x5, SiLU: 153 against 108). 5x5 at 14x14 and 28x28 stays flat (240 at 14x14: 48 against
    53). The plane is counted in 16-float vectors on AVX2 too: counted in 8, a 7x7 plane was
    two blocks and went flat at 2.7x the rows' time (1152 at 7x7, 5x5, SiLU: 346 against 125
    us, ``-mcpu=znver3``)."""
    vectors = -(-(oh * padded_w) // 16)
    return min(kernel_hw) >= 5 and vectors > flat_block(vectors)


def row_lanes(out_w: int, widest: int) -> int:
    """The vector width for output rows ``out_w`` wide: a power of two, the narrower of two
    widths where the wider one would leave half its lanes or more idle in a row's last vector
    (Zen 4, 5x5 at 7x7 wide rows: 8 lanes 33 against 51 us with 16; 56 wide, 16 channels at
    112x112 stride 2: 30 against 36). A vector past the row's end spills into the next rows,
    written later; only the plane's last row stores its tail lane by lane. Rows of the exact
    width (7, 14 or 28 lanes) made LLVM split each weight broadcast into inserts per tap: 96
    channels at 28x28, stride 2, 5x5: 46 against 31 us with 16 lanes."""
    lanes = max(2, 1 << (out_w - 1).bit_length())  # the narrowest power of two holding the row
    lanes = min(lanes, widest)
    if lanes > 8 and 0 < out_w % lanes <= lanes // 2:
        lanes //= 2
    return lanes


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
    flat = lanes is None and s == 1 and prefers_flat((kh, kw), oh, wd + left + right)
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
