"""The row-tile direct sparse convolution on x86: for stride-1 convs over few input channels
(a network's first layer: the 1-channel spectrogram of a keyword-spotting CNN).

Why it exists: with one input channel the other direct convs spend their time around the
multiply-adds, not in them. On GSC's first conv (1 -> 64, 5x5, 32x32 in, 48% of weights kept)
the flat kernel writes its flat position tiles to a scratch and copies them into NCHW rows (a
quarter of its time) and spills an accumulator in its second tile, and the tap-plane kernel
took 20 us as well; this one takes 14 us (Xeon, AVX-512, one core), its loop the aligned
load + FMAs alone.

Per sample:

1. **Planes.** The (zero-padded) input is re-laid as one plane per (channel, tap column kw):
   row ``r`` of plane ``(c, kw)`` holds ``x_padded[c, r, v + kw]`` at column ``v``, for the
   ``PW`` columns of the output width rounded up to whole vectors, then a ``MARGIN`` gap. Each
   input row is copied whole (one vector store) at its shift; the values that fall before
   column 0 or past the output land in the gap or in lanes that are dropped. Rows start on
   64-byte boundaries, so every load of the loop below is one aligned vector. Only a padded
   conv zero-fills the planes first.
2. **Row tiles.** For each output channel ``o`` and block of ``rows`` output rows, ``rows x
   PW / lanes`` accumulators stay in registers while the non-zero weights of ``o`` (stored as
   CSR over ``(c, kh, kw)`` with each one's plane offset) stream by: one broadcast and one
   aligned load + FMA per accumulator and weight.
3. **Epilogue.** Bias and activation, stored straight into the NCHW output rows (the lanes past
   ``OW`` of a row's last vector are dropped), with no scratch in between.

The planes take ``C * KW * (H + pads) * (PW + MARGIN)`` floats: 30 KiB for GSC's first conv.
Wide inputs over many channels belong to the flat and tap-plane kernels; ``fits_rows`` says
where this one applies.
"""

# No ``from __future__ import annotations``: TVMScript evaluates the PrimFunc's buffer
# annotations from the closure, and postponed (string) annotations do not capture the names
# used only there (the index dtypes), which then fail to parse.
import numpy as np
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.csr import CSR
from ..target import num_cores, vector_lanes
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const as _bias_const
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish

# Floats between two plane rows' PW columns: whole input rows are copied at every kw shift, so
# up to KW - 1 values land before a row's column 0 or after its last column, in this gap (never
# read). A multiple of 16 keeps every row 64-byte aligned.
MARGIN = 16
# Planes larger than this are not this kernel's business (they would not stay in L1/L2).
MAX_PLANE_BYTES = 256 << 10
# Registers a row tile may hold as accumulators: 32 zmm / 16 ymm, less the broadcast weight.
_MAX_VECTORS = {16: 28, 8: 14, 4: 14}


def row_geometry(ow: int, lanes: int) -> tuple[int, int]:
    """``(PW, segments)``: the output row width in whole vectors and the vectors per row."""
    segs = -(-ow // lanes)
    return segs * lanes, segs


def plane_bytes(x_shape, kernel_hw, padding, lanes: int) -> int:
    """Bytes of one sample's planes."""
    _, c, h, wd = (int(d) for d in x_shape)
    kh, kw = kernel_hw
    top, left, bottom, right = padding
    ow = wd + left + right - kw + 1
    pw, _ = row_geometry(max(ow, 1), lanes)
    return 4 * c * kw * (h + top + bottom) * (pw + MARGIN)


def fits_rows(x_shape, kernel_hw, conv: ConvAttrs, lanes: int) -> bool:
    """Stride 1, no dilation, one group, output rows at least one vector wide, planes small."""
    if tuple(conv.strides) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        return False
    _, _, _, wd = x_shape
    _, left, _, right = conv.padding
    ow = wd + left + right - kernel_hw[1] + 1
    return (
        ow >= lanes
        and kernel_hw[1] <= MARGIN + 1
        and plane_bytes(x_shape, kernel_hw, conv.padding, lanes) <= MAX_PLANE_BYTES
    )


def max_rows(segments: int, lanes: int) -> int:
    """The most output rows of ``segments`` vectors whose accumulators fit the registers."""
    return max(1, _MAX_VECTORS.get(lanes, 14) // segments)


def default_rows(oh: int, segments: int, lanes: int) -> int:
    """``max_rows`` evened out over ``oh`` (30 rows at 14 a tile: three tiles of 10)."""
    most = max_rows(segments, lanes)
    blocks = -(-oh // most)
    return -(-oh // blocks)


def _tile_macro(nrows: int, segs: int, stride: int, lanes: int, ow: int, o: int, oh: int,
                has_bias: bool, activation: str | None):  # fmt: skip
    """Macro: one tile of ``nrows`` output rows of channel ``oc`` from row ``r0``: accumulate
    over the channel's non-zeros, then bias, activation and the NCHW store."""
    nacc = nrows * segs
    hb = int(has_bias)  # without a bias, bias[0] is a 0 placeholder
    last = ow - (segs - 1) * lanes  # valid lanes of a row's last vector
    keep = list(range(last))

    @T.macro
    def tile(planes, vals, offs, ptr, bias, yf, nb, oc, r0):
        acc = T.alloc_buffer((nacc * lanes,), "float32", scope="global")
        for u in T.unroll(nacc):
            acc[T.ramp(u * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        for j in range(T.Cast("int32", ptr[oc]), T.Cast("int32", ptr[oc + 1])):
            w: T.let = T.broadcast(vals[j], lanes)
            at: T.let = T.Cast("int32", offs[j]) + r0 * stride
            for r in T.unroll(nrows):
                for s in T.unroll(segs):
                    acc[T.ramp((r * segs + s) * lanes, 1, lanes)] = (
                        acc[T.ramp((r * segs + s) * lanes, 1, lanes)]
                        + w * planes[T.ramp(at + r * stride + s * lanes, 1, lanes)]
                    )
        bv: T.let = T.broadcast(bias[oc * hb], lanes)
        for r in T.unroll(nrows):
            row: T.let = ((nb * o + oc) * oh + r0 + r) * ow
            for s in T.unroll(segs - 1):
                yf[T.ramp(row + s * lanes, 1, lanes)] = _epilogue(
                    acc[T.ramp((r * segs + s) * lanes, 1, lanes)] + bv, activation, lanes
                )
            full: T.let = _epilogue(
                acc[T.ramp((r * segs + segs - 1) * lanes, 1, lanes)] + bv, activation, lanes
            )
            if last == lanes:
                yf[T.ramp(row + (segs - 1) * lanes, 1, lanes)] = full
            elif last == 1:  # one valid lane: a scalar (a vector has at least 2 lanes)
                yf[row + (segs - 1) * lanes] = _epilogue(
                    acc[(r * segs + segs - 1) * lanes] + bias[oc * hb], activation
                )
            else:
                yf[T.ramp(row + (segs - 1) * lanes, 1, last)] = T.Shuffle([full], keep)

    return tile


def _rows_kernel(x_shape, o, out_hw, kernel_hw, pads, nnz, idx_dtype, ptr_dtype, nbias,
                 has_bias, activation, rows, lanes, parallel):  # fmt: skip
    bn, ci, h, wd = x_shape
    oh, ow = out_hw
    kh_, kw_ = kernel_hw
    top, left, bottom, _ = pads
    hp = h + top + bottom
    pw, segs = row_geometry(ow, lanes)
    stride = pw + MARGIN
    plane = hp * stride
    nplanes = ci * kw_
    padded = any(pads)
    full_blocks, rest = oh // rows, oh % rows
    tile_full = _tile_macro(rows, segs, stride, lanes, ow, o, oh, has_bias, activation)
    tile_rest = _tile_macro(max(rest, 1), segs, stride, lanes, ow, o, oh, has_bias, activation)
    channels = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((max(nnz, 1),), "float32"),
        offs: T.Buffer((max(nnz, 1),), idx_dtype),
        ptr: T.Buffer((o + 1,), ptr_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        yf = T.decl_buffer((bn * o * oh * ow,), "float32", data=y.data)
        planes = T.alloc_buffer((nplanes * plane + MARGIN,), "float32", scope="global")
        for nb in range(bn):
            # Step 1. Planes: zeros where the padding is, then every input row copied whole at
            # each kw shift (its ends land in the row's margins or in dropped lanes).
            if padded:
                for i in range(nplanes * plane // lanes):
                    planes[T.ramp(i * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
            for c in range(ci):
                for k in T.unroll(kw_):
                    for r in range(h):
                        for u in T.vectorized(wd):
                            planes[
                                (c * kw_ + k) * plane + (r + top) * stride + MARGIN + u + left - k
                            ] = x[nb, c, r, u]
            # Step 2 and 3. Row tiles per output channel, stored into NCHW.
            for oc in channels(o):
                for blk in range(full_blocks):
                    tile_full(planes, vals, offs, ptr, bias, yf, nb, oc, blk * rows)
                if rest > 0:
                    tile_rest(planes, vals, offs, ptr, bias, yf, nb, oc, full_blocks * rows)

    return kernel


def sparse_conv2d_rows(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    rows: int | None = None, parallel: bool = True,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, stride 1 (see the module docstring).

    Knobs: ``rows`` output rows per register tile (None: as many as the registers hold, evened
    over the output height), ``parallel`` output channels over the cores (when there are
    several). Consts: ``(vals, plane offsets, row pointers, bias)``.
    """
    weight, dims = checked_groups1_conv(
        "sparse_conv2d_rows", x_shape, weight_oihw, conv, activation
    )
    (bn, ci, h, _), (o, kh, kw) = dims.x, dims.kernel
    lanes = vector_lanes(target if target is not None else "llvm")
    if not fits_rows(dims.x, (kh, kw), conv, lanes):
        raise ValueError(
            f"sparse_conv2d_rows takes stride-1 undilated convs with output rows >= {lanes} "
            f"wide and planes <= {MAX_PLANE_BYTES} bytes; got input {dims.x}, kernel {(kh, kw)}, "
            f"strides {dims.strides}, dilation {dims.dilation}"
        )
    (oh, ow), pads = dims.out_hw, dims.pads
    hp = h + pads[0] + pads[2]
    pw, segs = row_geometry(ow, lanes)
    if rows is None:
        rows = default_rows(oh, segs, lanes)
    if not 1 <= rows <= oh:
        raise ValueError(f"rows must be in [1, {oh}], got {rows}")
    csr = CSR.from_dense(weight.reshape(o, ci * kh * kw))
    tap = csr.indices.astype(np.int64)
    c_of, kh_of, kw_of = tap // (kh * kw), tap // kw % kh, tap % kw
    offsets = ((c_of * kw + kw_of) * hp + kh_of) * (pw + MARGIN) + MARGIN
    offs = as_index(offsets, max(int(offsets.max(initial=0)), 1))
    ptr = as_index(csr.indptr, max(csr.nnz, 1))
    vals = csr.data.astype(np.float32) if csr.nnz else np.zeros(1, np.float32)
    if not csr.nnz:
        offs = np.zeros(1, offs.dtype)
    bias_arr, has_bias = _bias_const(bias, o)
    parallel = bool(parallel) and num_cores(target) > 1 and o > 1
    func = _rows_kernel(
        dims.x, o, (oh, ow), (kh, kw), pads, csr.nnz, str(offs.dtype), str(ptr.dtype),
        bias_arr.size, has_bias, activation, int(rows), lanes, parallel,
    )  # fmt: skip
    macs = bn * csr.nnz * oh * ow
    info = {
        "kernel": "sparse_conv2d_rows",
        "rows": int(rows),
        "lanes": lanes,
        "segments": segs,
        "nnz": int(csr.nnz),
        "macs_sparse": int(macs),
        "lanes_computed": int(bn * csr.nnz * oh * pw),
        "plane_bytes": plane_bytes(dims.x, (kh, kw), pads, lanes),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_conv2d_rows",
        consts=(vals, offs, ptr, bias_arr),
        out_shape=(bn, o, oh, ow),
        info=info,
    )


__all__ = [
    "default_rows",
    "fits_rows",
    "max_rows",
    "plane_bytes",
    "row_geometry",
    "sparse_conv2d_rows",
]
