"""Direct sparse convolution with the samples in the vector lanes, for batches (x86).

Why: a direct sparse conv is bound by L1 loads. Unstructured weights share no input vector
between two non-zeros, so every FMA loads its own. With output positions in the lanes, a
narrow output fills its vectors badly and most tap runs start off a cache line: GSC's cnn2
(10x10 outputs) loads 13 ymm per non-zero for 100 positions, about 10.5 cycles. With ``lanes``
samples in the lanes instead, every input position is exactly one aligned vector and every
lane is used, whatever the output's width. One non-zero then costs one aligned load and one FMA
per output position of the tile, for ``lanes`` samples at once.

Per group of ``lanes`` samples (the last one padded with zero samples):

1. **Transpose in**: ``xs[c, h, w, s]`` = sample ``s``'s zero-padded input. Each position of
   each channel is one vector.
2. **Output tiles**: one chunk of output channels per core. For each tile of ``rows x cols``
   output positions (one vector each) and each block of ``cblock`` input channels (their
   vectors stay in L1), every output channel of the chunk streams its non-zeros in the block.
   A non-zero is one broadcast and ``rows * cols`` aligned loads at fixed offsets from its tap.
   The sums go through ``ys[o, oh, ow, s]`` between blocks (a tile's sums of a chunk stay in
   L1), and bias + activation are applied after the last block.
3. **Transpose out** into NCHW.

The output is rounded up to whole tiles, and the input scratch is padded to match, so every
tile reads inside the scratch. The extra positions are computed and dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats.csr import CSR
from ..target import num_cores, vector_lanes
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish
from .sparse_conv_flat_x86 import channel_block_segments
from .sparse_conv_x86 import padded_offset_consts

# Accumulators a register tile may hold (32 zmm with AVX-512, 16 ymm with AVX2), leaving room
# for the broadcast weight.
MAX_VECTORS = {16: 24, 8: 12}
# Bytes of one channel block of the transposed input: what the output channels stream
# through L1 before the next block (3 channels of cnn2: 37.6 KB, measured best with 4).
BLOCK_BYTES = 40 << 10


@dataclass(frozen=True)
class BatchLanesSpec:
    """What one kernel is specialized to: shapes, index dtypes and the tile."""

    x_shape: tuple[int, int, int, int]
    o: int
    kernel_hw: tuple[int, int]
    out_hw: tuple[int, int]
    pads: tuple[int, int, int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    nnz: int
    idx_dtype: str
    ptr_dtype: str
    nbias: int
    has_bias: bool
    activation: str | None
    lanes: int
    rows: int
    cols: int
    cblock: int
    parallel: bool
    chunks: int = 1  # output-channel chunks run in parallel (one per core)

    @property
    def blocks(self) -> int:
        return -(-self.x_shape[1] // self.cblock)

    @property
    def groups(self) -> int:
        return -(-self.x_shape[0] // self.lanes)

    @property
    def out_tiled(self) -> tuple[int, int]:
        """The output rounded up to whole ``rows x cols`` tiles."""
        oh, ow = self.out_hw
        return -(-oh // self.rows) * self.rows, -(-ow // self.cols) * self.cols

    @property
    def in_extent(self) -> tuple[int, int]:
        """Rows and columns of the input scratch: the padded input, or more when the rounded
        output's taps reach past it."""
        _, _, h, wd = self.x_shape
        top, left, bottom, right = self.pads
        (ohp, owp), (kh, kw) = self.out_tiled, self.kernel_hw
        (sh, sw), (dh, dw) = self.strides, self.dilation
        return (
            max(h + top + bottom, (ohp - 1) * sh + (kh - 1) * dh + 1),
            max(wd + left + right, (owp - 1) * sw + (kw - 1) * dw + 1),
        )


def _transpose_in_macro(spec: BatchLanesSpec):
    """Macro: ``xs`` = group ``g``'s samples zero padded, one vector per (channel, position):
    a strided (gather) load of ``lanes`` samples per position. The scratch is zeroed first only
    where it has padding; samples past the batch read as 0."""
    bn, ci, h, wd = spec.x_shape
    lanes = spec.lanes
    hx, wx = spec.in_extent
    top, left, _, _ = spec.pads
    needs_zero = (hx, wx) != (h, wd)
    whole = bn % lanes == 0
    loop = T.parallel if spec.parallel else T.serial

    @T.macro
    def transpose_in(x, xs, g):
        for c in loop(ci):
            if needs_zero:
                for i in T.vectorized(hx * wx * lanes):
                    xs[c * hx * wx * lanes + i] = T.float32(0)
            for r in range(h):
                for v in range(wd):
                    if whole:
                        for s in T.vectorized(lanes):
                            xs[((c * hx + r + top) * wx + v + left) * lanes + s] = x[
                                g * lanes + s, c, r, v
                            ]
                    else:
                        for s in T.vectorized(lanes):
                            xs[((c * hx + r + top) * wx + v + left) * lanes + s] = T.if_then_else(
                                g * lanes + s < bn,
                                x[T.min(g * lanes + s, bn - 1), c, r, v],
                                T.float32(0),
                            )

    return transpose_in


def _channel_macro(spec: BatchLanesSpec):
    """Macro: output channel ``oc``'s non-zeros in channel block ``cb`` over the tile
    ``(th, tw)``. The sums start at 0 on the first block and are kept in ``ys`` between blocks
    (the tile's sums of a chunk of output channels stay in L1); after the last block, bias and
    activation are applied in ``ys``."""
    lanes, rows, cols = spec.lanes, spec.rows, spec.cols
    n = rows * cols
    ohp, owp = spec.out_tiled
    _, wx = spec.in_extent
    sh, sw = spec.strides
    ncb = spec.blocks
    last = ncb - 1
    hb = int(spec.has_bias)
    activation = spec.activation

    def at(oc, th, tw, u):
        return T.ramp(((oc * ohp + th * rows + u // cols) * owp + tw * cols + u % cols) * lanes,
                      1, lanes)  # fmt: skip

    @T.macro
    def channel(xs, ys, vals, offs, seg, bias, oc, cb, th, tw):
        acc = T.alloc_buffer((n * lanes,), "float32", scope="global")
        lo: T.let = T.Cast("int32", seg[oc * ncb + cb])
        hi: T.let = T.Cast("int32", seg[oc * ncb + cb + 1])
        if cb == 0:
            for u in T.unroll(n):
                acc[T.ramp(u * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        else:
            for u in T.unroll(n):
                acc[T.ramp(u * lanes, 1, lanes)] = ys[at(oc, th, tw, u)]
        for j in range(lo, hi):
            ww: T.let = T.broadcast(vals[j], lanes)
            base: T.let = T.Cast("int32", offs[j]) + th * rows * sh * wx + tw * cols * sw
            for u in T.unroll(n):
                acc[T.ramp(u * lanes, 1, lanes)] = (
                    acc[T.ramp(u * lanes, 1, lanes)]
                    + ww
                    * xs[T.ramp((base + u // cols * sh * wx + u % cols * sw) * lanes, 1, lanes)]
                )
        if cb < last:
            for u in T.unroll(n):
                ys[at(oc, th, tw, u)] = acc[T.ramp(u * lanes, 1, lanes)]
        else:
            bv: T.let = T.broadcast(bias[oc * hb], lanes)
            for u in T.unroll(n):
                ys[at(oc, th, tw, u)] = _epilogue(
                    acc[T.ramp(u * lanes, 1, lanes)] + bv, activation, lanes
                )

    return channel


def _transpose_out_macro(spec: BatchLanesSpec):
    """Macro: group ``g``'s valid samples and positions from ``ys`` into NCHW ``y`` (a strided
    store of ``lanes`` samples per position)."""
    bn, o, lanes = spec.x_shape[0], spec.o, spec.lanes
    oh, ow = spec.out_hw
    ohp, owp = spec.out_tiled
    whole = bn % lanes == 0
    loop = T.parallel if spec.parallel else T.serial

    @T.macro
    def transpose_out(ys, y, g):
        for oc in loop(o):
            for r in range(oh):
                for v in range(ow):
                    if whole:
                        for s in T.vectorized(lanes):
                            y[g * lanes + s, oc, r, v] = ys[((oc * ohp + r) * owp + v) * lanes + s]
                    else:
                        for s in range(lanes):
                            if g * lanes + s < bn:
                                y[g * lanes + s, oc, r, v] = ys[
                                    ((oc * ohp + r) * owp + v) * lanes + s
                                ]

    return transpose_out


def batch_lanes_kernel(spec: BatchLanesSpec) -> tvm.tirx.PrimFunc:
    """The kernel: per group of ``lanes`` samples, transpose in, run every output channel's
    tiles (channels in parallel), transpose out."""
    bn, ci, h, wd = spec.x_shape
    o, (oh, ow) = spec.o, spec.out_hw
    ohp, owp = spec.out_tiled
    hx, wx = spec.in_extent
    lanes = spec.lanes
    nval = max(spec.nnz, 1)
    ncb = spec.blocks
    rows, cols = spec.rows, spec.cols
    nob = spec.chunks
    chunk = -(-o // nob)
    loop = T.parallel if spec.parallel else T.serial
    transpose_in = _transpose_in_macro(spec)
    channel = _channel_macro(spec)
    transpose_out = _transpose_out_macro(spec)

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        offs: T.Buffer((nval,), spec.idx_dtype),
        seg: T.Buffer((o * ncb + 1,), spec.ptr_dtype),
        bias: T.Buffer((spec.nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        xs = T.alloc_buffer((ci * hx * wx * lanes,), "float32", scope="global")
        ys = T.alloc_buffer((o * ohp * owp * lanes,), "float32", scope="global")
        for g in range(spec.groups):
            transpose_in(x, xs, g)
            for ob in loop(nob):
                for th in range(ohp // rows):
                    for tw in range(owp // cols):
                        for cb in range(ncb):
                            for ol in range(chunk):
                                if ob * chunk + ol < o:
                                    channel(xs, ys, vals, offs, seg, bias, ob * chunk + ol, cb,
                                            th, tw)  # fmt: skip
            transpose_out(ys, y, g)

    return _finish(kernel)


def default_tile(out_hw: tuple[int, int], lanes: int) -> tuple[int, int]:
    """(rows, cols) of output positions per register tile: whole rows when they fit
    ``MAX_VECTORS`` (cnn2's 10-wide rows: 2 x 10), else the fewest even pieces of a row."""
    oh, ow = out_hw
    most = MAX_VECTORS[lanes]
    if ow <= most:
        rows = min(oh, most // ow)
        tiles = -(-oh // rows)
        return -(-oh // tiles), ow
    pieces = -(-ow // most)
    return 1, -(-ow // pieces)


def sparse_conv2d_batch_lanes(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    tile: tuple[int, int] | None = None, cblock: int | None = None, parallel: bool = True,
    lanes: int | None = None,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, any stride / padding / dilation, with
    the samples in the vector lanes (see the module docstring).

    Knobs: ``tile`` = (rows, cols) output positions per register tile (default:
    ``default_tile``), ``parallel`` output channels in parallel (on a multi-core target),
    ``lanes`` the vector width (default: the target's). Consts: ``(vals, tap offsets, row
    pointers, bias)``.
    """
    weight, dims = checked_groups1_conv("sparse_conv2d_batch_lanes", x_shape, weight_oihw, conv,
                                        activation)  # fmt: skip
    (bn, ci, _, _), (o, kh, kw) = dims.x, dims.kernel
    lanes = lanes or vector_lanes(target)
    if lanes not in MAX_VECTORS:
        raise ValueError(f"lanes must be one of {sorted(MAX_VECTORS)}, got {lanes}")
    rows, cols = tuple(tile) if tile is not None else default_tile(dims.out_hw, lanes)
    if not (rows >= 1 and cols >= 1 and rows * cols <= MAX_VECTORS[lanes]):
        raise ValueError(f"tile {(rows, cols)} must hold 1..{MAX_VECTORS[lanes]} vectors")
    csr = CSR.from_dense(weight.reshape(o, ci * kh * kw))
    bias_arr, has_bias = bias_const(bias, o)
    probe = BatchLanesSpec(
        dims.x, o, (kh, kw), dims.out_hw, dims.pads, dims.strides, dims.dilation, csr.nnz,
        "int32", "int32", bias_arr.size, has_bias, activation, lanes, rows, cols, 1,
        bool(parallel) and num_cores(target) > 1,
    )  # fmt: skip
    hx, wx = probe.in_extent
    if cblock is None:
        cblock = max(1, BLOCK_BYTES // (hx * wx * lanes * 4))
    if int(cblock) < 1:
        raise ValueError(f"cblock must be >= 1, got {cblock}")
    cblock = min(int(cblock), ci)
    # offsets into the scratch as into a padded input of (hx, wx), counted in vectors
    vals, offs, _ = padded_offset_consts(csr, ci, (kh, kw), (hx, wx), dims.dilation)
    ptr = channel_block_segments(csr, csr.indices.astype(np.int64) // (kh * kw), cblock, ci)
    spec = dataclasses.replace(
        probe, idx_dtype=str(offs.dtype), ptr_dtype=str(ptr.dtype), cblock=cblock,
        chunks=num_cores(target) if probe.parallel else 1,
    )  # fmt: skip
    positions = dims.out_hw[0] * dims.out_hw[1]
    weight_bytes = int(vals.nbytes + offs.nbytes + ptr.nbytes)
    info = {
        "kernel": "conv_batch_lanes",
        "nnz": csr.nnz,
        "density": csr.density,
        "macs_sparse": csr.nnz * bn * positions,
        "macs_dense": o * ci * kh * kw * bn * positions,
        "bytes": weight_bytes + 4 * (bn * positions * o + int(np.prod(dims.x))),
        "weight_bytes": weight_bytes,
        "tile": (rows, cols, lanes, cblock),
        "format": csr.stats(),
    }
    return KernelCall(
        func=batch_lanes_kernel(spec),
        name="sparse_conv2d_batch_lanes",
        consts=(vals, offs, ptr, bias_arr),
        out_shape=(bn, o) + tuple(dims.out_hw),
        info=info,
    )


__all__ = ["BatchLanesSpec", "batch_lanes_kernel", "default_tile", "sparse_conv2d_batch_lanes"]
