"""Direct sparse convolution for x86 CPUs (AVX2 + FMA), as block-free TIR.

``sparse_conv2d`` is a direct sparse convolution: every non-zero ``w[o, c, kh, kw]`` becomes an
offset into a re-laid input, and a register tile of output positions accumulates
``w * input[offset + p]`` over contiguous positions ``p``. No im2col buffer. Three layouts:

- ``flat`` (default with a unit row stride): output positions ``oh * OW + ow`` with no padding
  lanes, over per-(channel, kw) planes of the input; the first ``8 * (OW // 8)`` columns are
  their own region so their loads are aligned (see ``_flat_kernel``).
- ``wide``: whole output rows over the padded input width (``Wp - OW`` lanes per row computed
  and dropped, unaligned loads); the kernel before ``flat``, kept for comparison.
- ``tiled``: (rows, cols) tiles of outputs, any strides (the fallback).
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.csr import CSR
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .kernel import finish as _finish


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


def _conv_kernel(x_shape, o, out_hw, padded_hw, pads, strides, nnz, idx_dtype, ptr_dtype, nbias,
                 has_bias, activation, tile, parallel):  # fmt: skip
    """Direct sparse conv: out[n, o, tile] += w * xp_flat[n, offset(w) + position(tile)]."""
    bn, ci, h, wd = x_shape
    oh, ow = out_hw
    hp, wp = padded_hw
    top, left = pads
    sh, sw = strides
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
    need_pad = (hp, wp) != (h, wd)
    rows = T.parallel if parallel else T.serial
    vec = T.vectorized if sw == 1 else T.unroll

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
        for no in rows(bn * o):
            nb: T.let = no // o
            oc: T.let = no % o
            lo: T.let = T.Cast("int32", ptr[oc])
            hi: T.let = T.Cast("int32", ptr[oc + 1])
            if wide:
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
                        yw[T.ramp(no * plane + tr * th * wp + u * 8, 1, 8)] = accw[
                            T.ramp(u * 8, 1, 8)
                        ]
                for rr in range(oh):
                    for v in range(ow):
                        if has_bias:
                            y[nb, oc, rr, v] = _epilogue(
                                yw[no * plane + rr * wp + v] + bias[oc], activation
                            )
                        else:
                            y[nb, oc, rr, v] = _epilogue(yw[no * plane + rr * wp + v], activation)
            else:
                for tr in range(oh // th):
                    for tcol in range(ow // tw):
                        acc = T.alloc_buffer((th * tw,), "float32", scope="global")
                        for lane in T.vectorized(th * tw):
                            acc[lane] = T.float32(0)
                        for j in range(lo, hi):
                            w: T.let = vals[j]
                            base: T.let = (
                                nb * chw
                                + T.Cast("int32", offs[j])
                                + tr * th * sh * wp
                                + tcol * tw * sw
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

    return kernel


LAYOUTS = ("flat", "wide", "tiled")
# Bytes of L1 the (channel, kw) planes of one channel block may take (Zen 3: 32 KiB L1d).
_L1_PLANES = 16 << 10


def _flat_tiles(va: int, vb: int, max_vectors: int) -> list[tuple[int, int, int, int, int]]:
    """Register tiles over the two regions: ``(count, na, nb, a0, b0)`` = ``count`` tiles of
    ``na`` region-A vectors (from vector ``a0 + t * na``) and ``nb`` region-B vectors (from
    ``b0 + t * nb``). Whole-A tiles first, then one tile with A's rest and all of B when it fits
    in ``max_vectors`` (cnn2: one 10 + 3 tile), else A's rest and B's own tiles."""
    total = va + vb
    size = -(-total // -(-total // max_vectors))
    k = va // size
    rest = va - k * size
    out = [(k, size, 0, 0, 0)] if k else []
    if rest + vb <= max_vectors:
        return out + ([(1, rest, vb, k * size, 0)] if rest + vb else [])
    if rest:
        out.append((1, rest, 0, k * size, 0))
    nbt = -(-vb // max_vectors)
    bsize = -(-vb // nbt)
    kb = vb // bsize
    out.append((kb, 0, bsize, 0, 0))
    if vb - kb * bsize:
        out.append((1, 0, vb - kb * bsize, 0, kb * bsize))
    return out


def _tile_macro(na: int, nb: int, wa: int, wb: int, base_b: int, off_b: int):
    """Macro: one register tile of ``na`` + ``nb`` 8-wide accumulators over a segment of taps.

    Tap index ``q`` (row units) reads region A at ``q * wa + 8 * (a + u)`` (aligned: ``wa`` is a
    multiple of 8) and region B at ``base_b + q * wb + 8 * (b + u)``; the sums start at 0 on the
    first channel block and are kept in ``ya`` (region B at ``off_b``) between blocks.
    """
    n = na + nb

    @T.macro
    def tile(xs, ya, vals, offs, lo, hi, first, row, a, b):
        # 8-wide pieces only, so LLVM keeps them in ymm registers
        acc = T.alloc_buffer((n * 8,), "float32", scope="global")
        if first:
            for u in T.unroll(n):
                acc[T.ramp(u * 8, 1, 8)] = T.broadcast(T.float32(0), 8)
        else:
            if na > 0:
                for u in T.unroll(na):
                    acc[T.ramp(u * 8, 1, 8)] = ya[T.ramp(row + (a + u) * 8, 1, 8)]
            if nb > 0:
                for u in T.unroll(nb):
                    acc[T.ramp((na + u) * 8, 1, 8)] = ya[T.ramp(row + off_b + (b + u) * 8, 1, 8)]
        for j in range(lo, hi):
            ww: T.let = T.broadcast(vals[j], 8)
            q: T.let = T.Cast("int32", offs[j])
            if na > 0:
                pa: T.let = q * wa + a * 8
                for u in T.unroll(na):
                    acc[T.ramp(u * 8, 1, 8)] = (
                        acc[T.ramp(u * 8, 1, 8)] + ww * xs[T.ramp(pa + u * 8, 1, 8)]
                    )
            if nb > 0:
                pb: T.let = base_b + q * wb + b * 8
                for u in T.unroll(nb):
                    acc[T.ramp((na + u) * 8, 1, 8)] = (
                        acc[T.ramp((na + u) * 8, 1, 8)] + ww * xs[T.ramp(pb + u * 8, 1, 8)]
                    )
        if na > 0:
            for u in T.unroll(na):
                ya[T.ramp(row + (a + u) * 8, 1, 8)] = acc[T.ramp(u * 8, 1, 8)]
        if nb > 0:
            for u in T.unroll(nb):
                ya[T.ramp(row + off_b + (b + u) * 8, 1, 8)] = acc[T.ramp((na + u) * 8, 1, 8)]

    return tile


def _flat_kernel(x_shape, o, out_hw, padded_hw, pads, strides, dilation, kw_, nnz, idx_dtype,
                 seg_dtype, nbias, has_bias, activation, vectors, cblock, oblock,
                 parallel):  # fmt: skip
    """Direct sparse conv over flat output positions, the output columns split in two regions.

    Region A: the first ``wa = 8 * (OW // 8)`` columns; region B: the last ``wb = OW % 8``. Per
    sample, the padded input is re-laid as one plane per (channel, tap column kw) and region:
    ``xs_R[c, kw, r * w_R + v] = xp[c, r, (c0_R + v) * sw + kw * dw]`` (``Hq`` rows, ``Hp``
    rounded up to even). Tap ``(c, kh, kw)`` with ``q = (c * KW + kw) * Hq + kh * dh`` then
    reads the contiguous run ``q * w_R + p`` for all of a region's ``OH * w_R`` positions: region
    A's loads are all 32-byte aligned (``w_A`` and ``Hq * w_A`` are multiples of 8 and 16), and
    only region B's few vectors may cross a cache line; one index serves both. cnn2 (OW = 10):
    10 aligned + 3 vectors for 100 outputs (the wide tile computes 18, and a single flat region
    splits every other load of 3 taps in 5 across two cache lines). The non-zeros of output
    channel ``oc`` are split into ``cblock``-channel segments, and a group of ``oblock`` output
    channels runs one segment each before the next, so the block's planes stay in L1.
    """
    bn, ci, h, wd = x_shape
    oh, ow = out_hw
    hp, _ = padded_hw
    need_pad = tuple(padded_hw) != (h, wd)
    top, left = pads
    _, sw = strides
    _, dw = dilation
    npos = oh * ow
    wa, wb = ow // 8 * 8, ow % 8
    hq = hp + hp % 2
    base_b = ci * kw_ * hq * wa
    total = base_b + ci * kw_ * hq * wb
    va, vb = oh * wa // 8, -(-oh * wb // 8)
    off_b = va * 8
    span = (va + vb) * 8
    # TVMScript cannot loop over a Python list of macros: four fixed slots, unused ones empty
    kinds = _flat_tiles(va, vb, vectors)
    kinds += [(0, 1, 0, 0, 0)] * (4 - len(kinds))
    (c0, na0, nb0, a0, b0), (c1, na1, nb1, a1, b1) = kinds[0], kinds[1]
    (c2, na2, nb2, a2, b2), (c3, na3, nb3, a3, b3) = kinds[2], kinds[3]
    tile0, tile1, tile2, tile3 = (
        _tile_macro(na, nb, wa, wb, base_b, off_b) for _, na, nb, _, _ in kinds
    )
    hb = int(has_bias)  # without a bias, bias[0] is a 0 placeholder
    ncb = -(-ci // cblock)
    nob = -(-o // oblock)
    nval = max(nnz, 1)
    vec_copy = sw == 1 and not need_pad
    rows = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        offs: T.Buffer((nval,), idx_dtype),
        seg: T.Buffer((o * ncb + 1,), seg_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        yf = T.decl_buffer((bn * o * npos,), "float32", data=y.data)
        xs = T.alloc_buffer((total + 8,), "float32", scope="global")
        ya = T.alloc_buffer((o * span,), "float32", scope="global")
        for e in T.vectorized(8):
            xs[total + e] = T.float32(0)
        for nb in range(bn):
            # Step 1. One plane per (channel, kw) and region: the input rows shifted by kw.
            for ck in rows(ci * kw_):
                c: T.let = ck // kw_
                k: T.let = ck % kw_
                for r in range(hq):
                    if vec_copy:
                        if r < hp:
                            if wa > 0:
                                for v in T.vectorized(wa):
                                    xs[(ck * hq + r) * wa + v] = x[nb, c, r, v + k * dw]
                            if wb > 0:
                                for v in range(wb):
                                    xs[base_b + (ck * hq + r) * wb + v] = x[
                                        nb, c, r, wa + v + k * dw
                                    ]
                        else:
                            for v in range(ow):
                                if v < wa:
                                    xs[(ck * hq + r) * wa + v] = T.float32(0)
                                else:
                                    xs[base_b + (ck * hq + r) * wb + v - wa] = T.float32(0)
                    else:
                        for v in range(ow):
                            val: T.let = T.if_then_else(
                                top <= r
                                and r < top + h
                                and left <= v * sw + k * dw
                                and v * sw + k * dw < left + wd,
                                x[
                                    nb,
                                    c,
                                    T.min(T.max(r - top, 0), h - 1),
                                    T.min(T.max(v * sw + k * dw - left, 0), wd - 1),
                                ],
                                T.float32(0),
                            )
                            if v < wa:
                                xs[(ck * hq + r) * wa + v] = val
                            else:
                                xs[base_b + (ck * hq + r) * wb + v - wa] = val
            # Step 2. Output-channel groups; in each, channel blocks outside output channels.
            for ob in rows(nob):
                for cb in range(ncb):
                    for ol in range(oblock):
                        if ob * oblock + ol < o:
                            oc: T.let = ob * oblock + ol
                            lo: T.let = T.Cast("int32", seg[oc * ncb + cb])
                            hi: T.let = T.Cast("int32", seg[oc * ncb + cb + 1])
                            for t in range(c0):
                                tile0(xs, ya, vals, offs, lo, hi, cb == 0, oc * span,
                                        a0 + t * na0, b0 + t * nb0)  # fmt: skip
                            for t in range(c1):
                                tile1(xs, ya, vals, offs, lo, hi, cb == 0, oc * span,
                                        a1 + t * na1, b1 + t * nb1)  # fmt: skip
                            for t in range(c2):
                                tile2(xs, ya, vals, offs, lo, hi, cb == 0, oc * span,
                                        a2 + t * na2, b2 + t * nb2)  # fmt: skip
                            for t in range(c3):
                                tile3(xs, ya, vals, offs, lo, hi, cb == 0, oc * span,
                                        a3 + t * na3, b3 + t * nb3)  # fmt: skip
                # Step 3. Bias and activation into NCHW: region A 8 at a time, then region B.
                for ol in range(oblock):
                    if ob * oblock + ol < o:
                        oc: T.let = ob * oblock + ol
                        bv: T.let = bias[oc * hb]
                        for r in range(oh):
                            out: T.let = (nb * o + oc) * npos + r * ow
                            if wa > 0:
                                for u in range(wa // 8):
                                    yf[T.ramp(out + u * 8, 1, 8)] = _epilogue(
                                        ya[T.ramp(oc * span + r * wa + u * 8, 1, 8)]
                                        + T.broadcast(bv, 8),
                                        activation,
                                        8,
                                    )
                            if wb > 0:
                                for v in range(wb):
                                    yf[out + wa + v] = _epilogue(
                                        ya[oc * span + off_b + r * wb + v] + bv, activation
                                    )

    return kernel


def _flat_consts(csr: CSR, ci: int, k_hw: tuple[int, int], dh: int, hq: int, cblock: int):
    """(offs, seg) for the flat kernel: each non-zero's tap row ``(c * KW + kw) * Hq + kh * dh``,
    and per output channel the start of each ``cblock``-channel segment of its non-zeros (CSR
    columns are sorted by channel, so a segment is a contiguous run)."""
    kh, kw = k_hw
    o = csr.shape[0]
    cols = csr.indices.astype(np.int64)
    c_idx, rem = cols // (kh * kw), cols % (kh * kw)
    offsets = (c_idx * kw + rem % kw) * hq + (rem // kw) * dh
    ncb = -(-ci // cblock)
    rows = np.repeat(np.arange(o), np.diff(csr.indptr.astype(np.int64)))
    keys = rows * ncb + c_idx // cblock  # sorted: row-major, channel-sorted CSR
    seg = np.searchsorted(keys, np.arange(o * ncb + 1), side="left")
    return as_index(offsets, max(ci * kw * hq - 1, 0)), as_index(seg, max(csr.nnz, 1))


def _flat_call(x_shape, csr, k_hw, out_hw, padded_hw, pads, strides, dilation, bias_arr,
               has_bias, activation, vectors, cblock, oblock, parallel) -> KernelCall:  # fmt: skip
    """The flat-layout kernel (see ``_flat_kernel``) and its constants."""
    bn, ci, _, _ = x_shape
    kh, kw = k_hw
    oh, ow = out_hw
    o = csr.shape[0]
    if strides[0] != 1:
        raise ValueError(f"the flat layout needs a unit row stride, got strides {strides}")
    if vectors < 1 or oblock < 1 or (cblock is not None and cblock < 1):
        raise ValueError(f"vectors, cblock, oblock must be >= 1: {vectors}, {cblock}, {oblock}")
    hq = padded_hw[0] + padded_hw[0] % 2
    if cblock is None:
        cblock = max(_L1_PLANES // (4 * kw * hq * ow), 1)
    cblock = min(cblock, ci)
    offs, seg = _flat_consts(csr, ci, k_hw, dilation[0], hq, cblock)
    vals = np.asarray(csr.data, dtype=np.float32)
    if vals.size == 0:
        vals, offs = np.zeros(1, np.float32), np.zeros(1, offs.dtype)
    func = _flat_kernel(
        x_shape, o, out_hw, padded_hw, pads, strides, dilation, kw, csr.nnz, str(offs.dtype),
        str(seg.dtype), bias_arr.size, has_bias, activation, vectors, cblock, oblock, parallel,
    )  # fmt: skip
    positions = bn * oh * ow
    weight_bytes = int(vals.nbytes + offs.nbytes + seg.nbytes)
    info = {
        "kernel": "conv_direct",
        "layout": "flat",
        "nnz": csr.nnz,
        "density": csr.density,
        "macs_sparse": csr.nnz * positions,
        "macs_dense": o * ci * kh * kw * positions,
        "bytes": weight_bytes + 4 * (positions * o + int(np.prod(x_shape))),
        "weight_bytes": weight_bytes,
        "tile": (vectors, cblock, oblock),
        "register_tiles": _flat_tiles(oh * (ow // 8), -(-oh * (ow % 8) // 8), vectors),
        "format": csr.stats(),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_conv2d",
        consts=(vals, offs, seg, bias_arr),
        out_shape=(bn, o, oh, ow),
        info=info,
    )


def sparse_conv2d(
    x_shape: tuple[int, int, int, int],
    weight_oihw: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    activation: str | None = None,
    target=None,
    *,
    tile: tuple[int, int] | None = None,
    parallel: bool = True,
    layout: str | None = None,
    vectors: int = 14,
    cblock: int | None = None,
    oblock: int = 8,
) -> KernelCall:
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, ``padding=(top, left, bottom, right)``.

    ``layout`` is one of ``LAYOUTS`` (module docstring); None picks ``flat`` when the row stride
    is 1 and no ``tile`` is given, else the tiled kernel (the wide tile where it applies).
    ``flat`` knobs: ``vectors`` 8-wide accumulators per register tile (at most 15 fit the 16
    ymm registers with the broadcast weight), ``cblock`` input channels per L1 block (default:
    their planes fit 16 KiB), ``oblock`` output channels that share a block before the next.
    Consts: ``(vals, tap rows, segment starts, bias)``.
    ``wide`` / ``tiled``: each non-zero weight is stored with its flat offset into the padded
    input, ``c * Hp * Wp + kh * dh * Wp + kw * dw``; ``tile=(rows, cols)`` of output positions
    per register tile (both must divide the output); ``cols=0`` asks for ``rows`` whole output
    rows computed over the padded width (see ``_wide_rows``). Consts: ``(vals, offsets, row
    pointers, bias)``.
    """
    _check_activation(activation)
    if groups != 1:
        raise ValueError(f"sparse_conv2d supports groups=1 only, got groups={groups}")
    weight = _as_weight(weight_oihw, 4)
    bn, ci, h, wd = (int(s) for s in x_shape)
    o, wci, kh, kw = weight.shape
    if wci != ci:
        raise ValueError(f"weight has {wci} input channels, input has {ci}")
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    hp, wp = h + top + bottom, wd + left + right
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"empty conv output for input {x_shape} and kernel {(kh, kw)}")
    csr = CSR.from_dense(weight.reshape(o, ci * kh * kw))
    bias_arr, has_bias = _bias_const(bias, o)
    if layout is None:
        layout = "flat" if sh == 1 and tile is None else None
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "flat":
        return _flat_call(
            (bn, ci, h, wd), csr, (kh, kw), (oh, ow), (hp, wp), (top, left), (sh, sw), (dh, dw),
            bias_arr, has_bias, activation, vectors, cblock, oblock, parallel,
        )  # fmt: skip
    if layout == "wide" and tile is None:
        tile = (_wide_rows(oh, wp, sh, sw), 0)
    if layout == "tiled" and tile is None:
        tile = _conv_tiles(oh, ow)
    cols = csr.indices.astype(np.int64)
    c_idx, rem = cols // (kh * kw), cols % (kh * kw)
    offsets = c_idx * hp * wp + (rem // kw) * dh * wp + (rem % kw) * dw
    offs = as_index(offsets, max(ci * hp * wp - 1, 0))
    vals = np.asarray(csr.data, dtype=np.float32)
    if vals.size == 0:
        vals, offs = np.zeros(1, np.float32), np.zeros(1, offs.dtype)
    ptr = np.ascontiguousarray(csr.indptr)
    if tile is None:
        wide_rows = _wide_rows(oh, wp, sh, sw)
        tile = (wide_rows, 0) if wide_rows else _conv_tiles(oh, ow)
    tile = tuple(tile)
    if tile[1] == 0 and (_wide_rows(oh, wp, sh, sw, 1 << 30) == 0 or oh % max(tile[0], 1)):
        raise ValueError(f"wide tile {tile} needs unit strides and rows dividing {oh}")
    if tile[0] < 1 or oh % tile[0] or (tile[1] and ow % tile[1]):
        raise ValueError(f"tile {tile} must divide the output {(oh, ow)}")
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
