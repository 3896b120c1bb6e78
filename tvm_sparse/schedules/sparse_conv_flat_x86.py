"""The ``flat`` layout of the direct sparse convolution (the default with a unit row stride).

Output positions ``oh * OW + ow`` with no padding lanes, over per-(channel, kw) planes of the
input; the first ``8 * (OW // 8)`` columns are their own region so their loads are aligned.
Accumulators are 8 (AVX2) or 16 (AVX-512) lanes wide; a 16-lane vector spans two plane rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.csr import CSR
from ..target import cpu_isa, num_cores
from ._conv_dims import samples_in_parallel
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish

# Bytes of L1 the (channel, kw) planes of one channel block may take (Zen 3: 32 KiB L1d).
_L1_PLANES = 16 << 10
# Largest planes (one copy) kept twice for aligned loads (FlatConvSpec.shift).
_SHIFT_BYTES = 256 << 10
# Accumulators per register tile by vector width: 16 ymm or 32 zmm registers, less the
# broadcast weight and a load (AVX2 kept its measured 14).
DEFAULT_VECTORS = {8: 14, 16: 28}


def flat_tiles(va: int, vb: int, max_vectors: int) -> list[tuple[int, int, int, int, int]]:
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


def _tile_macro(na: int, nb: int, wa: int, wb: int, base_b: int, off_b: int, lanes: int):
    """Macro: one register tile of ``na`` + ``nb`` ``lanes``-wide accumulators over a segment
    of taps.

    Tap index ``q`` (row units) reads region A at ``q * wa + lanes * (a + u)`` (32-byte aligned:
    ``wa`` is a multiple of 8) and region B at ``base_b + q * wb + lanes * (b + u)``; the sums
    start at 0 on the first channel block and are kept in ``ya`` (region B at ``off_b``)
    between blocks.
    """
    n = na + nb

    @T.macro
    def tile(xs, ya, vals, offs, lo, hi, first, row, a, b):
        # whole-vector pieces only, so LLVM keeps them in registers
        acc = T.alloc_buffer((n * lanes,), "float32", scope="global")
        if first:
            for u in T.unroll(n):
                acc[T.ramp(u * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        else:
            if na > 0:
                for u in T.unroll(na):
                    acc[T.ramp(u * lanes, 1, lanes)] = ya[T.ramp(row + (a + u) * lanes, 1, lanes)]
            if nb > 0:
                for u in T.unroll(nb):
                    acc[T.ramp((na + u) * lanes, 1, lanes)] = ya[
                        T.ramp(row + off_b + (b + u) * lanes, 1, lanes)
                    ]
        for j in range(lo, hi):
            ww: T.let = T.broadcast(vals[j], lanes)
            q: T.let = T.Cast("int32", offs[j])
            if na > 0:
                pa: T.let = q * wa + a * lanes
                for u in T.unroll(na):
                    acc[T.ramp(u * lanes, 1, lanes)] = (
                        acc[T.ramp(u * lanes, 1, lanes)] + ww * xs[T.ramp(pa + u * lanes, 1, lanes)]
                    )
            if nb > 0:
                pb: T.let = base_b + q * wb + b * lanes
                for u in T.unroll(nb):
                    acc[T.ramp((na + u) * lanes, 1, lanes)] = (
                        acc[T.ramp((na + u) * lanes, 1, lanes)]
                        + ww * xs[T.ramp(pb + u * lanes, 1, lanes)]
                    )
        if na > 0:
            for u in T.unroll(na):
                ya[T.ramp(row + (a + u) * lanes, 1, lanes)] = acc[T.ramp(u * lanes, 1, lanes)]
        if nb > 0:
            for u in T.unroll(nb):
                ya[T.ramp(row + off_b + (b + u) * lanes, 1, lanes)] = acc[
                    T.ramp((na + u) * lanes, 1, lanes)
                ]

    return tile


@dataclass(frozen=True)
class FlatConvSpec:
    """What one flat-layout kernel is specialized to: shapes, packing dtypes and knobs.

    ``x_shape`` NCHW, ``o`` output channels, ``padded_hw`` the padded input's (Hp, Wp), ``pads``
    (top, left), ``kw`` the filter width; ``vectors`` ``lanes``-wide accumulators per register
    tile, ``cblock`` input channels per L1 block, ``oblock`` output channels sharing a block.
    The planes' rows stay 8 wide in region A (32-byte aligned runs) whatever ``lanes`` is: with
    16 lanes a vector spans two rows.
    """

    x_shape: tuple[int, int, int, int]
    o: int
    out_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    pads: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    kw: int
    nnz: int
    idx_dtype: str
    seg_dtype: str
    nbias: int
    has_bias: bool
    activation: str | None
    vectors: int
    cblock: int
    oblock: int
    parallel: bool
    # samples in parallel, each with its own scratch, and serial loops inside: at batch 64
    # the output-channel groups of one sample (~70 us of work) split over two threads ran
    # 1.07x faster than one thread; whole samples per thread scale with the cores
    batch_parallel: bool = False
    lanes: int = 8

    @property
    def regions(self) -> tuple[int, int]:
        """(wa, wb): output columns of region A (whole vectors) and region B (the rest)."""
        ow = self.out_hw[1]
        return ow // 8 * 8, ow % 8

    @property
    def hq(self) -> int:
        """Rows of a plane: Hp rounded up to even (``Hq * wa`` is then a multiple of 16)."""
        hp = self.padded_hw[0]
        return hp + hp % 2

    @property
    def plane_rows(self) -> int:
        """Rows of all (channel, kw) planes of one region, one copy."""
        return self.x_shape[1] * self.kw * self.hq

    @property
    def shift(self) -> int:
        """Plane rows between the two copies of the planes (0: one copy).

        With 16 lanes and 8-float plane rows (``wa % 16 == 8``, e.g. GSC's cnn2 at OW 10) a
        tap on an odd plane row would load every region-A vector across two cache lines. The
        planes are then kept twice, the second copy ``shift`` rows later (``shift`` odd), and
        an odd tap row ``q`` is stored as ``q + shift``: its vectors start on 64-byte
        boundaries, and the kernel's addressing is unchanged. GSC's cnn2 alone: 55.6 -> 53-54
        us (Xeon, AVX-512). Only where one copy of the planes takes at most ``_SHIFT_BYTES``:
        the copy doubles the scratch, which larger layers would push out of L2."""
        one_copy = 4 * self.plane_rows * sum(self.regions)
        if self.lanes == 16 and self.regions[0] % 16 == 8 and one_copy <= _SHIFT_BYTES:
            return self.plane_rows + 1  # Hq even: odd
        return 0

    @property
    def base_b(self) -> int:
        """Where region B's planes start in the scratch (64-byte aligned)."""
        return (2 * self.shift if self.shift else self.plane_rows) * self.regions[0]

    @property
    def total(self) -> int:
        """Floats of all planes of one sample (both copies)."""
        return self.base_b + (self.shift + self.plane_rows) * self.regions[1]

    @property
    def vectors_ab(self) -> tuple[int, int]:
        """(va, vb): vectors of region A and of region B over all output rows (a region's last
        vector may run past its outputs into lanes that are computed and dropped)."""
        oh, lanes = self.out_hw[0], self.lanes
        wa, wb = self.regions
        return -(-oh * wa // lanes), -(-oh * wb // lanes)

    @property
    def scratch_bytes(self) -> int:
        """Bytes of one sample's scratch: the (channel, kw) planes and the sums."""
        va, vb = self.vectors_ab
        return 4 * (self.total + self.lanes + self.o * (va + vb) * self.lanes)

    @property
    def loop(self):
        """The loop kind inside one sample: serial when samples run in parallel."""
        return T.parallel if self.parallel and not self.batch_parallel else T.serial

    @property
    def sample_loop(self):
        """The loop kind over the samples (each allocates its own scratch)."""
        return T.parallel if self.batch_parallel else T.serial


def _relayout_macro(spec: FlatConvSpec):
    """Macro: step 1, one plane per (channel, kw) and region: the input rows shifted by kw."""
    _, ci, h, wd = spec.x_shape
    ow = spec.out_hw[1]
    hp = spec.padded_hw[0]
    need_pad = tuple(spec.padded_hw) != (h, wd)
    top, left = spec.pads
    sw, dw, kw_ = spec.strides[1], spec.dilation[1], spec.kw
    wa, wb = spec.regions
    hq, base_b, shift = spec.hq, spec.base_b, spec.shift
    vec_copy = sw == 1 and not need_pad
    rows = spec.loop

    @T.macro
    def relayout(x, xs, nb):
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
                                xs[base_b + (ck * hq + r) * wb + v] = x[nb, c, r, wa + v + k * dw]
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

            if shift > 0:  # the second copy (see FlatConvSpec.shift)
                for e in range(hq * wa):
                    xs[shift * wa + ck * hq * wa + e] = xs[ck * hq * wa + e]
                for e in range(hq * wb):
                    xs[base_b + shift * wb + ck * hq * wb + e] = xs[base_b + ck * hq * wb + e]

    return relayout


def _channel_group_macro(spec: FlatConvSpec):
    """Macro: step 2 for output-channel group ``ob``; in it, channel blocks outside output
    channels, each channel's segment of the block through every register tile kind."""
    o, oblock, lanes = spec.o, spec.oblock, spec.lanes
    wa, wb = spec.regions
    va, vb = spec.vectors_ab
    base_b, off_b = spec.base_b, va * lanes
    span = (va + vb) * lanes
    ncb = -(-spec.x_shape[1] // spec.cblock)
    # TVMScript cannot loop over a Python list of macros: four fixed slots, unused ones empty
    kinds = flat_tiles(va, vb, spec.vectors)
    kinds += [(0, 1, 0, 0, 0)] * (4 - len(kinds))
    (c0, na0, nb0, a0, b0), (c1, na1, nb1, a1, b1) = kinds[0], kinds[1]
    (c2, na2, nb2, a2, b2), (c3, na3, nb3, a3, b3) = kinds[2], kinds[3]
    tile0, tile1, tile2, tile3 = (
        _tile_macro(na, nb, wa, wb, base_b, off_b, lanes) for _, na, nb, _, _ in kinds
    )

    @T.macro
    def channel_group(xs, ya, vals, offs, seg, ob):
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

    return channel_group


def _write_macro(spec: FlatConvSpec):
    """Macro: step 3 for output-channel group ``ob``, bias and activation into NCHW: region A
    8 at a time, then region B."""
    o, oblock, activation = spec.o, spec.oblock, spec.activation
    oh, ow = spec.out_hw
    npos = oh * ow
    wa, wb = spec.regions
    va, vb = spec.vectors_ab
    off_b, span = va * spec.lanes, (va + vb) * spec.lanes
    hb = int(spec.has_bias)  # without a bias, bias[0] is a 0 placeholder

    @T.macro
    def write(ya, bias, yf, nb, ob):
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
                                ya[T.ramp(oc * span + r * wa + u * 8, 1, 8)] + T.broadcast(bv, 8),
                                activation,
                                8,
                            )
                    if wb > 0:
                        for v in range(wb):
                            yf[out + wa + v] = _epilogue(
                                ya[oc * span + off_b + r * wb + v] + bv, activation
                            )

    return write


def _flat_kernel(spec: FlatConvSpec) -> tvm.tirx.PrimFunc:
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
    bn, ci, h, wd = spec.x_shape
    o, (oh, ow) = spec.o, spec.out_hw
    npos = oh * ow
    va, vb = spec.vectors_ab
    lanes = spec.lanes
    span = (va + vb) * lanes
    total = spec.total
    ncb = -(-ci // spec.cblock)
    nob = -(-o // spec.oblock)
    nval = max(spec.nnz, 1)
    rows = spec.loop
    samples = spec.sample_loop
    relayout = _relayout_macro(spec)
    channel_group = _channel_group_macro(spec)
    write = _write_macro(spec)

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        offs: T.Buffer((nval,), spec.idx_dtype),
        seg: T.Buffer((o * ncb + 1,), spec.seg_dtype),
        bias: T.Buffer((spec.nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        yf = T.decl_buffer((bn * o * npos,), "float32", data=y.data)
        for nb in samples(bn):
            xs = T.alloc_buffer((total + lanes,), "float32", scope="global")
            ya = T.alloc_buffer((o * span,), "float32", scope="global")
            for e in T.vectorized(lanes):
                xs[total + e] = T.float32(0)
            relayout(x, xs, nb)
            for ob in rows(nob):
                channel_group(xs, ya, vals, offs, seg, ob)
                write(ya, bias, yf, nb, ob)

    return kernel


def channel_block_segments(csr: CSR, channels: np.ndarray, cblock: int, ci: int) -> np.ndarray:
    """Per output channel (CSR row), where each ``cblock``-channel block's run of its non-zeros
    starts (``o * ceil(ci / cblock) + 1`` entries): ``channels`` is each non-zero's input
    channel, and CSR columns are sorted by channel, so a block's non-zeros are contiguous."""
    o, ncb = csr.shape[0], -(-ci // cblock)
    rows = np.repeat(np.arange(o), np.diff(csr.indptr.astype(np.int64)))
    keys = rows * ncb + channels // cblock  # sorted: row-major, channel-sorted CSR
    seg = np.searchsorted(keys, np.arange(o * ncb + 1), side="left")
    return as_index(seg, max(csr.nnz, 1))


def _flat_consts(csr: CSR, ci: int, k_hw: tuple[int, int], dh: int, hq: int, cblock: int):
    """(offs, seg) for the flat kernel: each non-zero's tap row ``(c * KW + kw) * Hq + kh * dh``,
    and its ``cblock``-channel segments (``channel_block_segments``)."""
    kh, kw = k_hw
    cols = csr.indices.astype(np.int64)
    c_idx, rem = cols // (kh * kw), cols % (kh * kw)
    offsets = (c_idx * kw + rem % kw) * hq + (rem // kw) * dh
    seg = channel_block_segments(csr, c_idx, cblock, ci)
    return as_index(offsets, max(ci * kw * hq - 1, 0)), seg


def default_lanes(target) -> int:
    """16 on an AVX-512 core with whole 512-bit units, else 8. Zen 4 (512-bit ops as two
    halves) keeps 8: the 16-lane form was measured on an Intel core only (it cut 9-20% off the
    GSC's and ResNet-50's 3x3 / 5x5 convs there)."""
    return 16 if cpu_isa(target).whole_zmm else 8


def default_oblock(o: int, lanes: int, out_hw: tuple[int, int]) -> int:
    """Output channels that run one channel block before the next. With 16 lanes: all of them
    while their sums fit half a 1 MiB L2, so each block's planes come into L1 once (Intel:
    ResNet-50's 3x3 layers 15-19% faster than 8 a group, whose planes cycle through L2 once
    per group); with 8 lanes the 8 that AVX2 was tuned with."""
    if lanes < 16:
        return 8
    span = 4 * lanes * -(-out_hw[0] * out_hw[1] // lanes)
    return o if o * span <= 512 << 10 else 8


def flat_conv_call(x_shape, csr: CSR, k_hw, out_hw, padded_hw, pads, strides, dilation,
                   bias_arr: np.ndarray, has_bias: bool, activation: str | None,
                   vectors: int | None, cblock: int | None, oblock: int | None, parallel: bool,
                   target=None, lanes: int | None = None,
                   ) -> KernelCall:  # fmt: skip
    """The flat-layout kernel (see ``_flat_kernel``) and its constants. Vectors of
    ``default_lanes(target)`` unless ``lanes`` (8 or 16) says; ``vectors`` None: as many
    accumulators as leave room for the broadcast weight and a load; ``oblock`` None:
    ``default_oblock``, split over the cores. With ``parallel``, whole samples run in parallel
    where ``samples_in_parallel`` says so for ``target``'s cores."""
    bn, ci, _, _ = x_shape
    kh, kw = k_hw
    oh, ow = out_hw
    o = csr.shape[0]
    if strides[0] != 1:
        raise ValueError(f"the flat layout needs a unit row stride, got strides {strides}")
    if lanes is None:
        lanes = default_lanes(target)
    if lanes not in DEFAULT_VECTORS:
        raise ValueError(f"lanes must be 8 or 16, got {lanes}")
    if vectors is None:
        vectors = DEFAULT_VECTORS[lanes]
    default_groups = oblock is None
    if default_groups:
        oblock = default_oblock(o, lanes, out_hw)
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
    spec = FlatConvSpec(
        x_shape, o, out_hw, padded_hw, pads, strides, dilation, kw, csr.nnz, str(offs.dtype),
        str(seg.dtype), bias_arr.size, has_bias, activation, vectors, cblock, oblock, parallel,
        lanes=lanes,
    )  # fmt: skip
    if spec.shift:  # odd tap rows read the second copy (FlatConvSpec.shift)
        q = offs.astype(np.int64)
        offs = as_index(q + (q & 1) * spec.shift, max(2 * spec.shift - 1, 0))
        spec = dataclasses.replace(spec, idx_dtype=str(offs.dtype))
    batch_parallel = bool(parallel) and samples_in_parallel(bn, target, spec.scratch_bytes)
    cores = num_cores(target) if target is not None else 1
    if default_groups and parallel and not batch_parallel and cores > 1:
        # the threads split the output-channel groups: at least one group a core
        oblock = min(oblock, -(-o // cores))
    spec = dataclasses.replace(spec, batch_parallel=batch_parallel, oblock=oblock)
    func = _flat_kernel(spec)
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
        "tile": (spec.vectors, spec.cblock, spec.oblock),
        "batch_parallel": spec.batch_parallel,
        "lanes": lanes,
        "register_tiles": flat_tiles(*spec.vectors_ab, vectors),
        "format": csr.stats(),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_conv2d",
        consts=(vals, offs, seg, bias_arr),
        out_shape=(bn, o, oh, ow),
        info=info,
    )
