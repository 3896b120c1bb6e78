"""The dense 1x1 convolution as an NCHW GEMM: pixels are the vector lanes, weights broadcast.

Why not the implicit GEMM of ``dense_conv_x86``: that one transposes the input to NHWC and
writes its ``[pixels x channels]`` tiles back into NCHW, one short row per channel. For a 1x1
conv, whose MACs per input value are only ``Co``, those two relayouts cost up to a third of
the layer (ResNet-50's 56x56 1x1 convs ran at 0.66-0.72x onnxruntime on AVX-512). Here

    acc[n, co, p] = sum_ci W[co, ci] * x[n, ci, p]

is computed with ``mr`` output channels broadcast from the packed weight ``[Co/mr, Ci, mr]``
and ``nb`` pixels as vectors, so the output tile lands in NCHW rows as it is. At stride 1 the
micro-kernel reads its ``nb`` pixels of each input channel straight from the NCHW input; a
strided conv first copies the pixels it uses, row by row, into an input of the output's size
(a stride-2 row as the even lanes of contiguous loads: RegNetX's 32->32 at 112x112 took 71
instead of 101 us packed lane by lane into panels). Packing at stride 1 too cost up to half
the layer where Co is small (144->24 at 56x56: 268 against 171 us, 32->16 at 112x112: 211
against 103).

Every panel is whole: the last one starts at ``P - nb`` and overlaps the one before (its
pixels are computed twice, with the same result), so the epilogue (bias, shortcut, activation)
stores whole vectors straight from the accumulators. The TE version of this kernel padded the
last panel instead; its epilogue then needed a bounds test, which kept it scalar and behind a
copy of the tile to memory: 1.3-2.3x slower on MobileNetV2's 28x28-7x7 layers (Sapphire
Rapids). Written in TVMScript for that reason: TE cannot express a store region that overlaps.

Three forms (``order``): ``panel`` (pixel panel outer, every channel tile reuses the panel from
L1/L2), ``cotile`` (channel tile outer: its weights stay in L1 and the output is written as
``mr`` sequential streams; for expanding convs, 16->96 at 112x112 ran 280 against 330 us), and
``channels`` (``nb`` channels in the lanes, ``mr`` pixels broadcast: for small images, where
16-lane pixel panels compute 64 pixels of a 7x7 = 49).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm
from tvm.script import tirx as T

from ._epilogue import epilogue as _epilogue
from ._epilogue import plus_bias, register_activation
from ._lanes import row_copy_macro, run, splat
from ._prefetch import prefetch_l2, spread_offset, wants_prefetch
from .dense_conv_x86 import ConvGeometry
from .gemm_x86 import GemmTiling, round_up
from .kernel import finish, without_params

ORDERS = ("panel", "cotile", "channels")
# the channel tile outer order: for expanding convs (Co >= 4 Ci) whose input, one sample's,
# fits in about half an L2 (16->96 at 112x112: 280 against 330 us; 144->24 at 56x56 lost)
COTILE_MIN_EXPANSION = 4
COTILE_MAX_INPUT_BYTES = 1 << 20
# the channels form by default where pixel panels compute this many times the pixels (7x7:
# 64 for 49; 960->320 ran 208 against 233 us, 960->160 103 against 121)
CHANNELS_MIN_OVERCOMPUTE = 1.25


def is_pointwise(geo: ConvGeometry) -> bool:
    """A 1x1, unpadded, undilated, ungrouped conv: the layers this kernel takes."""
    _, _, kh, kw = geo.w_shape
    return (
        (kh, kw) == (1, 1) and geo.groups == 1 and not any(geo.padding) and (geo.dilation == (1, 1))
    )


# (mr output channels, nb pixels, relative speed), per vector width. Measured on Sapphire
# Rapids (AVX-512, MobileNetV2's and ResNet's shapes): 12x32 leads from 28x28 down (8-12%
# ahead of 8x32 on ResNet-50's 14x14 and 28x28 layers, 1024->256 at 14x14 736 against 831 us;
# even where it pads 64 channels to 72), 6x64 within 3% there and ahead from 56x56 up
# (``WIDE_PANEL_PIXELS``: 144->24 171 against 194 us, 256->64 699 against 822); 16-pixel
# tiles are 10-20% slower.
_TILES = {
    16: ((8, 32, 1.0), (12, 32, 1.08), (6, 64, 0.97), (12, 16, 0.85)),
    8: ((6, 16, 1.0), (12, 8, 0.9)),
    4: ((6, 8, 1.0), (12, 4, 0.9)),
}
WIDE_PANEL_PIXELS = 56 * 56
# On Zen 4 (``CpuIsa.zmm_split``) 12x16 runs as fast per pixel as 12x32 or faster, so its
# smaller overlap wins: 112->672 at 14x14 287 against 311 us, 128->256 at 14x14 121 against
# 132, 256->128 at 28x28 455 against 480, 16->96 at 112x112 + SiLU 705 against 731 (6x64)
ZMM_SPLIT_SPEED = {(12, 16): 1.1}
# pixels per tile of the channels form, the first of the least overcompute wins
CHANNEL_FORM_PIXELS = (7, 8, 6)
# ... and 64-channel vector panels x 6 pixels (4 weight loads + 6 broadcasts per 24 FMAs,
# against 2 + 12 per 24 in a 12x32 pixel tile) for wide convs on 10x10-14x14 images: ResNet-50's
# 1024->256 at 14x14 673 against 736 us, 256->1024 719 against 767, 384->64 62 against 73; on
# convs under 256 input channels or with channels that pad past 64 it lost (96->576 158
# against 146, 576->96 181 against 153)
WIDE_CHANNELS_PIXELS = (100, 196)
WIDE_CHANNELS_MIN_INPUT = 256
# ... and on other sizes where pixel panels overcompute 5% or more and one sample's input
# stays within about half an L2: Inception-v3's 17x17 (289 pixels, 320 computed by 32-pixel
# panels): 768->192 534 against 598 us, 768->128 371 against 434, Intel Xeon AVX-512. Where
# the input is larger the channels form lost (512->128 at 28x28, 1.6 MB: 828 against 639)
WIDE_CHANNELS_MIN_OVERCOMPUTE = 1.05
WIDE_CHANNELS_MAX_INPUT_BYTES = 1 << 20
PREFETCH_MIN_INPUT_BYTES = 512 << 10
# ... and up to this size it is first prefetched whole into L2, in memory order, before the
# first panel (``_kernel``'s ``stage_input``)
STAGE_MAX_INPUT_BYTES = 1 << 20
# the channels form's input channels per chunk: a 64-channel panel's 128 x 64 weights (32 KiB)
# stay in L1 while every pixel tile takes them, the partial sums waiting in a scratch. Intel
# Xeon (AVX-512), 1 thread, alone: 1024->256 at 14x14 691 -> 665 us, 256->1024 at 14x14 with
# the shortcut 752 -> 720, 512->2048 at 7x7 with the shortcut 793 -> 707 (2048->512 the same)
CHANNEL_CHUNK = 128


def panel_width(nb: int, pixels: int) -> int:
    """The pixels per panel the kernel uses: ``nb``, or the largest power of two that fits
    in a smaller image (every panel must be whole)."""
    return nb if nb <= pixels else 1 << (pixels.bit_length() - 1)


def pixels_computed(pixels: int, nb: int) -> int:
    """Pixels the kernel computes: whole panels of ``panel_width`` (the last one overlaps)."""
    width = panel_width(nb, pixels)
    return round_up(pixels, width)


def pointwise_outputs_computed(spec: dict) -> int:
    """Outputs one sample's kernel computes, overlaps and padded channels included."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in spec["geometry"]))
    mr, nb = spec["tiling"]["mr"], spec["tiling"]["nb"]
    co, pixels = geo.w_shape[0], geo.out_hw[0] * geo.out_hw[1]
    if spec["order"] == "channels":
        return round_up(co, nb) * round_up(pixels, min(mr, pixels))
    return round_up(co, mr) * pixels_computed(pixels, nb)


def choose_pointwise_tiling(
    channels_out: int, pixels: int, lanes: int, num_cores: int = 1, zmm_split: bool = False
) -> GemmTiling:
    """The tile that wastes least on padding channels and overlapping pixels, weighted by its
    speed (on the CPU kind: ``zmm_split``)."""
    tiles = _TILES.get(lanes, _TILES[8])

    def cost(tile: tuple[int, int, float]) -> float:
        mr, nb, speed = tile
        if zmm_split:
            speed = ZMM_SPLIT_SPEED.get((mr, nb), speed)
        if nb >= 4 * lanes and pixels >= WIDE_PANEL_PIXELS:
            speed *= 1.15
        return round_up(channels_out, mr) * pixels_computed(pixels, nb) / speed

    mr, nb, _ = min(tiles, key=cost)
    return GemmTiling(mr=mr, nb=nb, parallel=num_cores > 1)


def choose_pointwise_order(geo: ConvGeometry, nb: int, parallel: bool = False) -> str:
    """The pixel-panel order: ``cotile`` for an expanding conv whose input fits in about half
    an L2, or on several threads for weights of ``PARALLEL_COTILE_MIN_WEIGHT_BYTES`` or more
    (each thread a share of the channel tiles, so of the weights), else ``panel``."""
    ci, co = geo.x_shape[1], geo.w_shape[0]
    if parallel and 4 * co * ci >= PARALLEL_COTILE_MIN_WEIGHT_BYTES:
        return "cotile"
    pixels = geo.out_hw[0] * geo.out_hw[1]
    small = 4 * ci * pixels_computed(pixels, nb) <= COTILE_MAX_INPUT_BYTES
    return "cotile" if small and co >= COTILE_MIN_EXPANSION * ci else "panel"


def choose_pointwise(
    geo: ConvGeometry, lanes: int, num_cores: int = 1, zmm_split: bool = False
) -> tuple[GemmTiling, str]:
    """The default tile and form: pixel panels, or on 16-lane CPUs the channels form where
    panels would compute ``CHANNELS_MIN_OVERCOMPUTE`` times the pixels (small images) or for
    wide convs on 10x10-14x14 images (``WIDE_CHANNELS_PIXELS``) and on inputs of at most
    ``WIDE_CHANNELS_MAX_INPUT_BYTES`` that panels overcompute (17x17); pixel panels with the
    channel tiles outer on several threads where the weights are big
    (``PARALLEL_COTILE_MIN_WEIGHT_BYTES``)."""
    co, pixels = geo.w_shape[0], geo.out_hw[0] * geo.out_hw[1]
    low, high = WIDE_CHANNELS_PIXELS
    wide = (
        co % (4 * lanes) == 0
        and geo.x_shape[1] >= WIDE_CHANNELS_MIN_INPUT
        and geo.strides == (1, 1)  # a stride-2 downsample lost (512->1024: 1945 against 1620)
    )
    if lanes >= 16 and low <= pixels <= high and wide:
        return GemmTiling(mr=6, nb=4 * lanes, parallel=num_cores > 1), "channels"
    tiling = choose_pointwise_tiling(co, pixels, lanes, num_cores, zmm_split)
    overcompute = pixels_computed(pixels, tiling.nb) / pixels
    if lanes >= 16 and overcompute >= CHANNELS_MIN_OVERCOMPUTE:
        mr = min(CHANNEL_FORM_PIXELS, key=lambda m: round_up(pixels, min(m, pixels)))
        return GemmTiling(mr=mr, nb=2 * lanes, parallel=num_cores > 1), "channels"
    small_input = 4 * geo.x_shape[1] * pixels <= WIDE_CHANNELS_MAX_INPUT_BYTES
    if lanes >= 16 and wide and small_input and overcompute >= WIDE_CHANNELS_MIN_OVERCOMPUTE:
        return GemmTiling(mr=6, nb=4 * lanes, parallel=num_cores > 1), "channels"
    return tiling, choose_pointwise_order(geo, tiling.nb, num_cores > 1)


# on several threads, pixel panels outer split the pixels among the threads, and every thread
# streams all the weights; with the channel tiles outer each thread reads its share. For 1 MB
# of weights or more (from memory in a model) the channel tiles go outer: Inception-v3's 8x8
# 1x1 convs on two threads 330-724 -> 225-488 us, the model 0.825 -> 0.862x onnxruntime,
# ResNet-50 0% 0.849 -> 0.862x (Intel Xeon AVX-512)
PARALLEL_COTILE_MIN_WEIGHT_BYTES = 1 << 20


def pointwise_weight(weight: np.ndarray, spec: dict) -> np.ndarray:
    """The packed weight the kernel of ``spec`` reads: ``mr``-channel rows to broadcast, or
    (the ``channels`` form) ``nb``-channel vector panels; the same layout either way."""
    tiling = spec["tiling"]
    return pack_pointwise_weight(
        weight, tiling["nb"] if spec["order"] == "channels" else tiling["mr"]
    )


def pack_pointwise_weight(weight: np.ndarray, mr: int) -> np.ndarray:
    """OIHW ``[Co, Ci, 1, 1]`` -> ``[ceil(Co / mr), Ci, mr]``, zero padded: ``mr`` channels
    contiguous per input channel."""
    co, ci = weight.shape[:2]
    padded = np.zeros((round_up(co, mr), ci), dtype=np.float32)
    padded[:co] = weight.reshape(co, ci)
    return np.ascontiguousarray(padded.reshape(-1, mr, ci).transpose(0, 2, 1))


def aligned_panel(geo: ConvGeometry, order: str) -> bool:
    """Whether the pixel-panel form copies each panel to an aligned scratch first: at stride 1
    where an input channel row is not a whole number of cache lines, so the panel's loads
    would mostly straddle two lines. 256->48 at 35x35 (rows of 1225 floats) took 220 us
    where the same conv on 1232-pixel rows took 169 (Intel Xeon, AVX-512, 1 thread)."""
    _, _, h, w = geo.x_shape
    return order == "panel" and geo.strides == (1, 1) and (h * w) % 16 != 0


def _input_offset(geo: ConvGeometry):
    """Output pixel ``p`` -> the offset of its input pixel in one input channel (the stride
    applied), as a TIR expression."""
    _, _, _, w = geo.x_shape
    ow = geo.out_hw[1]
    sh, sw = geo.strides
    if (sh, sw) == (1, 1):
        return lambda p: p
    return lambda p: (p // ow) * sh * w + (p % ow) * sw


def _piece(nb: int) -> int:
    """The vector width of the heavy activation's pass over a tile row of ``nb`` pixels."""
    return next((p for p in (16, 8) if nb % p == 0), nb)


def _row_store_macro(outputs: int, has_bias: bool, residual: bool, in_registers: str | None):
    """Macro ``store_row(of, residual_in, bias, value, c, at, lanes)``: ``lanes`` outputs of
    channel ``c`` from ``at``, bias, shortcut (``residual``) and the activation computed in
    registers applied, as every form of the kernel stores a channel's run of pixels."""

    @T.macro
    def store_row(of, residual_in, bias, value, c, at, lanes):
        if residual:
            rf = T.decl_buffer((outputs,), "float32", data=residual_in.data)
            of[run(at, lanes)] = _epilogue(
                plus_bias(value, splat(bias[c], lanes), has_bias) + rf[run(at, lanes)],
                in_registers,
                lanes,
            )
        else:
            of[run(at, lanes)] = _epilogue(
                plus_bias(value, splat(bias[c], lanes), has_bias), in_registers, lanes
            )

    return store_row


def _kernel(
    geo: ConvGeometry,
    mr: int,
    nb: int,
    has_bias: bool,
    activation: str | None,
    residual: bool,
    order: str,
    parallel: bool,
    strided: bool = True,
    prefetch: bool = False,
    inplace: bool = False,
) -> tvm.tirx.PrimFunc:
    """The TIR of one conv with every param (x, w_packed, bias, residual, out); the caller
    drops the unused ones. ``prefetch``: each k step prefetches the next channel tile's
    weights (one line per 16 floats, a few times over)."""
    batch, ci, h, w = geo.x_shape
    co = geo.w_shape[0]
    oh, ow = geo.out_hw
    pixels = oh * ow
    panels = -(-pixels // nb)
    co_tiles = -(-co // mr)
    cotile = order == "cotile"
    loop = T.parallel if parallel else T.serial
    last_weight = co_tiles * ci * mr - 1

    sh, sw = geo.strides
    decimate = row_copy_macro(ow, sw, 16 if nb % 16 == 0 else 8)
    in_registers = register_activation(activation)
    piece = _piece(nb)
    # an input this big comes from L3 in a model (its producer wrote it just before, past L2),
    # and the first channel tile of each panel waited on its ci scattered rows: the first
    # nb / 16 channel tiles of a panel prefetch one line of each row of the next panel
    # (ResNet-50's 256->64 at 56x56 in the model: 940 -> 815 us, 512->128 at 28x28: 780 -> 680).
    # One thread only, as for the weights (``wants_prefetch``).
    input_bytes = 4 * batch * ci * h * w
    prefetch_input = (
        not strided and not cotile and not parallel and input_bytes >= PREFETCH_MIN_INPUT_BYTES
    )
    # Where it fits in half an L2 it is first prefetched whole, line after line in memory
    # order: a panel reads a line or two of each of ci channel rows, more streams than the
    # hardware prefetcher follows, so from L3 each line waited its own miss; in memory order
    # the rows stream. Inception-v3's 35x35 1x1 convs in the model, their input written
    # several layers before: 192->32 341 -> 223 us, 256->48 491 -> 321 (Intel Xeon, AVX-512).
    stage_input = prefetch_input and input_bytes <= STAGE_MAX_INPUT_BYTES
    # channel rows that do not start on a cache line (35x35: 1225 floats) made most nb-pixel
    # loads split across lines, in every channel tile: the panel's ci x nb pixels are first
    # copied to an aligned scratch, once per panel (``aligned_panel``). One thread only: a
    # packed panel is one task for all its channel tiles, and small images have few panels
    # (13x13: 6, where the unpacked form has 6 x Co / mr tasks for the threads to share)
    pack = aligned_panel(geo, order) and not parallel
    tile_prefetch = prefetch_input and not pack  # packed: the copy prefetches instead
    store_row = _row_store_macro(batch * co * pixels, has_bias, residual, in_registers)
    # a heavy activation with an overlapping last panel: one task runs the last two panels
    merged = in_registers != activation and panels > 1 and pixels % nb != 0
    groups = panels - 1 if merged else panels

    def vec(first):  # nb consecutive pixels
        return run(first, nb)

    def bcast(value):
        return splat(value, nb)

    @T.macro
    def panel_tile(xf, wf, bias, residual_in, of, src, base, stride, n, tile, pn, start):
        """Channel tile ``tile`` of pixel panel ``pn`` (from ``start``), its input channel k's
        pixels at ``src[base + k * stride]``, and its epilogue."""
        acc = T.alloc_buffer((mr * nb,), "float32", scope="local")
        for i in T.unroll(mr):
            acc[vec(i * nb)] = bcast(T.float32(0))
        for k in range(ci):
            if prefetch:
                T.evaluate(prefetch_l2(wf[T.min(((tile + 1) * ci + k) * mr, last_weight)]))
            if tile_prefetch and tile < nb // 16:  # the next panel, a line a tile
                T.evaluate(
                    prefetch_l2(
                        xf[(n * ci + k) * h * w + T.min(pn * nb + nb, pixels - nb) + tile * 16]
                    )
                )
            for i in T.unroll(mr):
                acc[vec(i * nb)] = (
                    acc[vec(i * nb)]
                    + bcast(wf[(tile * ci + k) * mr + i]) * src[vec(base + k * stride)]
                )
        for i in T.unroll(mr):
            if tile * mr + i < co:
                c: T.let = tile * mr + i
                at: T.let = (n * co + c) * pixels + start
                store_row(of, residual_in, bias, acc[vec(i * nb)], c, at, nb)
        if in_registers != activation:  # the heavy activation, over the tile in L1
            for i in range(mr):
                if tile * mr + i < co:
                    row: T.let = (n * co + tile * mr + i) * pixels + start
                    for u in range(nb // piece):
                        of[run(row + u * piece, piece)] = _epilogue(
                            of[run(row + u * piece, piece)], activation, piece
                        )

    @T.macro
    def packed_panel(xf, wf, bias, residual_in, of, t):
        """Panel group ``t``: each panel's pixels copied to an aligned scratch (the next
        panel's lines prefetched meanwhile, a panel of compute ahead), then every channel tile
        on it."""
        n: T.let = t // groups
        group: T.let = t % groups
        xp = T.alloc_buffer((ci * nb,), "float32", scope="global", align=64)
        for pn in range(group, group + 1 + (T.Cast("int32", group == groups - 1) if merged else 0)):
            start: T.let = T.min(pn * nb, pixels - nb)
            for k in range(ci):
                xp[vec(k * nb)] = xf[vec((n * ci + k) * h * w + start)]
                if prefetch_input and not stage_input:
                    for j in T.unroll(nb // 16 + 1):
                        T.evaluate(
                            prefetch_l2(
                                xf[
                                    (n * ci + k) * h * w
                                    + T.min(T.min(pn * nb + nb, pixels - nb) + j * 16, pixels - 1)
                                ]
                            )
                        )
            for tile in range(co_tiles):
                panel_tile(xf, wf, bias, residual_in, of, xp, 0, nb, n, tile, pn, start)

    @T.prim_func
    def kernel(
        x: T.Buffer((batch, ci, h, w), "float32"),
        w_packed: T.Buffer((co_tiles, ci, mr), "float32"),
        bias: T.Buffer((co if has_bias else 1,), "float32"),
        residual_in: T.Buffer((batch, co, oh, ow), "float32"),
        out: T.Buffer((batch, co, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((batch * ci * h * w,), "float32", data=x.data)
        wf = T.decl_buffer((co_tiles * ci * mr,), "float32", data=w_packed.data)
        if inplace:  # the output written over the residual (``pointwise_kernel``)
            of = T.decl_buffer((batch * co * pixels,), "float32", data=residual_in.data)
        else:
            of = T.decl_buffer((batch * co * pixels,), "float32", data=out.data)
        if stage_input:
            for line in range(batch * ci * h * w // 16):
                T.evaluate(prefetch_l2(xf[line * 16]))
        # strided: the pixels it reads, row by row (``row_copy_macro``: a stride-2 row is the
        # even lanes of contiguous loads), as a stride-1 input of the output's size
        x_used = T.alloc_buffer((batch * ci * pixels if strided else 1,), "float32")
        if strided:
            for row in loop(batch * ci * oh):
                decimate(x_used, row * ow, xf, (row // oh * h + row % oh * sh) * w)
        if pack:
            for t in loop(batch * groups):
                packed_panel(xf, wf, bias, residual_in, of, t)
        else:
            for t in loop(batch * groups * co_tiles):
                n: T.let = t // (groups * co_tiles)
                group: T.let = t % groups if cotile else t // co_tiles % groups
                tile: T.let = t // groups % co_tiles if cotile else t % co_tiles
                # the last group is the last two panels, one after the other (OVERLAP_OWNERSHIP)
                for pn in range(
                    group, group + 1 + (T.Cast("int32", group == groups - 1) if merged else 0)
                ):
                    start: T.let = T.min(pn * nb, pixels - nb)
                    if strided:
                        panel_tile(
                            xf, wf, bias, residual_in, of, x_used, n * ci * pixels + start, pixels,
                            n, tile, pn, start,
                        )  # fmt: skip
                    else:
                        panel_tile(
                            xf, wf, bias, residual_in, of, xf, n * ci * h * w + start, h * w,
                            n, tile, pn, start,
                        )  # fmt: skip

    return kernel


def _channel_kernel(
    geo: ConvGeometry,
    mr: int,
    nb: int,
    has_bias: bool,
    activation: str | None,
    residual: bool,
    parallel: bool,
    prefetch: bool = False,
    inplace: bool = False,
    kc: int = 0,
) -> tvm.tirx.PrimFunc:
    """The ``channels`` form: ``nb`` output channels in the vector lanes, ``mr`` pixels
    broadcast straight from the NCHW input (no packing), the weight packed ``[Co/nb, Ci, nb]``.
    A pixel tile's ``mr`` outputs of one channel are contiguous in NCHW, so the epilogue
    stores ``mr``-wide vectors gathered across the accumulators. For small images: 7x7 = 7
    tiles of 7 pixels exactly, where 16-lane pixel panels compute 64."""
    batch, ci, h, w = geo.x_shape
    co = geo.w_shape[0]
    oh, ow = geo.out_hw
    pixels = oh * ow
    tiles = -(-pixels // mr)
    co_panels = -(-co // nb)
    loop = T.parallel if parallel else T.serial
    last_weight = co_panels * ci * nb - 1

    source = _input_offset(geo)
    in_registers = register_activation(activation)
    # a heavy activation with an overlapping last tile: one task runs the last two tiles
    merged = in_registers != activation and tiles > 1 and pixels % mr != 0
    groups = tiles - 1 if merged else tiles
    # chunked (``kc``): a task is a channel panel, whose pixel tiles take kc input channels
    # before the next kc, so the panel's kc x nb weights stay in L1 across the tiles; the
    # partial sums wait in a scratch, a slot per tile (``default_channel_chunk``)
    chunks = ci // kc if kc else 1
    chunk_k = kc or ci
    tasks = batch * co_panels * (1 if chunks > 1 else groups)
    steps = chunks * groups if chunks > 1 else 1

    store_row = _row_store_macro(batch * co * pixels, has_bias, residual, in_registers)

    def pixels_of(first):  # mr consecutive output pixels
        return run(first, mr)

    def across(j):  # the mr accumulators of lane j
        return run(j, mr, stride=nb)

    @T.macro
    def channel_tile(xf, wf, bias, residual_in, of, partial, n, panel, group, tt, chunk):
        start: T.let = T.min(tt * mr, pixels - mr)
        acc = T.alloc_buffer((mr * nb,), "float32", scope="local")
        if chunks == 1:
            for i in T.unroll(mr):
                acc[T.ramp(i * nb, 1, nb)] = T.broadcast(T.float32(0), nb)
        elif chunk == 0:
            for i in T.unroll(mr):
                acc[T.ramp(i * nb, 1, nb)] = T.broadcast(T.float32(0), nb)
        else:
            for i in T.unroll(mr):
                acc[T.ramp(i * nb, 1, nb)] = partial[T.ramp((tt * mr + i) * nb, 1, nb)]
        for kk in range(chunk_k):
            k: T.let = chunk * chunk_k + kk
            if prefetch:  # the next panel's weights, spread over this panel's tiles
                T.evaluate(
                    prefetch_l2(
                        wf[
                            T.min(
                                (panel + 1) * ci * nb
                                + spread_offset(group * ci + k, groups * ci, ci * nb),
                                last_weight,
                            )
                        ]
                    )
                )
            for i in T.unroll(mr):
                acc[T.ramp(i * nb, 1, nb)] = (
                    acc[T.ramp(i * nb, 1, nb)]
                    + T.broadcast(xf[(n * ci + k) * h * w + source(start + i)], nb)
                    * wf[T.ramp((panel * ci + k) * nb, 1, nb)]
                )
        if chunk < chunks - 1:  # partial sums, in the tile's slot
            for i in T.unroll(mr):
                partial[T.ramp((tt * mr + i) * nb, 1, nb)] = acc[T.ramp(i * nb, 1, nb)]
        else:
            for j in T.unroll(nb):
                if panel * nb + j < co:
                    c: T.let = panel * nb + j
                    at: T.let = (n * co + c) * pixels + start
                    store_row(of, residual_in, bias, acc[across(j)], c, at, mr)
            if in_registers != activation:  # the heavy activation, over the tile in L1
                for j in range(nb):
                    if panel * nb + j < co:
                        row: T.let = (n * co + panel * nb + j) * pixels + start
                        of[pixels_of(row)] = _epilogue(of[pixels_of(row)], activation, mr)

    @T.prim_func
    def kernel(
        x: T.Buffer((batch, ci, h, w), "float32"),
        w_packed: T.Buffer((co_panels, ci, nb), "float32"),
        bias: T.Buffer((co if has_bias else 1,), "float32"),
        residual_in: T.Buffer((batch, co, oh, ow), "float32"),
        out: T.Buffer((batch, co, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((batch * ci * h * w,), "float32", data=x.data)
        wf = T.decl_buffer((co_panels * ci * nb,), "float32", data=w_packed.data)
        if inplace:  # the output written over the residual (``pointwise_kernel``)
            of = T.decl_buffer((batch * co * pixels,), "float32", data=residual_in.data)
        else:
            of = T.decl_buffer((batch * co * pixels,), "float32", data=out.data)
        for t in loop(tasks):
            partial = T.alloc_buffer((tiles * mr * nb if chunks > 1 else 1,), "float32")
            for step in range(steps):
                n: T.let = t // (tasks // batch)
                panel: T.let = t // (tasks // batch // co_panels) % co_panels
                group: T.let = step % groups if chunks > 1 else t % groups
                chunk: T.let = step // groups if chunks > 1 else 0
                # the last group is the last two pixel tiles, one after the other
                # (OVERLAP_OWNERSHIP)
                for tt in range(
                    group, group + 1 + (T.Cast("int32", group == groups - 1) if merged else 0)
                ):
                    channel_tile(xf, wf, bias, residual_in, of, partial, n, panel, group, tt, chunk)

    return kernel


# OVERLAP_OWNERSHIP: the last pixel tile overlaps the one before it (so that its stores are
# whole vectors). Identical final values stored twice are harmless, but a heavy activation is
# applied in place, as a pass over the stored tile: if the two tiles ran on two threads at once,
# one pass could read the other tile's activated value and activate it twice (silu(silu(x)):
# 169 wrong values of 256 -> 130 channels at 7x7, seen under load). So with a heavy activation
# the last two tiles of a row of tiles run in one task, one after the other. (Storing every
# tile through a scratch instead cost EfficientNet-B0 10%; giving the last tile its own store
# path, 20%.)

# The PrimFunc attribute that carries the kernel's spec (see pointwise_kernel)
SPEC_ATTR = "tvm_sparse.conv_pointwise"


def _pixel_tile(spec: dict) -> int:
    """Output pixels a tile of the spec's kernel stores at once."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in spec["geometry"]))
    tiling = GemmTiling(**spec["tiling"])
    pixels = geo.out_hw[0] * geo.out_hw[1]
    if (spec.get("order") or "panel") == "channels":
        return min(tiling.mr, pixels)
    return panel_width(tiling.nb, pixels)


def can_write_over_residual(spec: dict) -> bool:
    """Whether the kernel may store its output over its residual (``"inplace"``): only where
    no two pixel tiles overlap. An overlapping last tile (``OVERLAP_OWNERSHIP``) stores some
    outputs twice, and the second time would add a residual already overwritten."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in spec["geometry"]))
    return geo.out_hw[0] * geo.out_hw[1] % _pixel_tile(spec) == 0


def pointwise_kernel(spec: dict) -> tvm.tirx.PrimFunc:
    """The kernel of a spec: ``{"geometry": ConvGeometry fields, "tiling": GemmTiling fields,
    "has_bias", "activation", "residual", "order", "inplace"?}``; params ``[x, w_packed,
    bias?, residual?, out]`` (NCHW ``x``, ``residual`` and ``out``), no ``out`` where the
    output is stored over the residual (``inplace``, for ``call_tir_inplace``). The spec is
    kept on the function, so ``passes.fuse_residual`` can rebuild it with the shortcut in the
    epilogue."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in spec["geometry"]))
    tiling = GemmTiling(**spec["tiling"])
    pixels = geo.out_hw[0] * geo.out_hw[1]
    has_bias, residual = bool(spec["has_bias"]), bool(spec.get("residual", False))
    inplace = bool(spec.get("inplace", False))
    if inplace and not (residual and can_write_over_residual(spec)):
        raise ValueError(
            "pointwise conv: in place needs a residual and pixel tiles that do not overlap"
        )
    prefetch = wants_prefetch(4 * geo.w_shape[0] * geo.x_shape[1], tiling.parallel)
    order = spec.get("order") or "panel"
    if order not in ORDERS:
        raise ValueError(f"pointwise conv: order must be one of {ORDERS}, got {order!r}")
    kc = int(spec.get("kc", 0))
    if kc and (order != "channels" or kc < 0 or geo.x_shape[1] % kc):
        raise ValueError(
            f"pointwise conv: kc {kc} needs the channels form and to divide the"
            f" {geo.x_shape[1]} input channels"
        )
    if order == "channels":
        mr = min(tiling.mr, pixels)
        func = _channel_kernel(
            geo, mr, tiling.nb, has_bias, spec["activation"], residual, tiling.parallel, prefetch,
            inplace, kc=kc,
        )  # fmt: skip
    else:
        nb = panel_width(tiling.nb, pixels)
        func = _kernel(
            geo,
            tiling.mr,
            nb,
            has_bias,
            spec["activation"],
            residual,
            order,
            tiling.parallel,
            strided=geo.strides != (1, 1),
            prefetch=prefetch,
            inplace=inplace,
        )
    unused = {"bias"} if not has_bias else set()
    unused |= {"residual_in"} if not residual else set()
    unused |= {"out"} if inplace else set()
    func = without_params(func, unused)
    return finish(func).with_attr(SPEC_ATTR, json.dumps(spec))


def default_channel_chunk(geo: ConvGeometry, order: str, nb: int = 64, threads: int = 1) -> int:
    """Input channels per chunk of the ``channels`` form (0: all at once): ``CHANNEL_CHUNK``
    where the input has at least twice that many, a multiple of it. A chunked kernel's task is
    a whole channel panel of ``nb`` (its pixel tiles share the partial sums), so on several
    threads it chunks only where the panels divide evenly among them: Inception-v3's 768->192
    at 17x17 (3 panels) on two threads took 3951 us over 8 calls chunked, 3064 not."""
    ci = geo.x_shape[1]
    if order != "channels" or ci < 2 * CHANNEL_CHUNK or ci % CHANNEL_CHUNK:
        return 0
    tasks = geo.x_shape[0] * -(-geo.w_shape[0] // nb)
    return CHANNEL_CHUNK if tasks % threads == 0 else 0


def pointwise_spec(
    geo: ConvGeometry,
    tiling: GemmTiling,
    has_bias: bool,
    activation: str | None,
    order: str | None = None,
    threads: int = 1,
) -> dict:
    """The spec ``pointwise_kernel`` builds from; ``order`` defaults by the input's size;
    ``threads``: the parallel loop's (the target's cores)."""
    order = order or choose_pointwise_order(geo, tiling.nb, tiling.parallel)
    return {
        "geometry": list(dataclasses.astuple(geo)),
        "tiling": dataclasses.asdict(tiling),
        "has_bias": has_bias,
        "activation": activation,
        "residual": False,
        "order": order,
        "kc": default_channel_chunk(geo, order, tiling.nb, threads if tiling.parallel else 1),
    }
