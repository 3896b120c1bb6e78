"""The dense groups=1 conv as an implicit GEMM: output pixels broadcast, channels in the lanes.

    acc[n, y, z0 + i, co] = sum_{kh, kw, c} x_nhwc[n, y*s + kh*d, (z0 + i)*s + kw*d, c] *
                                             W[co, c, kh, kw]

``mr`` consecutive output pixels of one row are broadcast from the zero padded NHWC input
and ``nb`` output channels are the vector lanes, the weight packed ``[Co/nb, KH*KW*Ci, nb]``
(reduction order kh, kw, ci: ``pack_conv_weight``). No im2col is built: a pixel's address is
affine in the loops. The last pixel tile of a row starts at ``OW - mr`` and overlaps the one
before (its pixels are computed twice, with the same result), so the epilogue stores each
channel's ``mr`` pixels as one vector, gathered across the accumulators.

Why TVMScript, replacing a TE schedule: that one padded the row to a multiple of ``mr``; its
epilogue then needed a bounds test, ran scalar and read the tile back from memory, and the
weights of each channel panel were first touched by a tile that did little work with them, so
in a model (weights in L3 or DRAM) a layer took its warm time plus the time to stream its
weights (ResNet-50's 3x3 convs at 7x7: 2389 against 1837 us). Here the next panel's weights are
prefetched while this panel's tiles compute (``_prefetch``).
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

from ._epilogue import epilogue as _epilogue
from ._epilogue import plus_bias
from ._lanes import run, splat
from ._prefetch import prefetch_l2, spread_offset, wants_prefetch
from ._transpose8 import transpose8
from .dense_conv_x86 import ConvGeometry
from .gemm_x86 import GemmTiling
from .kernel import finish, without_params


def clips_taps(geo: ConvGeometry) -> bool:
    """Whether the kernel skips, per tile, the taps that read only padding: for dilated convs
    whose padding holds a whole tap (DeepLab's rate 2-12 convs at 16x16: a rate-12 tap row is
    outside the image for 12 of 16 output rows). onnxruntime clips its taps so; computing them
    over the zeros cost DeepLab's ASPP 1.7x. Plain 3x3 convs keep static tap loops (their
    padding skips at most one edge row's taps)."""
    top, left, bottom, right = geo.padding
    dh, dw = geo.dilation
    return (dh > 1 and max(top, bottom) >= dh) or (dw > 1 and max(left, right) >= dw)


def flat_pixels(geo: ConvGeometry) -> bool:
    """Whether a tile may take any ``mr`` consecutive output pixels of the image, across rows:
    for a ``kh x 1`` conv at stride 1 without column padding an output row is as wide as the
    input row, so consecutive output pixels read consecutive input pixels for every tap.
    Inception-v3's 7x1 convs at 17x17: row tiles of 6 or 7 pixels computed 18-21 pixels a
    row of 17."""
    _, _, _, kw = geo.w_shape
    _, left, _, right = geo.padding
    return kw == 1 and geo.strides == (1, 1) and left == right == 0 and not clips_taps(geo)


# the most bytes of weights a reduction chunk keeps in L1 (half of a 48 KiB L1D), and the
# fewest a panel must have before chunking pays for the partial sums' loads and stores
CHUNK_WEIGHT_BYTES = 24 << 10
CHUNK_MIN_PANEL_BYTES = 64 << 10


def reduction_chunk(ci_g: int, nb: int, reduce: int, tiles: int) -> int:
    """Input channels per reduction chunk (0: no chunks): the most that divide ``ci_g`` and
    keep ``kc x nb`` weights within ``CHUNK_WEIGHT_BYTES``, where a panel's weights
    (``reduce x nb``) are past ``CHUNK_MIN_PANEL_BYTES`` and several tiles take them.

    Why: unchunked, every pixel tile streams its panel's whole weights from L2 (192 -> 192
    7x1 at 17x17: 344 KB a tile of 6 pixels, 4 vector loads a step from L2)."""
    if tiles < 2 or 4 * reduce * nb < CHUNK_MIN_PANEL_BYTES:
        return 0
    most = CHUNK_WEIGHT_BYTES // (4 * nb)
    kc = max((d for d in range(1, min(ci_g, most) + 1) if ci_g % d == 0), default=0)
    return kc if kc >= 16 else 0


def _tap_bounds(taps: int, dilation: int, stride: int, before: int, size: int, span: int,
                clip: bool):  # fmt: skip
    """Two functions of a tile's first output row (or column) ``first``: the first tap and one
    past the last tap that read the input (not only padding) for some of the ``span`` outputs
    from ``first``. Output ``o`` reads input ``o * stride + tap * dilation - before``."""
    if not clip:
        return (lambda first: 0), (lambda first: taps)

    def start(first):
        last = first + span - 1  # the tap is inside for the last output from this one on
        return T.max(0, T.floordiv(before - last * stride + dilation - 1, dilation))

    def stop(first):
        return T.max(
            start(first),
            T.min(taps, T.floordiv(size - 1 + before - first * stride, dilation) + 1),
        )

    return start, stop


def implicit_gemm_kernel(
    geo: ConvGeometry, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> tvm.tirx.PrimFunc:
    """The kernel: params ``[x (NCHW), w_packed, bias?, out (NCHW)]``; ``tiling.mr`` pixels x
    ``tiling.nb`` channels per register tile. The pixels are a segment of one output row, or,
    where ``mr`` holds two rows or more, whole rows (``mr // OW`` of them: contiguous in NCHW
    too): a 4-wide output keeps 8 pixels per tile instead of 4."""
    batch, ci, h, w = geo.x_shape
    co, ci_g, kh, kw = geo.w_shape
    groups = geo.groups
    co_g = co // groups
    top, left, bottom, right = geo.padding
    sh, sw = geo.strides
    dh, dw = geo.dilation
    oh, ow = geo.out_hw
    hp, wp = h + top + bottom, w + left + right
    clip = clips_taps(geo)
    flat = flat_pixels(geo) and tiling.mr < oh * ow
    rows = min(tiling.mr // ow, oh) if tiling.mr >= 2 * ow and not flat else 1  # whole rows
    mr, nb = (rows * ow if rows > 1 else min(tiling.mr, oh * ow if flat else ow)), tiling.nb
    reduce = kh * kw * ci_g
    group_panels = -(-co_g // nb)  # a panel never spans two groups
    panels = groups * group_panels
    row_tiles = -(-ow // mr)  # tiles per output row (1 for whole-row tiles)
    tiles = -(-oh // rows) if rows > 1 else oh * row_tiles  # per sample and channel panel
    if flat:
        tiles = -(-(oh * ow) // mr)

    def offset(i):  # pixel i of a tile, in the padded NHWC input, from the tile's first
        if flat:
            return i * ci
        if rows > 1:
            return ((i // ow) * sh * wp + i % ow * sw) * ci
        return i * sw * ci

    # taps that read only zero padding for every pixel of a tile are skipped (``_tap_bounds``)
    rows_from, rows_to = _tap_bounds(kh, dh, sh, top, h, rows if rows > 1 else 1, clip)
    cols_from, cols_to = _tap_bounds(kw, dw, sw, left, w, ow if rows > 1 else mr, clip)

    last_weight = panels * reduce * nb - 1
    prefetch = wants_prefetch(4 * co * reduce, tiling.parallel)
    loop = T.parallel if tiling.parallel else T.serial

    # the NHWC copy transposes 8 channels x 8 pixels in registers where the channels come in
    # eights (one float at a time it took ~1/3 of a 32-channel grouped conv at 112x112)
    blocked = ci % 8 == 0 and w >= 8

    # serial, the reduction in chunks of kc channels of one tap whose kc x nb weights stay in
    # L1 while every pixel tile of the panel takes them (``reduction_chunk``)
    kc = 0 if tiling.parallel or clip else reduction_chunk(ci_g, nb, reduce, tiles)
    cblocks = ci_g // kc if kc else 1
    chunks = kh * kw * cblocks
    chunked = kc > 0

    def origin(tt):
        """Tile ``tt``'s first output pixel (row, column) in the image."""
        if flat:
            return T.min(tt * mr, oh * ow - mr) // ow, T.min(tt * mr, oh * ow - mr) % ow
        if rows > 1:
            return T.min(tt * rows, oh - rows), 0
        return tt // row_tiles, T.min(tt % row_tiles * mr, ow - mr)

    def pixels_of(first):  # mr consecutive output pixels
        return run(first, mr)

    def across(j):  # lane j of the mr accumulators
        return run(j, mr, stride=nb)

    def bcast(value):
        return splat(value, mr)

    @T.macro
    def reduce_step(acc, wf, x_nhwc, panel, n, g, y, z0, rh, rw, rc, step):
        """Reduction step (tap ``rh, rw``, channel ``rc``) of a tile: the next panel's weights
        prefetched, a line every so many of the panel's steps (``step`` of them, see
        ``spread_offset``), then ``mr`` pixels x ``nb`` channels of FMAs."""
        k: T.let = (rh * kw + rw) * ci_g + rc
        if prefetch:
            T.evaluate(
                prefetch_l2(
                    wf[
                        T.min(
                            (panel + 1) * reduce * nb
                            + spread_offset(step, batch * tiles * reduce, reduce * nb),
                            last_weight,
                        )
                    ]
                )
            )
        pixel: T.let = ((n * hp + y * sh + rh * dh) * wp + z0 * sw + rw * dw) * ci + g * ci_g + rc
        for i in T.unroll(mr):
            acc[T.ramp(i * nb, 1, nb)] = (
                acc[T.ramp(i * nb, 1, nb)]
                + T.broadcast(x_nhwc[pixel + offset(i)], nb)
                * wf[T.ramp((panel * reduce + k) * nb, 1, nb)]
            )

    @T.macro
    def store_tile(of, bias, acc, g, c0, n, y, z0):
        """The tile's accumulators, each channel's ``mr`` pixels gathered into one vector, with
        bias and activation, into NCHW from output pixel (``y``, ``z0``)."""
        for j in T.unroll(nb):
            if c0 + j < co_g:
                c: T.let = g * co_g + c0 + j
                at: T.let = ((n * co + c) * oh + y) * ow + z0
                of[pixels_of(at)] = _epilogue(
                    plus_bias(acc[across(j)], bcast(bias[c]), has_bias), activation, mr
                )

    @T.prim_func
    def kernel(
        x: T.Buffer((batch, ci, h, w), "float32"),
        w_packed: T.Buffer((panels, reduce, nb), "float32"),
        bias: T.Buffer((co if has_bias else 1,), "float32"),
        out: T.Buffer((batch, co, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((batch * ci * h * w,), "float32", data=x.data)
        x_rows = T.decl_buffer((batch * ci, h * w), "float32", data=x.data)
        wf = T.decl_buffer((panels * reduce * nb,), "float32", data=w_packed.data)
        of = T.decl_buffer((batch * co * oh * ow,), "float32", data=out.data)
        # zero padded NHWC: no read in the reduction needs a bounds test, and each of the mr
        # pixels' channels are contiguous (NCHW broadcasts touched a new line per k step:
        # 17% slower)
        x_nhwc = T.alloc_buffer((batch * hp * wp * ci,), "float32")
        for nr in loop(batch * hp):
            n_r: T.let = nr // hp
            r: T.let = nr % hp
            if blocked:  # 8 x 8 blocks transposed in registers, the rest one float at a time
                if r < top or r >= top + h:
                    for e in T.vectorized(wp * ci):
                        x_nhwc[nr * wp * ci + e] = T.float32(0)
                else:
                    for e in range(left * ci):  # a 0-extent vectorized loop does not build
                        x_nhwc[nr * wp * ci + e] = T.float32(0)
                    for e in range((wp - left - w) * ci):
                        x_nhwc[(nr * wp + left + w) * ci + e] = T.float32(0)
                    for vb in range(w // 8):
                        for cb in range(ci // 8):
                            transpose8(
                                x_rows, n_r * ci + cb * 8, (r - top) * w + vb * 8, x_nhwc,
                                (nr * wp + left + vb * 8) * ci + cb * 8, ci,
                            )  # fmt: skip
                    for v in range(w // 8 * 8, w):
                        for c in range(ci):
                            x_nhwc[(nr * wp + left + v) * ci + c] = xf[
                                ((n_r * ci + c) * h + r - top) * w + v
                            ]
            else:
                for v in range(wp):
                    if r < top or r >= top + h or v < left or v >= left + w:
                        for c in T.vectorized(ci):
                            x_nhwc[(nr * wp + v) * ci + c] = T.float32(0)
                    else:
                        for c in range(ci):
                            x_nhwc[(nr * wp + v) * ci + c] = xf[
                                ((n_r * ci + c) * h + r - top) * w + v - left
                            ]
        if chunked:
            for task in range(panels * batch):
                panel: T.let = task // batch
                g: T.let = panel // group_panels
                c0: T.let = panel % group_panels * nb
                n: T.let = task % batch
                partial = T.alloc_buffer((tiles * mr * nb,), "float32")
                for chunk in range(chunks):
                    rh: T.let = chunk // cblocks // kw
                    rw: T.let = chunk // cblocks % kw
                    rc0: T.let = chunk % cblocks * kc
                    for tt in range(tiles):
                        y: T.let = origin(tt)[0]
                        z0: T.let = origin(tt)[1]
                        acc = T.alloc_buffer((mr * nb,), "float32", scope="local")
                        if chunk == 0:
                            for i in T.unroll(mr):
                                acc[T.ramp(i * nb, 1, nb)] = T.broadcast(T.float32(0), nb)
                        else:
                            for i in T.unroll(mr):
                                acc[T.ramp(i * nb, 1, nb)] = partial[
                                    T.ramp((tt * mr + i) * nb, 1, nb)
                                ]
                        for kk in range(kc):
                            reduce_step(
                                acc, wf, x_nhwc, panel, n, g, y, z0, rh, rw, rc0 + kk,
                                ((n * chunks + chunk) * tiles + tt) * kc + kk,
                            )  # fmt: skip
                        if chunk < chunks - 1:
                            for i in T.unroll(mr):
                                partial[T.ramp((tt * mr + i) * nb, 1, nb)] = acc[
                                    T.ramp(i * nb, 1, nb)
                                ]
                        else:
                            store_tile(of, bias, acc, g, c0, n, y, z0)
        else:
            for t in loop(panels * batch * tiles):
                panel: T.let = t // (batch * tiles)
                g: T.let = panel // group_panels
                c0: T.let = panel % group_panels * nb  # the panel's first channel in its group
                n: T.let = t // tiles % batch
                # the tile's first output pixel: row y, column z0 (flat: anywhere in the image)
                y: T.let = origin(t % tiles)[0]
                z0: T.let = origin(t % tiles)[1]
                acc = T.alloc_buffer((mr * nb,), "float32", scope="local")
                for i in T.unroll(mr):
                    acc[T.ramp(i * nb, 1, nb)] = T.broadcast(T.float32(0), nb)
                for rh in range(rows_from(y), rows_to(y)):
                    for rw in range(cols_from(z0), cols_to(z0)):
                        for rc in range(ci_g):
                            reduce_step(
                                acc, wf, x_nhwc, panel, n, g, y, z0, rh, rw, rc,
                                t % (batch * tiles) * reduce + (rh * kw + rw) * ci_g + rc,
                            )  # fmt: skip
                store_tile(of, bias, acc, g, c0, n, y, z0)

    return finish(without_params(kernel, set() if has_bias else {"bias"}))
