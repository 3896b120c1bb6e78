"""Dense 3x3 stride-1 convolution by Winograd F(2x2, 3x3) or F(4x4, 3x3): 2.25x or 4x fewer
multiply-adds.

Why: on ResNet's 3x3 convs onnxruntime's direct kernel (MLAS) runs at ~99% of the FMA peak of
an AVX-512 core, and the implicit GEMM here at ~94%: no direct kernel can be much faster than
the dense engine. F(m x m, 3x3) computes each m x m output tile from an (m+2) x (m+2) input
tile with (m+2)^2 multiplies per (input, output) channel pair instead of 9 m^2, so the same
FMA rate finishes the conv in well under the direct time, at the cost of three cheap passes.
F(2x2)'s transforms use only 0, +-1 and 1/2 (exact up to rounding); F(4x4)'s multiply by up to
8 (relative error ~1e-5 against ~1e-7 on 64-512 channels), and its 36 GEMMs do 2.25 multiplies
an output against F(2x2)'s 4: ResNet's 64 channels at 56x56 1040 -> 787 us, 128 at 28x28 836
-> 631, VGG's 256 at 56x56 16.8 -> 9.4 ms (Intel Xeon, AVX-512, 1 thread). It takes the layers
whose tiles fill the GEMMs' register tile (``default_out_tile``): at 14x14 its 16 tiles make
one panel, half an 8 x 2 register tile, and F(2x2) is faster (826 against 993 us).

The kernel, per sample and in NCHW (no layout change outside), ``m`` the output tile side:

0. **Planes**: the zero-padded input split by column modulo ``m``, ``plane[c, f, r, q] =
   xpad[c, r, m q + f]``, so the columns ``m tx + j`` of a tile are ``plane[c, j % m, r, tx +
   j // m]``: unit-stride vector loads over ``lanes`` horizontally adjacent tiles. Only the
   rows one block of panels reads are kept, a ring filled block by block (``plane_ring``):
   whole-image planes went to memory and back (32 channels at 149x149: 1947 -> 1681 us
   alone, 80 at 73x73 6363 -> 5367, Intel Xeon AVX-512).
1. **Input transform**: ``V = B^T d B`` for every tile and channel, stored as (m+2)^2 GEMM
   operands ``V[p][panel][c][lanes]``, a panel being ``lanes`` adjacent tiles of one row.
2. **(m+2)^2 GEMMs** ``M[p][k][tile] = sum_c U[p][k][c] * V[p][c][tile]``: the register
   micro-kernel of the tap-plane conv (``mr`` output channels broadcast x ``vectors`` panels of
   tiles). ``U = G g G^T`` is the transformed weight, a constant packed as
   ``[p][Co/mr][C][mr]``.
3. **Output transform** ``Y = A^T M A`` + bias + activation: each tile row's ``m`` outputs are
   interleaved (``Shuffle``) into whole output row segments and stored.

Tiles are ``lanes`` per panel along a row (56x56 with F(2x2): 28 tiles per row pad to 32); a
row of at most ``lanes / 2`` tiles is padded to a power of two and several rows share a panel
(14x14 on AVX-512: 2 rows of 7 tiles in 16 lanes), their output row segments stored one by
one. Outputs narrower than ``MIN_OUT_W`` waste too much of a panel and stay direct.
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm.script import tirx as T

from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const, register_activation
from ._epilogue import epilogue as _epilogue
from ._lanes import row_copy_macro
from ._prefetch import prefetch_l2, wants_prefetch
from .kernel import KernelCall
from .kernel import finish as _finish

MIN_OUT_W = 12  # narrower outputs leave most lanes of a tile panel empty
# F(2x2, 3x3): V = BT d BT^T, U = G g G^T, Y = AT M AT^T (Lavin & Gray, 2016); G, the weight's
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


def transform_weight(weight: np.ndarray, mr: int, out_tile: int = 2) -> np.ndarray:
    """OIHW 3x3 -> ``U = G g G^T`` packed flat as ``[alpha^2][ceil(O/mr)][C][mr]`` (zero
    padded; ``alpha = out_tile + 2``), computed in float64."""
    o, c = weight.shape[:2]
    g = _G if out_tile == 2 else _G4
    ops = g.shape[0] ** 2
    u = np.einsum("ai,ocij,bj->abco", g, weight.astype(np.float64), g)  # [a, a, C, O]
    groups = -(-o // mr)
    padded = np.zeros((ops, c, groups * mr), dtype=np.float64)
    padded[:, :, :o] = u.reshape(ops, c, o)
    packed = padded.reshape(ops, c, groups, mr).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed, dtype=np.float32).reshape(-1)


# The PrimFunc attribute that carries the kernel's spec (winograd_kernel's arguments)
SPEC_ATTR = "tvm_sparse.conv_winograd"


# F(4x4, 3x3)'s G; its B^T and A^T are written out in _input_row and _output_row
_G4 = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
OUT_TILES = (2, 4)


def _input_row(m: int, r: int, x: list, c):
    """Row ``r`` of ``B^T x`` (``x``: the ``m + 2`` values of one tile column or row), with
    ``c(value)`` a constant of the vector's width: F(2x2) adds only; F(4x4) shares terms."""
    if m == 2:
        return (x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3])[r]
    if r == 0:
        return c(4.0) * x[0] - c(5.0) * x[2] + x[4]
    if r == 5:
        return c(4.0) * x[1] - c(5.0) * x[3] + x[5]
    if r in (1, 2):
        near, far = x[4] - c(4.0) * x[2], x[3] - c(4.0) * x[1]
    else:
        near, far = x[4] - x[2], c(2.0) * (x[3] - x[1])
    return near + far if r in (1, 3) else near - far


def _output_row(m: int, r: int, x: list, c):
    """Row ``r`` of ``A^T x`` (``x``: ``m + 2`` values)."""
    if m == 2:
        return (x[0] + x[1] + x[2], x[1] - x[2] - x[3])[r]
    if r == 0:
        return x[0] + x[1] + x[2] + x[3] + x[4]
    if r == 1:
        return x[1] - x[2] + c(2.0) * (x[3] - x[4])
    if r == 2:
        return x[1] + x[2] + c(4.0) * (x[3] + x[4])
    return x[1] - x[2] + c(8.0) * (x[3] - x[4]) + x[5]


def _zip(parts: int, lanes: int) -> list[int]:
    """Shuffle indices that interleave ``parts`` vectors of ``lanes``: a0 b0 c0 d0 a1 ..."""
    return [(i % parts) * lanes + i // parts for i in range(parts * lanes)]


def winograd_kernel(
    x_shape, o: int, pads, activation, has_bias: bool, nbias: int, lanes: int, mr: int,
    vectors: int, parallel: bool, residual: bool = False, out_tile: int = 2,
) -> tvm.tirx.PrimFunc:  # fmt: skip
    """The kernel (params ``x, u, bias, residual?, y``); ``residual`` adds a tensor of the
    output's shape before the activation (``passes.fuse_residual``); ``out_tile``: F(2x2, 3x3)
    or F(4x4, 3x3) (``OUT_TILES``)."""
    spec = dict(locals())
    if out_tile not in OUT_TILES:
        raise ValueError(f"winograd: out_tile must be one of {OUT_TILES}, got {out_tile}")
    bn, ci, h, wd = x_shape
    top, left, bottom, right = pads
    oh, ow = h + top + bottom - 2, wd + left + right - 2
    mt = out_tile  # outputs per tile side
    alpha = mt + 2  # input tile side
    ops = alpha * alpha  # transformed operands: one GEMM each
    wide = alpha > 4  # F(4x4): two more rows and columns in the transforms
    th, tw = -(-oh // mt), -(-ow // mt)
    sub, stack, per_row, tpanels = panel_layout(th, tw, lanes)
    panels = bn * tpanels * per_row
    groups = -(-o // mr)
    block = winograd_block(panels, vectors, ci, groups * mr, lanes, ops)
    nblocks = -(-panels // block)
    # plane extent: every tile's window inside, the stacked rows past the last tile row too;
    # a plane row is filled in whole vectors, the last one spilling into the next row (filled
    # after it) or, past the last row, into ``lanes`` floats of slack
    rows, cols = mt * tpanels * stack + 2, per_row * sub + 1
    row_vectors = -(-cols // lanes)
    # the planes hold a ring of ``ring`` plane rows (global row G = sample * rows + row at
    # G % ring), filled block by block with the rows the block's panels read first
    # (``plane_ring``): a whole image's planes were written to memory and read back (2.9 MB
    # for 32 channels at 149x149), a ring of a block's rows stays in L2
    ring = plane_ring(bn, th, tw, lanes, mt, block)
    plane = ring * cols + lanes
    padded_row = mt * row_vectors * lanes  # a zero-padded input row: every column read
    concat = list(range(lanes))
    hb = int(has_bias)
    L = lanes
    zip_idx = _zip(mt, L)
    seg = mt * L  # the outputs of one row of a panel's tiles
    # without a residual the parameter is a 1-float placeholder (the last constant)
    res_shape = (bn, o, oh, ow) if residual else (1,)
    res_size = bn * o * oh * ow if residual else 1
    loop = T.parallel if parallel else T.serial
    # on several threads, enough blocks run one a thread, each filling its own planes (a
    # parallel loop per stage and block synchronized the threads four times a block)
    by_block = parallel and nblocks >= BLOCKS_PER_THREAD_MIN
    stage_loop = T.serial if by_block else loop
    last_u = ops * groups * mr * ci - 1
    # the transformed weights, prefetched a channel group ahead when big (see _prefetch)
    prefetch = wants_prefetch(4 * ops * groups * mr * ci, parallel)
    # F(2x2)'s 1 KiB tiles stay "global" (a stack array: TVM keeps those up to 1 KiB there);
    # F(4x4)'s are larger, and "global" would allocate them on every iteration
    scratch = "global" if mt == 2 else "local"
    # an activation computed in registers at any vector width (ReLU, ReLU6, none): the
    # stacked rows' residual epilogue runs on an ``ow``-wide vector instead of scalars (a
    # heavy one only where the rows fill the segment, ``mt * sub == ow``, as before)
    light = register_activation(activation) == activation

    def c(value: float):
        return T.broadcast(T.float32(value), L)

    def vec(first):
        return T.ramp(first, 1, L)

    copy_row = row_copy_macro(wd, 1, L)

    def ring_row(nb, row):
        """Where plane row ``row`` of sample ``nb`` sits in the ring (in floats)."""
        return (nb * rows + row) % ring * cols

    def tile_value(planes, nb, c_in, ty, tx0, k, j):
        """Row ``k``, column ``j`` of the input tiles of a panel: one vector of ``L`` tiles
        (``stack`` rows of ``sub`` tiles where rows are short)."""
        first = (c_in * mt + j % mt) * plane + j // mt
        if stack == 1:
            return planes[vec(first + ring_row(nb, mt * ty + k) + tx0)]
        return T.Shuffle(
            [planes[T.ramp(first + ring_row(nb, mt * (ty + r) + k), 1, sub)] for r in range(stack)],
            concat,
        )

    def rows_from(blk):
        """The first global plane row the panels of block ``blk`` read."""
        return panel_plane_rows(blk * block, mt, per_row, tpanels, stack)[0]

    def rows_needed(blk):
        """One past the last global plane row the panels of blocks ``0..blk`` read."""
        last = T.min((blk + 1) * block, panels) - 1
        return panel_plane_rows(last, mt, per_row, tpanels, stack)[1]

    @T.macro
    def fill_rows(xf, planes, prow, chan, lo, hi):
        """Global plane rows ``lo..hi - 1`` of input channel ``chan``: each input row is copied
        into a zero-padded row, whose columns f, f + mt, ... are one shuffle of mt contiguous
        vectors per plane vector. Two padded rows take turns, so a row is shuffled an
        iteration after its copy (read right after its unaligned stores, the first loads
        waited on store forwarding)."""
        for r in range(lo, hi + 1):
            if r < hi:  # row r into padded row r % 2
                at: T.let = r % 2 * padded_row + left
                in_row: T.let = r % rows - top
                if in_row >= 0 and in_row < h:
                    copy_row(prow, at, xf, ((r // rows * ci + chan) * h + in_row) * wd)
                else:
                    for e in T.vectorized(wd):
                        prow[at + e] = T.float32(0)
            if r > lo:  # row r - 1 into the planes
                src: T.let = (r - 1) % 2 * padded_row
                dst: T.let = (r - 1) % ring * cols
                for f in T.unroll(mt):
                    for q in range(row_vectors):
                        planes[vec((chan * mt + f) * plane + dst + q * L)] = T.Shuffle(
                            [prow[T.ramp(src + q * L * mt, 1, L * mt)]],
                            [f + mt * i for i in range(L)],
                        )

    @T.macro
    def transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, e):
        """Row ``e`` of ``s = B^T d`` (every column of the tiles, in registers), then the
        operands ``alpha e + u`` of ``V = s B``: no 36-vector tile or ``s`` kept in memory
        (with both, LLVM spilled, and this stage took a quarter of the kernel)."""
        for j in T.unroll(alpha):
            srow[vec(j * L)] = _input_row(
                mt, e, [tile_value(planes, nb, c_in, ty, tx0, k, j) for k in range(alpha)], c
            )
        s_e = T.meta_var([srow[vec(k * L)] for k in range(alpha)])
        v[vec((alpha * e) * stride + base)] = _input_row(mt, 0, s_e, c)
        v[vec((alpha * e + 1) * stride + base)] = _input_row(mt, 1, s_e, c)
        v[vec((alpha * e + 2) * stride + base)] = _input_row(mt, 2, s_e, c)
        v[vec((alpha * e + 3) * stride + base)] = _input_row(mt, 3, s_e, c)
        if wide:
            v[vec((alpha * e + 4) * stride + base)] = _input_row(mt, 4, s_e, c)
            v[vec((alpha * e + 5) * stride + base)] = _input_row(mt, 5, s_e, c)

    @T.macro
    def block_stages(xf, yf, rf, u, bias, planes, v, m, prow, blk, lo):
        """Block ``blk`` of panels, stages 0-3: its plane rows from global row ``lo`` on
        (``prow``: a zero-padded row pair, or a placeholder where each channel takes its
        own), the input transform, the GEMMs and the output transform."""
        # 0. the plane rows this block reads first: the zero-padded input split by column
        # modulo the tile side
        hi: T.let = rows_needed(blk)
        for chan in stage_loop(ci):
            if parallel and not by_block:
                prow_c = T.alloc_buffer((2 * padded_row,), "float32", scope="global")
                for e in range(2 * padded_row // L):
                    prow_c[vec(e * L)] = T.broadcast(T.float32(0), L)
                fill_rows(xf, planes, prow_c, chan, lo, hi)
            else:
                fill_rows(xf, planes, prow, chan, lo, hi)
        # 1. input transform, one panel of `lanes` tiles and one channel at a time: F(4x4)
        # a row of s at a time (``transform_row``); F(2x2)'s 16-vector tile fits in
        # registers, and read again per row its stacked rows' shuffles cost 2-8%
        for gc in stage_loop(block * ci):
            g: T.let = blk * block + gc // ci
            c_in: T.let = gc % ci
            base: T.let = gc * L  # the panel in the block, channel c_in
            stride: T.let = block * ci * L
            if g < panels:
                nb: T.let = g // (tpanels * per_row)
                ty: T.let = g // per_row % tpanels * stack
                tx0: T.let = g % per_row * L
                if wide:  # F(4x4): a row of s at a time, from the planes
                    srow = T.alloc_buffer((alpha * L,), "float32", scope="local")
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 0)
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 1)
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 2)
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 3)
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 4)
                    transform_row(planes, v, srow, nb, c_in, ty, tx0, base, stride, 5)
                else:  # F(2x2): the 16-vector tile, s, then V
                    d = T.alloc_buffer((ops * L,), "float32", scope=scratch)
                    s = T.alloc_buffer((ops * L,), "float32", scope=scratch)
                    for i in T.unroll(alpha):
                        for j in T.unroll(alpha):
                            d[vec((i * alpha + j) * L)] = tile_value(
                                planes, nb, c_in, ty, tx0, i, j
                            )
                    for j in T.unroll(alpha):  # rows: s = BT d, column j
                        col = T.meta_var([d[vec((k * alpha + j) * L)] for k in range(alpha)])
                        s[vec(j * L)] = _input_row(mt, 0, col, c)
                        s[vec((alpha + j) * L)] = _input_row(mt, 1, col, c)
                        s[vec((2 * alpha + j) * L)] = _input_row(mt, 2, col, c)
                        s[vec((3 * alpha + j) * L)] = _input_row(mt, 3, col, c)
                    for e in T.unroll(alpha):  # columns: V = s BT^T, operand alpha e + u
                        row_e = T.meta_var([s[vec((e * alpha + k) * L)] for k in range(alpha)])
                        v[vec((alpha * e) * stride + base)] = _input_row(mt, 0, row_e, c)
                        v[vec((alpha * e + 1) * stride + base)] = _input_row(mt, 1, row_e, c)
                        v[vec((alpha * e + 2) * stride + base)] = _input_row(mt, 2, row_e, c)
                        v[vec((alpha * e + 3) * stride + base)] = _input_row(mt, 3, row_e, c)
            else:  # past the last panel: zero operands
                for e in T.unroll(ops):
                    v[vec(e * stride + base)] = T.broadcast(T.float32(0), L)
        # 2. one GEMM per operand: mr output channels x `vectors` panels per register tile
        for task in stage_loop(ops * (block // vectors) * groups):
            p: T.let = task // ((block // vectors) * groups)
            go: T.let = task // groups % (block // vectors)
            io: T.let = task % groups
            acc = T.alloc_buffer((mr * vectors * L,), "float32", scope="global")
            for a in T.unroll(mr * vectors):
                acc[vec(a * L)] = T.broadcast(T.float32(0), L)
            for ch in range(ci):
                if prefetch:  # the next channel group's transformed weights
                    T.evaluate(
                        prefetch_l2(u[T.min(((p * groups + io + 1) * ci + ch) * mr, last_u)])
                    )
                for r in T.unroll(mr):
                    ww: T.let = T.broadcast(u[((p * groups + io) * ci + ch) * mr + r], L)
                    for w in T.unroll(vectors):
                        acc[vec((r * vectors + w) * L)] = (
                            acc[vec((r * vectors + w) * L)]
                            + ww * v[vec(((p * block + go * vectors + w) * ci + ch) * L)]
                        )
            for r in T.unroll(mr):
                for w in T.unroll(vectors):
                    m[vec(((p * groups * mr + io * mr + r) * block + go * vectors + w) * L)] = acc[
                        vec((r * vectors + w) * L)
                    ]
        # 3. output transform, bias, activation; the tiles' rows zipped into output rows
        for kg in stage_loop(o * block):
            k: T.let = kg // block
            g: T.let = blk * block + kg % block
            if g < panels:  # the last block's tail
                nb: T.let = g // (tpanels * per_row)
                ty: T.let = g // per_row % tpanels * stack
                col0: T.let = g % per_row * seg
                t = T.alloc_buffer((mt * alpha * L,), "float32", scope=scratch)
                row = T.alloc_buffer((seg,), "float32", scope=scratch)
                mk: T.let = (k * block + kg % block) * L
                mstride: T.let = groups * mr * block * L
                for e in T.unroll(alpha):  # t = AT M, column e
                    m_e = T.meta_var([m[vec((i * alpha + e) * mstride + mk)] for i in range(alpha)])
                    t[vec(e * L)] = _output_row(mt, 0, m_e, c)
                    t[vec((alpha + e) * L)] = _output_row(mt, 1, m_e, c)
                    if wide:
                        t[vec((2 * alpha + e) * L)] = _output_row(mt, 2, m_e, c)
                        t[vec((3 * alpha + e) * L)] = _output_row(mt, 3, m_e, c)
                bv: T.let = T.broadcast(bias[k * hb], seg)
                for a in T.unroll(mt):  # output row a of every tile: Y = t AT^T
                    t_a = T.meta_var([t[vec((a * alpha + e) * L)] for e in range(alpha)])
                    zipped: T.let = (
                        T.Shuffle([_output_row(mt, b, t_a, c) for b in range(mt)], zip_idx) + bv
                    )
                    if stack == 1:
                        out_r: T.let = mt * ty + a
                        if out_r < oh:
                            out: T.let = ((nb * o + k) * oh + out_r) * ow + col0
                            if col0 + seg <= ow:
                                if residual:
                                    yf[T.ramp(out, 1, seg)] = _epilogue(
                                        zipped + rf[T.ramp(out, 1, seg)], activation, seg
                                    )
                                else:
                                    yf[T.ramp(out, 1, seg)] = _epilogue(zipped, activation, seg)
                            else:
                                row[T.ramp(0, 1, seg)] = zipped
                                for e in range(ow - col0):
                                    if residual:
                                        yf[out + e] = _epilogue(row[e] + rf[out + e], activation)
                                    else:
                                        yf[out + e] = _epilogue(row[e], activation)
                    else:  # `stack` output row segments of mt * sub, one per tile row
                        if residual:
                            row[T.ramp(0, 1, seg)] = zipped
                        else:
                            row[T.ramp(0, 1, seg)] = _epilogue(zipped, activation, seg)
                        for r in T.unroll(stack):
                            stacked_r: T.let = mt * (ty + r) + a
                            if stacked_r < oh:  # its first ow outputs, one vector
                                at: T.let = ((nb * o + k) * oh + stacked_r) * ow
                                if not residual:
                                    yf[T.ramp(at, 1, ow)] = row[T.ramp(mt * sub * r, 1, ow)]
                                elif light or mt * sub == ow:
                                    yf[T.ramp(at, 1, ow)] = _epilogue(
                                        row[T.ramp(mt * sub * r, 1, ow)] + rf[T.ramp(at, 1, ow)],
                                        activation,
                                        ow,
                                    )
                                else:
                                    for e in range(ow):
                                        yf[at + e] = _epilogue(
                                            row[mt * sub * r + e] + rf[at + e], activation
                                        )

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        u: T.Buffer((ops * groups * ci * mr,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        res: T.Buffer(res_shape, "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((bn * ci * h * wd,), "float32", data=x.data)
        yf = T.decl_buffer((bn * o * oh * ow,), "float32", data=y.data)
        rf = T.decl_buffer((res_size,), "float32", data=res.data)
        if by_block:  # each thread a whole block, with its own planes, V and M
            for blk in T.parallel(nblocks):
                planes = T.alloc_buffer((ci * mt * plane,), "float32", scope="global")
                v = T.alloc_buffer((ops * block * ci * L,), "float32", scope="global")
                m = T.alloc_buffer((ops * groups * mr * block * L,), "float32", scope="global")
                prow = T.alloc_buffer((2 * padded_row,), "float32", scope="global")
                for e in range(2 * padded_row // L):
                    prow[vec(e * L)] = T.broadcast(T.float32(0), L)
                block_stages(xf, yf, rf, u, bias, planes, v, m, prow, blk, rows_from(blk))
        else:
            planes = T.alloc_buffer((ci * mt * plane,), "float32", scope="global")
            v = T.alloc_buffer((ops * block * ci * L,), "float32", scope="global")
            m = T.alloc_buffer((ops * groups * mr * block * L,), "float32", scope="global")
            # the padded rows' pad columns stay zero: each copy writes the input's columns only
            prow = T.alloc_buffer((2 * padded_row if not parallel else 1,), "float32")
            if not parallel:
                for e in range(2 * padded_row // L):
                    prow[vec(e * L)] = T.broadcast(T.float32(0), L)
            # stages 0-3 block by block of panels, so the block's plane rows, transformed
            # tiles (V) and GEMM outputs (M) stay in L2 (``winograd_block``, ``plane_ring``);
            # each block fills the ring from the rows the blocks before it filled
            for blk in range(nblocks):
                lo: T.let = T.if_then_else(blk == 0, 0, rows_needed(blk - 1))
                block_stages(xf, yf, rf, u, bias, planes, v, m, prow, blk, lo)

    return _finish(kernel).with_attr(SPEC_ATTR, json.dumps(spec))


# the fewest blocks a parallel kernel runs one per thread (fewer: each stage in parallel)
BLOCKS_PER_THREAD_MIN = 8
# V and M of one block of panels: at most this many bytes (half the smallest L2 of the CPUs
# measured), so stages 1-3 pass them through L2 instead of L3 or memory
WINOGRAD_BLOCK_BYTES = 512 << 10


def plane_ring(batch: int, th: int, tw: int, lanes: int, mt: int, block: int) -> int:
    """Plane rows the kernel keeps (a ring): the most that one block of ``block`` panels
    reads, from its first panel's first row to its last panel's last (global rows: sample *
    rows + row), plus one, so that a row's last vector spilling into the next ring row never
    lands on a row the block still reads. At most every row of the batch (no wrap)."""
    _, stack, per_row, tpanels = panel_layout(th, tw, lanes)
    panels = batch * tpanels * per_row

    def rows_of(g: int) -> tuple[int, int]:
        return panel_plane_rows(g, mt, per_row, tpanels, stack)

    window = max(
        rows_of(min(b + block, panels) - 1)[1] - rows_of(b)[0] for b in range(0, panels, block)
    )
    return min(window + 1, batch * (mt * tpanels * stack + 2))


def panel_plane_rows(g, mt: int, per_row: int, tpanels: int, stack: int) -> tuple:
    """The global plane rows panel ``g`` reads (an int or a TIR expression): its first, and one
    past its last. A sample has ``mt * tpanels * stack + 2`` rows; the panel's ``stack`` tile
    rows start at ``mt * ty`` and the last reads ``mt + 2`` rows."""
    rows = mt * tpanels * stack + 2
    first = g // (tpanels * per_row) * rows + mt * (g // per_row % tpanels * stack)
    return first, first + mt * (stack - 1) + mt + 2


def winograd_block(
    panels: int, vectors: int, ci: int, co_padded: int, lanes: int, ops: int = 16
) -> int:
    """Panels per block (a multiple of ``vectors``): as many as keep the block's transformed
    input (``16 x ci`` vectors a panel) and GEMM output (``16 x co``) within
    ``WINOGRAD_BLOCK_BYTES``. Whole-image stages wrote and re-read tens of MB on big images
    (Inception-v3's 32->64 at 147x147: 33 MB, 9.2 ms warm against 4.4 blocked).

    Every block reads all of the transformed weight U: one that does not fit in L2 beside a
    block (``WINOGRAD_WEIGHTS_IN_L2``) comes from L3 again per block, so blocks are only used
    where that costs less than writing and reading V and M whole (512 channels at 14x14,
    16 MB of U: 3832 us in 2 blocks against 3693 in one)."""
    per_panel = ops * lanes * 4 * (ci + co_padded)
    whole = -(-panels // vectors) * vectors
    fit = max(1, WINOGRAD_BLOCK_BYTES // per_panel // vectors) * vectors
    if fit >= whole:
        return whole
    weight_bytes = ops * ci * co_padded * 4
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
    threads). 4 x 4 on AVX2 (16 registers), as the tap-plane conv measured best there. Fewer
    than 4 panels (F(4x4) at 14x14, batch 1: one) take 16 channels x 1 panel, where 8 x 2
    computes a panel of zeros (256 channels: 756 against 993 us)."""
    if wide_isa and panels < 4:
        return (16, 1)
    if wide_isa and panels <= SMALL_GEMM_PANELS:
        return (8, 2)
    return (4, 4) if lanes >= 8 else (3, 3)


SMALL_GEMM_PANELS = 32


def winograd_conv2d(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    lanes: int | None = None, tile: tuple[int, int] | None = None, parallel: bool = True,
    out_tile: int | None = None,
) -> KernelCall:  # fmt: skip
    """``y = act(conv2d(x, weight) + bias)`` for a 3x3 stride-1 conv by F(2x2, 3x3) or
    F(4x4, 3x3) (``out_tile``; default ``default_out_tile``).

    ``lanes`` (tiles per panel): 16 with AVX-512, else 8; rows of at most ``lanes / 2`` tiles
    are stacked into a panel (``panel_layout``). ``tile``: ``(mr, vectors)`` of the GEMMs'
    register tile, or ``(mr, vectors, out_tile)`` (the tuner's knob).
    Consts: ``(transformed weight, bias, residual placeholder)``; the last is replaced by a
    tensor of the output's shape when ``passes.fuse_residual`` fuses an add."""
    from ..target import num_cores, vector_lanes

    if tile is not None and len(tile) == 3:
        out_tile = out_tile or tile[2]
        tile = (tile[0], tile[1])

    weight, dims = checked_groups1_conv("winograd_conv2d", x_shape, weight_oihw, conv, activation)
    if not winograd_applies(dims.x, weight.shape, conv):
        raise ValueError(
            f"winograd_conv2d needs a 3x3 stride-1 conv with output width >= {MIN_OUT_W}, "
            f"got weight {weight.shape}, strides {conv.strides}, out {dims.out_hw}"
        )
    (bn, ci, _, _), o = dims.x, weight.shape[0]
    oh, ow = dims.out_hw
    if lanes is None:
        lanes = 16 if vector_lanes(target) >= 16 else 8
    wide_isa = vector_lanes(target) >= 16
    mt = out_tile or default_out_tile(bn, oh, ow, lanes, wide_isa)
    if mt not in OUT_TILES:
        raise ValueError(f"winograd_conv2d: out_tile must be one of {OUT_TILES}, got {mt}")
    panels = winograd_panels(bn, oh, ow, lanes, mt)
    mr, vectors = tile or default_tile(lanes, panels, wide_isa)
    bias_arr, has_bias = bias_const(bias, o)
    func = winograd_kernel(
        dims.x, o, dims.pads, activation, has_bias, bias_arr.size, lanes, mr, vectors,
        parallel and num_cores(target) > 1, out_tile=mt,
    )  # fmt: skip
    ops = (mt + 2) ** 2
    info = {
        "kind": "dense_conv2d",
        "layout": "winograd",
        "macs": o * ci * 9 * bn * oh * ow,
        "macs_padded": ops * -(-o // mr) * mr * ci * -(-panels // vectors) * vectors * lanes,
        "activation": activation,
        "tile": (mr, vectors, lanes),
        "out_tile": mt,
    }
    return KernelCall(
        func=func,
        name="dense_conv2d_winograd_" + "x".join(map(str, x_shape)),
        consts=(transform_weight(weight, mr, mt), bias_arr, np.zeros(1, np.float32)),
        out_shape=(bn, o, oh, ow),
        info=info,
    )


def winograd_panels(batch: int, oh: int, ow: int, lanes: int, out_tile: int) -> int:
    """Tile panels of ``lanes`` tiles the kernel computes for the whole batch."""
    th, tw = -(-oh // out_tile), -(-ow // out_tile)
    _, _, per_row, tpanels = panel_layout(th, tw, lanes)
    return batch * tpanels * per_row


def default_out_tile(batch: int, oh: int, ow: int, lanes: int, wide_isa: bool) -> int:
    """F(4x4, 3x3), 2.25 multiplies an output against F(2x2, 3x3)'s 4, where its panels fill
    the register tile's at least twice over, else F(2x2). Its transformed weight is 2.25x
    F(2x2)'s and each of its floats serves one multiply per tile of the panels: at 14x14,
    batch 1 (one panel, a 16 x 1 register tile) F(4x4) won alone (256 channels: 756 against
    950 us, 802 against 950 with the weights in DRAM) and lost in ResNet-50 (1292-1314 against
    1178-1234 us a layer), whose weights come from memory another core is loading too."""
    mt = 4
    panels = winograd_panels(batch, oh, ow, lanes, mt)
    _, vectors = default_tile(lanes, panels, wide_isa)
    return mt if panels >= 2 * max(vectors, 2) else 2
