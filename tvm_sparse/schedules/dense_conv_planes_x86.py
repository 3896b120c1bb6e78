"""A dense direct convolution over tap planes: output positions are the vector lanes.

Why: the implicit GEMM (``dense_conv_x86``) puts output channels in the lanes, so it transposes
the input to NHWC and writes each ``[pixels x channels]`` tile back into NCHW as short rows of
``mr`` floats, one per channel. On a conv with few input channels and many output pixels (the
7x7 stride-2 stem of every ResNet: 3 -> 64 channels, 112x112 outputs) those relayouts and
partial-line stores cost more than the FMAs. Here the input is re-laid once as the tap planes of
``sparse_conv_planes_x86`` (one per channel, tap column and row phase, any stride), and a
register tile of ``mr`` output channels x ``vectors * lanes`` consecutive output positions
accumulates, per tap, ``mr`` broadcast weights times ``vectors`` contiguous plane loads: every
loaded input vector feeds ``mr`` FMAs, and each output row is stored whole, in NCHW.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ._conv_dims import DEFAULT_CONV, ConvAttrs, conv_dims, samples_in_parallel
from ._epilogue import bias_const, check_activation, register_activation
from ._epilogue import epilogue as _epilogue
from ._prefetch import prefetch_write, wants_output_prefetch
from .kernel import KernelCall, as_weight
from .kernel import finish as _finish
from .sparse_conv_planes_x86 import PlaneConvSpec, tap_planes_macro

# The PrimFunc attribute that carries the kernel's spec (``passes.fuse_conv_pool`` rebuilds it
# with the max pool after it; the spec's ``nnz`` is the taps of one output channel).
SPEC_ATTR = "tvm_sparse.dense_conv_planes"

# (mr output channels, vectors of positions) per vector width. 4 x 4 (16 zmm accumulators)
# measured best on Zen 4 for the ResNet stem and 3x3 convs; 24-accumulator tiles (4x6, 3x8,
# 8x3) ran up to 2x slower there (the accumulators, the input vectors and the broadcast do not
# all fit in 32 registers). AVX2: 9 ymm accumulators + 3 inputs + 1 broadcast of 16.
DEFAULT_TILE = {16: (4, 4), 8: (3, 3), 4: (3, 3)}


def overlaps_last_tile(spec: PlaneConvSpec) -> bool:
    """Whether the last position tile starts at ``positions - tile``, overlapping the one
    before it, instead of storing its part through a scratch: where the positions are not
    whole tiles (but at least one) and the activation is applied in registers (the values
    stored twice are the same; a heavy one is applied over the stored row, which would apply
    it twice). Why: with the tail's scratch and scalar copy in the loop, LLVM kept the
    accumulators on the stack once FlushDenormals had cut the parallel loop into tasks
    (ResNeXt-50's 256-channel grouped 3x3 at 28x28: 440 -> 800 us alone, 1320 in the model)."""
    npos, tile = spec.positions, spec.tile
    whole = register_activation(spec.activation) == spec.activation
    return whole and npos > tile and npos % tile != 0


def tile_macro(spec: PlaneConvSpec, taps: int, out_at=None):
    """Macro: ``mr`` output channels of channel tile ``g`` over the position tile at ``p0``.
    Grouped: a channel tile never spans two conv groups, and reads its group's ``taps``.
    ``out_at(nb, oc, p0)``: where channel ``oc``'s outputs of the tile go in ``yf`` (default:
    NCHW ``y``; another layout only with whole tiles and an activation in registers). Every
    tile is whole where the caller overlaps the last one (``overlaps_last_tile``) or the
    positions are whole tiles: no tail path then."""
    lanes, n, mr = spec.lanes, spec.vectors, spec.ogroup
    o, npos, tile = spec.o, spec.positions, spec.tile
    o_g = o // spec.groups
    group_tiles = -(-o_g // mr)
    hb = int(spec.has_bias)
    activation = spec.activation
    in_registers = register_activation(activation)
    custom_out = out_at is not None
    if not custom_out:

        def out_at(nb, oc, p0):
            return (nb * o + oc) * npos + p0

    # the next position tile's output lines of these channels, owned before their stores
    prefetch = not custom_out and wants_output_prefetch(
        4 * spec.x_shape[0] * o * npos, spec.parallel
    )
    last_out = spec.x_shape[0] * o * npos - 1
    all_whole = overlaps_last_tile(spec) or npos % tile == 0

    @T.macro
    def channel_tile(xs, wp, toffs, bias, yf, tail, nb, g, p0):
        acc = T.alloc_buffer((mr * n * lanes,), "float32", scope="global")
        for a in T.unroll(mr * n):
            acc[T.ramp(a * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        cg: T.let = g // group_tiles  # the conv group
        first: T.let = g % group_tiles * mr  # the tile's first channel in its group
        if prefetch:
            for r in T.unroll(mr):
                for u in T.unroll(n):
                    T.evaluate(
                        prefetch_write(
                            yf[
                                T.min(
                                    (nb * o + cg * o_g + first + r) * npos + p0 + tile + u * lanes,
                                    last_out,
                                )
                            ]
                        )
                    )
        for t in range(taps):
            q: T.let = toffs[cg * taps + t] + p0
            for r in T.unroll(mr):
                ww: T.let = T.broadcast(wp[(g * taps + t) * mr + r], lanes)
                for u in T.unroll(n):
                    acc[T.ramp((r * n + u) * lanes, 1, lanes)] = (
                        acc[T.ramp((r * n + u) * lanes, 1, lanes)]
                        + ww * xs[T.ramp(q + u * lanes, 1, lanes)]
                    )
        for r in T.unroll(mr):
            oc: T.let = cg * o_g + first + r
            if first + r < o_g:
                bv: T.let = T.broadcast(bias[oc * hb], lanes)
                out: T.let = out_at(nb, oc, p0)
                if all_whole or p0 + tile <= npos:
                    for u in T.unroll(n):
                        yf[T.ramp(out + u * lanes, 1, lanes)] = _epilogue(
                            acc[T.ramp((r * n + u) * lanes, 1, lanes)] + bv, in_registers, lanes
                        )
                    if in_registers != activation:  # a heavy one: over the stored row, in L1
                        for u in range(n):
                            yf[T.ramp(out + u * lanes, 1, lanes)] = _epilogue(
                                yf[T.ramp(out + u * lanes, 1, lanes)], activation, lanes
                            )
                else:
                    for u in T.unroll(n):  # the activation in vectors (a SiLU is ~40 ops)
                        tail[T.ramp(u * lanes, 1, lanes)] = _epilogue(
                            acc[T.ramp((r * n + u) * lanes, 1, lanes)] + bv, activation, lanes
                        )
                    for e in range(npos - p0):
                        yf[out + e] = tail[e]

    return channel_tile


def dense_planes_kernel(spec: PlaneConvSpec, taps: int) -> tvm.tirx.PrimFunc:
    """Per sample: pad, re-lay as tap planes, then every (position tile, channel group)."""
    bn, ci, h, wd = spec.x_shape
    o, (oh, ow) = spec.o, spec.out_hw
    hp, wp_ = spec.padded_hw
    tile, ntiles, mr = spec.tile, spec.tiles, spec.ogroup
    ngroups = spec.groups * -(-o // spec.groups // mr)  # channel tiles
    total = spec.planes * spec.plane_size
    loop = spec.inner_loop
    samples = spec.sample_loop
    padded_copy = spec.padded_copy
    chw = ci * h * wd
    fill = tap_planes_macro(spec)
    channel_tile = tile_macro(spec, taps)
    # grouped: channel tiles outer, so one group's planes (8 channels' at 28x28: 80 KiB) stay
    # in L2 while its position tiles run, instead of every group's passing for each position
    # tile (ResNeXt-50's 256-channel grouped 3x3 at 28x28: 448 -> 405 us, at 56x56 686 -> 525)
    group_outer = spec.groups > 1
    # the last tile's first position: it overlaps the one before (``overlaps_last_tile``)
    last_tile = spec.positions - tile if overlaps_last_tile(spec) else (ntiles - 1) * tile

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        wp: T.Buffer((ngroups * taps * mr,), "float32"),
        toffs: T.Buffer((spec.groups * taps,), "int32"),
        bias: T.Buffer((spec.nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        yf = T.decl_buffer((bn * o * oh * ow,), "float32", data=y.data)
        xflat = T.decl_buffer((bn * chw,), "float32", data=x.data)
        for nb in samples(bn):
            # a tile past the last position reads up to `tile` floats beyond the last plane
            xs = T.alloc_buffer((total + tile,), "float32", scope="global")
            xp = T.alloc_buffer((ci * hp * wp_ if padded_copy else 1,), "float32", scope="global")
            for e in T.vectorized(tile):
                xs[total + e] = T.float32(0)
            fill(x, xflat, xp, xs, nb)
            for tg in loop(ntiles * ngroups):
                tail = T.alloc_buffer((tile,), "float32", scope="global")
                if group_outer:  # a group's planes stay in L2 while its tiles run
                    channel_tile(
                        xs, wp, toffs, bias, yf, tail, nb, tg // ntiles,
                        T.min(tg % ntiles * tile, last_tile),
                    )  # fmt: skip
                else:
                    channel_tile(
                        xs, wp, toffs, bias, yf, tail, nb, tg % ngroups,
                        T.min(tg // ngroups * tile, last_tile),
                    )  # fmt: skip

    return _finish(kernel)


def tap_offsets(spec: PlaneConvSpec) -> np.ndarray:
    """Every tap ``(c, kh, kw)``, in OIHW order, as its run's start in the planes."""
    ci = spec.x_shape[1]
    kh, kw = spec.kernel_hw
    sh, dh = spec.strides[0], spec.dilation[0]
    c, tap_h, tap_w = np.meshgrid(np.arange(ci), np.arange(kh), np.arange(kw), indexing="ij")
    plane = (c * kw + tap_w) * spec.phases + (tap_h * dh) % sh
    runs = plane * spec.plane_size + (tap_h * dh) // sh * spec.out_hw[1]
    return np.ascontiguousarray(runs.reshape(-1), dtype=np.int32)


def pack_planes_weight(weight: np.ndarray, mr: int, groups: int = 1) -> np.ndarray:
    """OIHW -> flat ``[ceil(O / mr), C*KH*KW, mr]``, zero padded: ``mr`` broadcasts per tap;
    grouped, each group's channels padded to whole tiles (``[groups * ceil(O_g / mr), ...]``)."""
    o = weight.shape[0]
    o_g = o // groups
    taps = int(np.prod(weight.shape[1:]))
    padded = np.zeros((groups, -(-o_g // mr) * mr, taps), dtype=np.float32)
    padded[:, :o_g] = weight.reshape(groups, o_g, taps)
    return np.ascontiguousarray(padded.reshape(-1, mr, taps).transpose(0, 2, 1)).reshape(-1)


def dense_conv2d_planes(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    mr: int | None = None, vectors: int | None = None, lanes: int | None = None,
    parallel: bool = True,
) -> KernelCall:  # fmt: skip
    """``y = act(conv2d(x, weight) + bias)``, NCHW / OIHW, any groups, stride, padding and
    dilation. Knobs: ``mr`` output channels and ``vectors`` position vectors per register tile
    (default from the target's vector width). Consts: ``(packed weight, tap offsets, bias)``.

    Grouped convs (``conv.groups`` > 1): a register tile holds ``mr`` channels of one group (a
    group's last tile zero padded), and reads that group's input channels' taps only; the
    lanes stay full whatever the group width (positions, not channels, are the lanes)."""
    from ..target import num_cores, vector_lanes

    check_activation(activation)
    groups = int(conv.groups)
    weight = as_weight(weight_oihw, 4)
    if weight.shape[0] % groups or x_shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"dense_conv2d_planes: x {tuple(x_shape)}, weight {weight.shape}, groups {groups}"
        )
    whole = (weight.shape[0], int(x_shape[1]), *weight.shape[2:])  # the ungrouped shape
    dims = conv_dims(x_shape, whole, conv.strides, conv.padding, conv.dilation)
    (bn, ci, _, _), (o, kh, kw) = dims.x, dims.kernel
    ci //= groups  # the taps of one output channel
    lanes = lanes or vector_lanes(target)
    default_mr, default_vectors = DEFAULT_TILE.get(lanes, DEFAULT_TILE[8])
    mr, vectors = mr or default_mr, vectors or default_vectors
    positions = dims.out_hw[0] * dims.out_hw[1]
    vectors = min(vectors, -(-positions // lanes))
    taps = ci * kh * kw
    bias_arr, has_bias = bias_const(bias, o)
    spec = PlaneConvSpec(
        dims.x, o, (kh, kw), dims.out_hw, dims.pads, dims.strides, dims.dilation, taps,
        "int32", "int32", bias_arr.size, has_bias, activation, lanes, vectors, mr,
        parallel and num_cores(target) > 1, groups=groups,
    )  # fmt: skip
    spec = dataclasses.replace(
        spec,
        batch_parallel=spec.parallel and samples_in_parallel(bn, target, spec.scratch_bytes),
    )
    macs = o * taps * bn * positions
    info = {
        "kind": "dense_conv2d",
        "layout": "planes",
        "macs": macs,
        "macs_padded": groups * -(-o // groups // mr) * mr * taps * bn * spec.tiles * spec.tile,
        "activation": activation,
        "tile": (mr, vectors, lanes),
        "batch_parallel": spec.batch_parallel,
    }
    return KernelCall(
        func=dense_planes_kernel(spec, taps).with_attr(SPEC_ATTR, spec.to_json()),
        name="dense_conv2d_planes_" + "x".join(map(str, x_shape)),
        consts=(pack_planes_weight(weight, mr, groups), tap_offsets(spec), bias_arr),
        out_shape=(bn, o) + tuple(dims.out_hw),
        info=info,
    )
