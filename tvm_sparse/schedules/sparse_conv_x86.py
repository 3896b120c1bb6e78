"""Direct sparse convolution for x86 CPUs (AVX2 + FMA), as block-free TIR.

``sparse_conv2d`` is a direct sparse convolution: every non-zero ``w[o, c, kh, kw]`` becomes an
offset into a re-laid input, and a register tile of output positions accumulates
``w * input[offset + p]`` over contiguous positions ``p``. No im2col buffer. Three layouts:

- ``flat`` (default with a unit row stride): output positions ``oh * OW + ow`` with no padding
  lanes, over per-(channel, kw) planes of the input; the first ``8 * (OW // 8)`` columns are
  their own region so their loads are aligned (``sparse_conv_flat_x86``).
- ``wide``: whole output rows over the padded input width (``Wp - OW`` lanes per row computed
  and dropped, unaligned loads); the kernel before ``flat``, kept for comparison.
- ``tiled``: (rows, cols) tiles of outputs, any strides (the fallback).
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.csr import CSR
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const as _bias_const
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish
from .sparse_conv_flat_x86 import flat_conv_call


def _conv_tiles(oh: int, ow: int, budget: int = 64) -> tuple[int, int]:
    """(rows, cols) of an output tile whose sums fit in registers; both divide the output."""
    cols = ow if ow <= budget else max(d for d in range(1, budget + 1) if ow % d == 0)
    rows = max(d for d in range(1, oh + 1) if oh % d == 0 and d * cols <= max(budget, cols))
    return rows, cols


def _wide_rows(oh: int, wp: int, sh: int, sw: int, max_lanes: int = 96) -> int:
    """Output rows per "wide" tile (0 when the wide tile does not apply).

    With unit strides, output row ``r`` column ``v`` reads the padded input at ``r * Wp + v`` plus
    the tap's offset, so ``th`` whole output rows computed over the padded width ``Wp`` are one
    contiguous run of ``th * Wp`` lanes: full 8-wide vectors with no per-row remainder (the
    ``Wp - OW`` extra lanes per row are computed and dropped). 12 ymm accumulators at most.
    """
    if sh != 1 or sw != 1:
        return 0
    fits = [d for d in range(1, oh + 1) if oh % d == 0 and -(-d * wp // 8) * 8 <= max_lanes]
    return max(fits) if fits else 0


def _padded_copy_macro(x_shape, padded_hw, pads, parallel: bool):
    """Macro: ``xf`` = x zero padded to ``padded_hw``, flat per (sample, channel) plane."""
    bn, ci, h, wd = x_shape
    hp, wp = padded_hw
    top, left = pads
    need_pad = (hp, wp) != (h, wd)
    rows = T.parallel if parallel else T.serial

    @T.macro
    def padded_copy(x, xf):
        if need_pad:
            for nc in rows(bn * ci):
                for ph in range(hp):
                    for pw in range(wp):
                        xf[nc * hp * wp + ph * wp + pw] = T.if_then_else(
                            top <= ph and ph < top + h and left <= pw and pw < left + wd,
                            x[
                                nc // ci,
                                nc % ci,
                                T.min(T.max(ph - top, 0), h - 1),
                                T.min(T.max(pw - left, 0), wd - 1),
                            ],
                            T.float32(0),
                        )
        else:
            for nc in rows(bn * ci):
                for ph in range(hp):
                    for pw in T.vectorized(wp):
                        xf[nc * hp * wp + ph * wp + pw] = x[nc // ci, nc % ci, ph, pw]

    return padded_copy


def _wide_macro(out_hw, wp: int, th: int, lanes: int, plane: int, chw: int, has_bias: bool,
                activation: str | None):  # fmt: skip
    """Macro: output plane ``no`` as ``th`` whole rows at a time over the padded width, through
    the scratch ``yw`` (its ``wp - ow`` extra lanes per row dropped on the way to y)."""
    oh, ow = out_hw

    @T.macro
    def wide_plane(xf, yw, vals, offs, bias, y, no, nb, oc, lo, hi):
        for tr in range(oh // th):
            # 8-wide pieces and whole-vector stores only: a <72 x float> accumulator,
            # or a per-lane read of it, makes LLVM shuffle it through the stack inside
            # the reduction loop
            accw = T.alloc_buffer((lanes,), "float32", scope="global")
            for u in T.unroll(lanes // 8):
                accw[T.ramp(u * 8, 1, 8)] = T.broadcast(T.float32(0), 8)
            for j in range(lo, hi):
                ww: T.let = T.broadcast(vals[j], 8)
                wbase: T.let = nb * chw + T.Cast("int32", offs[j]) + tr * th * wp
                for u in T.unroll(lanes // 8):
                    accw[T.ramp(u * 8, 1, 8)] = (
                        accw[T.ramp(u * 8, 1, 8)] + ww * xf[T.ramp(wbase + u * 8, 1, 8)]
                    )
            for u in T.unroll(lanes // 8):
                yw[T.ramp(no * plane + tr * th * wp + u * 8, 1, 8)] = accw[T.ramp(u * 8, 1, 8)]
        for rr in range(oh):
            for v in range(ow):
                if has_bias:
                    y[nb, oc, rr, v] = _epilogue(
                        yw[no * plane + rr * wp + v] + bias[oc], activation
                    )
                else:
                    y[nb, oc, rr, v] = _epilogue(yw[no * plane + rr * wp + v], activation)

    return wide_plane


def _tiled_macro(out_hw, wp: int, tile, strides, chw: int, has_bias: bool, activation: str | None):
    """Macro: output plane (``nb``, ``oc``) in (rows, cols) register tiles, any strides."""
    oh, ow = out_hw
    th, tw = tile
    sh, sw = strides
    vec = T.vectorized if sw == 1 else T.unroll

    @T.macro
    def tiled_plane(xf, vals, offs, bias, y, nb, oc, lo, hi):
        for tr in range(oh // th):
            for tcol in range(ow // tw):
                acc = T.alloc_buffer((th * tw,), "float32", scope="global")
                for lane in T.vectorized(th * tw):
                    acc[lane] = T.float32(0)
                for j in range(lo, hi):
                    w: T.let = vals[j]
                    base: T.let = (
                        nb * chw + T.Cast("int32", offs[j]) + tr * th * sh * wp + tcol * tw * sw
                    )
                    for rr in T.unroll(th):
                        for v in vec(tw):
                            acc[rr * tw + v] = (
                                acc[rr * tw + v] + w * xf[base + rr * sh * wp + v * sw]
                            )
                for rr in range(th):
                    for v in range(tw):
                        if has_bias:
                            y[nb, oc, tr * th + rr, tcol * tw + v] = _epilogue(
                                acc[rr * tw + v] + bias[oc], activation
                            )
                        else:
                            y[nb, oc, tr * th + rr, tcol * tw + v] = _epilogue(
                                acc[rr * tw + v], activation
                            )

    return tiled_plane


def _conv_kernel(x_shape, o, out_hw, padded_hw, pads, strides, nnz, idx_dtype, ptr_dtype, nbias,
                 has_bias, activation, tile, parallel):  # fmt: skip
    """Direct sparse conv: out[n, o, tile] += w * xp_flat[n, offset(w) + position(tile)]."""
    bn, ci, h, wd = x_shape
    oh, ow = out_hw
    hp, wp = padded_hw
    th, tw = tile
    chw = ci * hp * wp
    wide = tw == 0  # tile = (th, 0): th output rows over the padded width, see _wide_rows
    lanes = -(-th * wp // 8) * 8 if wide else th * tw
    tail = lanes if wide else 0  # the last wide tile reads up to `lanes` past the input
    # Each (n, o) plane of the wide scratch gets its own `lanes` of slack: the last tile row of a
    # plane stores whole vectors past oh * wp, and with planes split across threads that tail
    # must not land in the next plane (a data race that changed results run to run).
    plane = oh * wp + tail
    nval = max(nnz, 1)
    rows = T.parallel if parallel else T.serial
    padded_copy = _padded_copy_macro(x_shape, padded_hw, pads, parallel)
    wide_plane = _wide_macro(out_hw, wp, th, lanes, plane, chw, has_bias, activation)
    tiled_plane = _tiled_macro(out_hw, wp, tile, strides, chw, has_bias, activation)

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        offs: T.Buffer((nval,), idx_dtype),
        ptr: T.Buffer((o + 1,), ptr_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        xf = T.alloc_buffer((bn * chw + tail,), "float32", scope="global")
        yw = T.alloc_buffer((bn * o * plane,), "float32", scope="global")
        if wide:
            for e in T.vectorized(tail):
                xf[bn * chw + e] = T.float32(0)
        padded_copy(x, xf)
        for no in rows(bn * o):
            nb: T.let = no // o
            oc: T.let = no % o
            lo: T.let = T.Cast("int32", ptr[oc])
            hi: T.let = T.Cast("int32", ptr[oc + 1])
            if wide:
                wide_plane(xf, yw, vals, offs, bias, y, no, nb, oc, lo, hi)
            else:
                tiled_plane(xf, vals, offs, bias, y, nb, oc, lo, hi)

    return kernel


def _checked_tile(layout, tile, out_hw, wp: int, strides) -> tuple[int, int]:
    """The register tile of the wide / tiled layouts: ``tile`` when given (checked), else the
    wide tile where it applies (and ``layout`` allows), else the largest fitting (rows, cols)."""
    oh, ow = out_hw
    sh, sw = strides
    if layout == "wide" and tile is None:
        tile = (_wide_rows(oh, wp, sh, sw), 0)
    if layout == "tiled" and tile is None:
        tile = _conv_tiles(oh, ow)
    if tile is None:
        wide_rows = _wide_rows(oh, wp, sh, sw)
        tile = (wide_rows, 0) if wide_rows else _conv_tiles(oh, ow)
    tile = tuple(tile)
    if tile[1] == 0 and (_wide_rows(oh, wp, sh, sw, 1 << 30) == 0 or oh % max(tile[0], 1)):
        raise ValueError(f"wide tile {tile} needs unit strides and rows dividing {oh}")
    if tile[0] < 1 or oh % tile[0] or (tile[1] and ow % tile[1]):
        raise ValueError(f"tile {tile} must divide the output {(oh, ow)}")
    return tile


def padded_offset_consts(csr: CSR, ci: int, k_hw, padded_hw, dilation):
    """``(vals, offsets, row pointers)``: each non-zero with its flat offset into the padded
    input, ``c * Hp * Wp + kh * dh * Wp + kw * dw`` (buffers kept non-empty)."""
    kh, kw = k_hw
    hp, wp = padded_hw
    dh, dw = dilation
    cols = csr.indices.astype(np.int64)
    c_idx, rem = cols // (kh * kw), cols % (kh * kw)
    offsets = c_idx * hp * wp + (rem // kw) * dh * wp + (rem % kw) * dw
    offs = as_index(offsets, max(ci * hp * wp - 1, 0))
    vals = np.asarray(csr.data, dtype=np.float32)
    if vals.size == 0:
        vals, offs = np.zeros(1, np.float32), np.zeros(1, offs.dtype)
    return vals, offs, np.ascontiguousarray(csr.indptr)


LAYOUTS = ("flat", "wide", "tiled")


def sparse_conv2d(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    tile: tuple[int, int] | None = None, parallel: bool = True, layout: str | None = None,
    vectors: int | None = None, cblock: int | None = None, oblock: int | None = None,
    lanes: int | None = None,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, ``padding=(top, left, bottom, right)``.

    ``layout`` is one of ``LAYOUTS`` (module docstring); None picks ``flat`` when the row stride
    is 1 and no ``tile`` is given, else the tiled kernel (the wide tile where it applies).
    ``flat`` knobs: ``vectors`` accumulators per register tile, as wide as the target's
    vectors (None: 14 ymm on AVX2, 28 zmm on AVX-512), ``lanes`` 8 or 16 to override that
    width, ``cblock`` input channels per L1 block (default:
    their planes fit 16 KiB), ``oblock`` output channels that share a block before the next
    (None: ``default_oblock``).
    Consts: ``(vals, tap rows, segment starts, bias)``.
    ``wide`` / ``tiled``: each non-zero weight is stored with its flat offset into the padded
    input, ``c * Hp * Wp + kh * dh * Wp + kw * dw``; ``tile=(rows, cols)`` of output positions
    per register tile (both must divide the output); ``cols=0`` asks for ``rows`` whole output
    rows computed over the padded width (see ``_wide_rows``). Consts: ``(vals, offsets, row
    pointers, bias)``.
    """
    weight, dims = checked_groups1_conv("sparse_conv2d", x_shape, weight_oihw, conv, activation)
    (bn, ci, h, wd), (o, kh, kw) = dims.x, dims.kernel
    top, left, bottom, right = dims.pads
    (sh, sw), (dh, dw), (oh, ow) = dims.strides, dims.dilation, dims.out_hw
    hp, wp = h + top + bottom, wd + left + right
    csr = CSR.from_dense(weight.reshape(o, ci * kh * kw))
    bias_arr, has_bias = _bias_const(bias, o)
    if layout is None:
        layout = "flat" if sh == 1 and tile is None else None
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "flat":
        return flat_conv_call(
            (bn, ci, h, wd), csr, (kh, kw), (oh, ow), (hp, wp), (top, left), (sh, sw), (dh, dw),
            bias_arr, has_bias, activation, vectors, cblock, oblock, parallel, target, lanes,
        )  # fmt: skip
    tile = _checked_tile(layout, tile, (oh, ow), wp, (sh, sw))
    vals, offs, ptr = padded_offset_consts(csr, ci, (kh, kw), (hp, wp), (dh, dw))
    func = _conv_kernel(
        (bn, ci, h, wd), o, (oh, ow), (hp, wp), (top, left), (sh, sw), csr.nnz, str(offs.dtype),
        str(ptr.dtype), bias_arr.size, has_bias, activation, tile, parallel,
    )  # fmt: skip
    positions = bn * oh * ow
    info = {
        "kernel": "conv_direct",
        "nnz": csr.nnz,
        "density": csr.density,
        "macs_sparse": csr.nnz * positions,
        "macs_dense": o * ci * kh * kw * positions,
        "bytes": int(
            vals.nbytes + offs.nbytes + ptr.nbytes + 4 * (bn * ci * h * wd + bn * o * oh * ow)
        ),
        "weight_bytes": int(vals.nbytes + offs.nbytes + ptr.nbytes),
        "tile": tile,
        "format": csr.stats(),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_conv2d",
        consts=(vals, offs, ptr, bias_arr),
        out_shape=(bn, o, oh, ow),
        info=info,
    )


__all__ = ["LAYOUTS", "sparse_conv2d"]
