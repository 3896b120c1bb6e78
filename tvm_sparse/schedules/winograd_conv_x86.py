"""Dense 3x3 stride-1 convolution by Winograd F(2x2, 3x3): 2.25x fewer multiply-adds.

Why: on ResNet's 3x3 convs onnxruntime's direct kernel (MLAS) runs at ~99% of the FMA peak of
an AVX-512 core, and the implicit GEMM here at ~94%: no direct kernel can be much faster than
the dense engine. F(2x2, 3x3) computes each 2x2 output tile from a 4x4 input tile with 16
multiplies per (input, output) channel pair instead of 36, so the same FMA rate finishes the
conv in well under the direct time, at the cost of three cheap passes (exact in float32 up to
rounding: the transforms use only 0, +-1 and 1/2).

The kernel, per sample and in NCHW (no layout change outside):

0. **Planes**: the zero-padded input split by column parity, ``plane[c, f, r, q] = xpad[c, r,
   2q + f]``, so the four columns ``2tx + j`` of a tile are ``plane[c, j % 2, r, tx + j // 2]``:
   unit-stride vector loads over ``lanes`` horizontally adjacent tiles.
1. **Input transform**: ``V = B^T d B`` for every tile and channel (adds only), stored as 16
   GEMM operands ``V[p][panel][c][lanes]``, a panel being ``lanes`` adjacent tiles of one row.
2. **16 GEMMs** ``M[p][k][tile] = sum_c U[p][k][c] * V[p][c][tile]``: the register micro-kernel
   of the tap-plane conv (``mr`` output channels broadcast x ``vectors`` panels of tiles).
   ``U = G g G^T`` is the transformed weight, a constant packed as ``[p][Co/mr][C][mr]``.
3. **Output transform** ``Y = A^T M A`` + bias + activation: each 2x2 tile's outputs are
   interleaved (``Shuffle``) into whole output row segments and stored.

Tiles are ``lanes`` per panel along a row (56x56: 28 tiles per row pad to 32); a row of at
most ``lanes / 2`` tiles is padded to a power of two and several rows share a panel (14x14 on
AVX-512: 2 rows of 7 tiles in 16 lanes), their output row segments stored one by one.
Outputs narrower than ``MIN_OUT_W`` waste too much of a panel and stay direct.
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm.script import tirx as T

from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const
from ._epilogue import epilogue as _epilogue
from ._prefetch import prefetch_l2, wants_prefetch
from .kernel import KernelCall
from .kernel import finish as _finish

MIN_OUT_W = 12  # narrower outputs leave most lanes of a tile panel empty
# F(2x2, 3x3): V = BT d BT^T, U = G g G^T, Y = AT M AT^T (Lavin & Gray, 2016)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)


def winograd_applies(x_shape, w_shape, conv: ConvAttrs) -> bool:
    """3x3, stride 1, no dilation, groups=1, and an output wide enough to fill tile panels."""
    _, ci, h, w = x_shape
    top, left, bottom, right = conv.padding
    out_w = w + left + right - 2
    out_h = h + top + bottom - 2
    return (
        tuple(w_shape[2:]) == (3, 3)
        and tuple(conv.strides) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and out_w >= MIN_OUT_W
        and out_h >= 2
    )


def transform_weight(weight: np.ndarray, mr: int) -> np.ndarray:
    """OIHW 3x3 -> ``U = G g G^T`` packed flat as ``[16][ceil(O/mr)][C][mr]`` (zero padded)."""
    o, c = weight.shape[:2]
    u = np.einsum("ai,ocij,bj->abco", _G, weight.astype(np.float64), _G)  # [4, 4, C, O]
    groups = -(-o // mr)
    padded = np.zeros((16, c, groups * mr), dtype=np.float64)
    padded[:, :, :o] = u.reshape(16, c, o)
    packed = padded.reshape(16, c, groups, mr).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed, dtype=np.float32).reshape(-1)


def _interleave(lanes: int) -> list[int]:
    """Shuffle indices that zip two ``lanes``-wide vectors: a0 b0 a1 b1 ..."""
    return [i // 2 + (i % 2) * lanes for i in range(2 * lanes)]


# The PrimFunc attribute that carries the kernel's spec (winograd_kernel's arguments)
SPEC_ATTR = "tvm_sparse.conv_winograd"


def winograd_kernel(
    x_shape, o: int, pads, activation, has_bias: bool, nbias: int, lanes: int, mr: int,
    vectors: int, parallel: bool, residual: bool = False,
) -> tvm.tirx.PrimFunc:  # fmt: skip
    """The kernel (params ``x, u, bias, residual?, y``); ``residual`` adds a tensor of the
    output's shape before the activation (``passes.fuse_residual``)."""
    spec = dict(locals())
    bn, ci, h, wd = x_shape
    top, left, bottom, right = pads
    oh, ow = h + top + bottom - 2, wd + left + right - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    sub, stack, per_row, tpanels = panel_layout(th, tw, lanes)
    panels = bn * tpanels * per_row
    groups = -(-o // mr)
    block = winograd_block(panels, vectors, ci, groups * mr, lanes)
    nblocks = -(-panels // block)
    # plane extent: every tile's window inside, the stacked rows past the last tile row too
    rows, cols = 2 * tpanels * stack + 2, per_row * sub + 1
    plane = rows * cols
    concat = list(range(lanes))
    hb = int(has_bias)
    zip_idx = _interleave(lanes)
    # without a residual the parameter is a 1-float placeholder (the last constant)
    res_shape = (bn, o, oh, ow) if residual else (1,)
    res_size = bn * o * oh * ow if residual else 1
    loop = T.parallel if parallel else T.serial
    L = lanes
    last_u = 16 * groups * mr * ci - 1
    # the transformed weights, prefetched a channel group ahead when big (see _prefetch)
    prefetch = wants_prefetch(4 * 16 * groups * mr * ci, parallel)

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        u: T.Buffer((16 * groups * ci * mr,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        res: T.Buffer(res_shape, "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((bn * ci * h * wd,), "float32", data=x.data)
        yf = T.decl_buffer((bn * o * oh * ow,), "float32", data=y.data)
        rf = T.decl_buffer((res_size,), "float32", data=res.data)
        planes = T.alloc_buffer((bn * ci * 2 * plane,), "float32", scope="global")
        v = T.alloc_buffer((16 * block * ci * L,), "float32", scope="global")
        m = T.alloc_buffer((16 * groups * mr * block * L,), "float32", scope="global")
        # 0. column-parity planes of the zero-padded input
        for nc in loop(bn * ci):
            for f in range(2):
                for r in range(rows):
                    for q in range(cols):
                        src_r: T.let = r - top
                        src_c: T.let = 2 * q + f - left
                        planes[(nc * 2 + f) * plane + r * cols + q] = T.if_then_else(
                            src_r >= 0 and src_r < h and src_c >= 0 and src_c < wd,
                            xf[nc * h * wd + src_r * wd + src_c],
                            T.float32(0),
                        )
        # stages 1-3 block by block of panels, so the transformed tiles (V) and the GEMM
        # outputs (M) of one block stay in L2 (``winograd_block``)
        for blk in range(nblocks):
            # 1. input transform, one panel of `lanes` tiles and one channel at a time
            for gc in loop(block * ci):
                g: T.let = blk * block + gc // ci
                c: T.let = gc % ci
                d = T.alloc_buffer((16 * L,), "float32", scope="global")
                s = T.alloc_buffer((16 * L,), "float32", scope="global")
                if g < panels:
                    nb: T.let = g // (tpanels * per_row)
                    ty: T.let = g // per_row % tpanels * stack
                    tx0: T.let = g % per_row * L
                    for i in T.unroll(4):
                        for j in T.unroll(4):
                            if stack == 1:
                                d[T.ramp((i * 4 + j) * L, 1, L)] = planes[
                                    T.ramp(
                                        ((nb * ci + c) * 2 + j % 2) * plane
                                        + (2 * ty + i) * cols
                                        + tx0
                                        + j // 2,
                                        1,
                                        L,
                                    )
                                ]
                            else:  # `stack` tile rows of `sub` tiles, one vector
                                d[T.ramp((i * 4 + j) * L, 1, L)] = T.Shuffle(
                                    [
                                        planes[
                                            T.ramp(
                                                ((nb * ci + c) * 2 + j % 2) * plane
                                                + (2 * (ty + r) + i) * cols
                                                + j // 2,
                                                1,
                                                sub,
                                            )
                                        ]
                                        for r in range(stack)
                                    ],
                                    concat,
                                )
                else:
                    for e in T.unroll(16):
                        d[T.ramp(e * L, 1, L)] = T.broadcast(T.float32(0), L)
                for j in T.unroll(4):  # rows: s = BT d
                    s[T.ramp(j * L, 1, L)] = d[T.ramp(j * L, 1, L)] - d[T.ramp((8 + j) * L, 1, L)]
                    s[T.ramp((4 + j) * L, 1, L)] = (
                        d[T.ramp((4 + j) * L, 1, L)] + d[T.ramp((8 + j) * L, 1, L)]
                    )
                    s[T.ramp((8 + j) * L, 1, L)] = (
                        d[T.ramp((8 + j) * L, 1, L)] - d[T.ramp((4 + j) * L, 1, L)]
                    )
                    s[T.ramp((12 + j) * L, 1, L)] = (
                        d[T.ramp((4 + j) * L, 1, L)] - d[T.ramp((12 + j) * L, 1, L)]
                    )
                for e in T.unroll(4):  # columns: V = s BT^T, stored as GEMM operand p = 4e + u
                    base: T.let = gc * L  # the panel in the block, channel c
                    stride: T.let = block * ci * L
                    v[T.ramp((4 * e) * stride + base, 1, L)] = (
                        s[T.ramp((4 * e) * L, 1, L)] - s[T.ramp((4 * e + 2) * L, 1, L)]
                    )
                    v[T.ramp((4 * e + 1) * stride + base, 1, L)] = (
                        s[T.ramp((4 * e + 1) * L, 1, L)] + s[T.ramp((4 * e + 2) * L, 1, L)]
                    )
                    v[T.ramp((4 * e + 2) * stride + base, 1, L)] = (
                        s[T.ramp((4 * e + 2) * L, 1, L)] - s[T.ramp((4 * e + 1) * L, 1, L)]
                    )
                    v[T.ramp((4 * e + 3) * stride + base, 1, L)] = (
                        s[T.ramp((4 * e + 1) * L, 1, L)] - s[T.ramp((4 * e + 3) * L, 1, L)]
                    )
            # 2. sixteen GEMMs: mr output channels x `vectors` panels per register tile
            for task in loop(16 * (block // vectors) * groups):
                p: T.let = task // ((block // vectors) * groups)
                go: T.let = task // groups % (block // vectors)
                io: T.let = task % groups
                acc = T.alloc_buffer((mr * vectors * L,), "float32", scope="global")
                for a in T.unroll(mr * vectors):
                    acc[T.ramp(a * L, 1, L)] = T.broadcast(T.float32(0), L)
                for c in range(ci):
                    if prefetch:  # the next channel group's transformed weights
                        T.evaluate(
                            prefetch_l2(u[T.min(((p * groups + io + 1) * ci + c) * mr, last_u)])
                        )
                    for r in T.unroll(mr):
                        ww: T.let = T.broadcast(u[((p * groups + io) * ci + c) * mr + r], L)
                        for w in T.unroll(vectors):
                            acc[T.ramp((r * vectors + w) * L, 1, L)] = (
                                acc[T.ramp((r * vectors + w) * L, 1, L)]
                                + ww
                                * v[T.ramp(((p * block + go * vectors + w) * ci + c) * L, 1, L)]
                            )
                for r in T.unroll(mr):
                    for w in T.unroll(vectors):
                        m[T.ramp(((p * groups * mr + io * mr + r) * block + go * vectors + w) * L,
                                 1, L)] = acc[T.ramp((r * vectors + w) * L, 1, L)]  # fmt: skip
            # 3. output transform, bias, activation; 2x2 tiles zipped into output rows
            for kg in loop(o * block):
                k: T.let = kg // block
                g: T.let = blk * block + kg % block
                if g < panels:  # the last block's tail
                    nb: T.let = g // (tpanels * per_row)
                    ty: T.let = g // per_row % tpanels * stack
                    col0: T.let = g % per_row * L * 2
                    t = T.alloc_buffer((8 * L,), "float32", scope="global")
                    row = T.alloc_buffer((2 * L,), "float32", scope="global")
                    mk: T.let = (k * block + kg % block) * L
                    mstride: T.let = groups * mr * block * L
                    for uu in T.unroll(4):  # t = AT M over the rows e
                        t[T.ramp(uu * L, 1, L)] = (
                            m[T.ramp(uu * mstride + mk, 1, L)]
                            + m[T.ramp((4 + uu) * mstride + mk, 1, L)]
                            + m[T.ramp((8 + uu) * mstride + mk, 1, L)]
                        )
                        t[T.ramp((4 + uu) * L, 1, L)] = (
                            m[T.ramp((4 + uu) * mstride + mk, 1, L)]
                            - m[T.ramp((8 + uu) * mstride + mk, 1, L)]
                            - m[T.ramp((12 + uu) * mstride + mk, 1, L)]
                        )
                    bv: T.let = T.broadcast(bias[k * hb], L)
                    for a in T.unroll(2):
                        y0: T.let = (
                            t[T.ramp((4 * a) * L, 1, L)]
                            + t[T.ramp((4 * a + 1) * L, 1, L)]
                            + t[T.ramp((4 * a + 2) * L, 1, L)]
                            + bv
                        )
                        y1: T.let = (
                            t[T.ramp((4 * a + 1) * L, 1, L)]
                            - t[T.ramp((4 * a + 2) * L, 1, L)]
                            - t[T.ramp((4 * a + 3) * L, 1, L)]
                            + bv
                        )
                        if stack == 1:
                            out_r: T.let = 2 * ty + a
                            if out_r < oh:
                                out: T.let = ((nb * o + k) * oh + out_r) * ow + col0
                                if col0 + 2 * L <= ow:
                                    if residual:
                                        yf[T.ramp(out, 1, 2 * L)] = _epilogue(
                                            T.Shuffle([y0, y1], zip_idx)
                                            + rf[T.ramp(out, 1, 2 * L)],
                                            activation,
                                            2 * L,
                                        )
                                    else:
                                        yf[T.ramp(out, 1, 2 * L)] = _epilogue(
                                            T.Shuffle([y0, y1], zip_idx), activation, 2 * L
                                        )
                                else:
                                    row[T.ramp(0, 1, 2 * L)] = T.Shuffle([y0, y1], zip_idx)
                                    for e in range(ow - col0):
                                        if residual:
                                            yf[out + e] = _epilogue(
                                                row[e] + rf[out + e], activation
                                            )
                                        else:
                                            yf[out + e] = _epilogue(row[e], activation)
                        else:  # `stack` output row segments of 2 * sub, one per stacked tile row
                            if residual:
                                row[T.ramp(0, 1, 2 * L)] = T.Shuffle([y0, y1], zip_idx)
                            else:
                                row[T.ramp(0, 1, 2 * L)] = _epilogue(
                                    T.Shuffle([y0, y1], zip_idx), activation, 2 * L
                                )
                            for r in T.unroll(stack):
                                stacked_r: T.let = 2 * (ty + r) + a
                                if stacked_r < oh:
                                    at: T.let = ((nb * o + k) * oh + stacked_r) * ow
                                    if 2 * sub == ow:
                                        if residual:
                                            yf[T.ramp(at, 1, 2 * sub)] = _epilogue(
                                                row[T.ramp(2 * sub * r, 1, 2 * sub)]
                                                + rf[T.ramp(at, 1, 2 * sub)],
                                                activation,
                                                2 * sub,
                                            )
                                        else:
                                            yf[T.ramp(at, 1, 2 * sub)] = row[
                                                T.ramp(2 * sub * r, 1, 2 * sub)
                                            ]
                                    else:
                                        for e in range(ow):
                                            if residual:
                                                yf[at + e] = _epilogue(
                                                    row[2 * sub * r + e] + rf[at + e], activation
                                                )
                                            else:
                                                yf[at + e] = row[2 * sub * r + e]

    return _finish(kernel).with_attr(SPEC_ATTR, json.dumps(spec))


# V and M of one block of panels: at most this many bytes (half the smallest L2 of the CPUs
# measured), so stages 1-3 pass them through L2 instead of L3 or memory
WINOGRAD_BLOCK_BYTES = 512 << 10


def winograd_block(panels: int, vectors: int, ci: int, co_padded: int, lanes: int) -> int:
    """Panels per block (a multiple of ``vectors``): as many as keep the block's transformed
    input (``16 x ci`` vectors a panel) and GEMM output (``16 x co``) within
    ``WINOGRAD_BLOCK_BYTES``. Whole-image stages wrote and re-read tens of MB on big images
    (Inception-v3's 32->64 at 147x147: 33 MB, 9.2 ms warm against 4.4 blocked).

    Every block reads all of the transformed weight U: one that does not fit in L2 beside a
    block (``WINOGRAD_WEIGHTS_IN_L2``) comes from L3 again per block, so blocks are only used
    where that costs less than writing and reading V and M whole (512 channels at 14x14,
    16 MB of U: 3832 us in 2 blocks against 3693 in one)."""
    per_panel = 16 * lanes * 4 * (ci + co_padded)
    whole = -(-panels // vectors) * vectors
    fit = max(1, WINOGRAD_BLOCK_BYTES // per_panel // vectors) * vectors
    if fit >= whole:
        return whole
    weight_bytes = 16 * ci * co_padded * 4
    rereads = (-(-panels // fit) - 1) * weight_bytes
    if weight_bytes > WINOGRAD_WEIGHTS_IN_L2 and rereads >= 2 * per_panel * panels:
        return whole
    return fit


WINOGRAD_WEIGHTS_IN_L2 = 1 << 20


def panel_layout(th: int, tw: int, lanes: int) -> tuple[int, int, int, int]:
    """How ``th`` x ``tw`` tiles fill panels of ``lanes``: ``(sub, stack, per_row, tpanels)``.

    A row of more than ``lanes / 2`` tiles takes ``per_row`` panels of ``lanes`` (``stack`` 1).
    A narrower row is padded to ``sub`` (a power of two) and ``stack = lanes / sub`` rows share a
    panel, so 14x14 outputs (7 tiles a row) fill 16-lane panels 2 rows at a time, 14 of 16 lanes,
    where one row per panel filled 7 of 8 lanes of a half-width vector (ResNet-50's 256->256 at
    14x14: 1856 us in the model against onnxruntime's direct 1471)."""
    if tw > lanes // 2:
        return lanes, 1, -(-tw // lanes), th
    sub = 1 << max(0, (tw - 1).bit_length())
    stack = lanes // sub
    return sub, stack, 1, -(-th // stack)


def default_tile(lanes: int, panels: int = 0, wide_isa: bool = False) -> tuple[int, int]:
    """(mr, vectors): 16 accumulators. With AVX-512's 32 registers and at most
    ``SMALL_GEMM_PANELS`` panels (batch 1), 8 channels x 2 panels (ResNet's 128 channels at 28x28:
    940 against 1280 us for 4 x 4; 256 at 14x14: 1593 against 1798, Sapphire Rapids); with more
    panels (batch 16) 4 x 4 ran 15-20% faster (64 channels at 28x28: 3749 against 4604 us on two
    threads). 4 x 4 on AVX2 (16 registers), as the tap-plane conv measured best there."""
    if wide_isa and panels <= SMALL_GEMM_PANELS:
        return (8, 2)
    return (4, 4) if lanes >= 8 else (3, 3)


SMALL_GEMM_PANELS = 32


def winograd_conv2d(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    lanes: int | None = None, tile: tuple[int, int] | None = None, parallel: bool = True,
) -> KernelCall:  # fmt: skip
    """``y = act(conv2d(x, weight) + bias)`` for a 3x3 stride-1 conv by F(2x2, 3x3).

    ``lanes`` (tiles per panel): 16 with AVX-512, else 8; rows of at most ``lanes / 2`` tiles
    are stacked into a panel (``panel_layout``).
    Consts: ``(transformed weight, bias, residual placeholder)``; the last is replaced by a
    tensor of the output's shape when ``passes.fuse_residual`` fuses an add."""
    from ..target import num_cores, vector_lanes

    weight, dims = checked_groups1_conv("winograd_conv2d", x_shape, weight_oihw, conv, activation)
    if not winograd_applies(dims.x, weight.shape, conv):
        raise ValueError(
            f"winograd_conv2d needs a 3x3 stride-1 conv with output width >= {MIN_OUT_W}, "
            f"got weight {weight.shape}, strides {conv.strides}, out {dims.out_hw}"
        )
    (bn, ci, _, _), o = dims.x, weight.shape[0]
    oh, ow = dims.out_hw
    tiles_per_row = -(-ow // 2)
    if lanes is None:
        lanes = 16 if vector_lanes(target) >= 16 else 8
    _, _, per_row, tpanels = panel_layout(-(-oh // 2), tiles_per_row, lanes)
    panels = bn * tpanels * per_row
    mr, vectors = tile or default_tile(lanes, panels, vector_lanes(target) >= 16)
    bias_arr, has_bias = bias_const(bias, o)
    func = winograd_kernel(
        dims.x, o, dims.pads, activation, has_bias, bias_arr.size, lanes, mr, vectors,
        parallel and num_cores(target) > 1,
    )  # fmt: skip
    info = {
        "kind": "dense_conv2d",
        "layout": "winograd",
        "macs": o * ci * 9 * bn * oh * ow,
        "macs_padded": 16 * -(-o // mr) * mr * ci * -(-panels // vectors) * vectors * lanes,
        "activation": activation,
        "tile": (mr, vectors, lanes),
    }
    return KernelCall(
        func=func,
        name="dense_conv2d_winograd_" + "x".join(map(str, x_shape)),
        consts=(transform_weight(weight, mr), bias_arr, np.zeros(1, np.float32)),
        out_shape=(bn, o, oh, ow),
        info=info,
    )
