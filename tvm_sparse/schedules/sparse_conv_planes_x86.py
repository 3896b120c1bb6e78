"""Direct sparse convolution over tap planes, output-position tiles outermost (x86, AVX2/AVX-512).

Why this loop order: in a pruned CNN most layers have 1-20 non-zeros per output channel and
input channel block, so a kernel that walks input-channel blocks outside output channels
(``sparse_conv_flat_x86``) reloads and stores its register tile for almost every non-zero. Here
a tile of ``vectors * lanes`` output positions stays in registers while *all* non-zeros of one
output channel stream past it, then the next output channel reuses the same input columns from
L1/L2: one accumulator store per (output channel, tile), one load + one FMA per non-zero and
vector.

Layout (NCHW in, NCHW out, no layout change between convs). Per sample the zero-padded input is
re-laid as one *plane* per (channel ``c``, tap column ``kw``, row phase ``ph``), ``R`` rows of
``OW`` columns: ``plane[r, v] = xpad[c, r * sh + ph, v * sw + kw * dw]``. A tap
``(c, kh, kw)`` is then the plane ``(c, kw, (kh * dh) % sh)`` shifted by ``(kh * dh) // sh``
rows, and over the flat output positions ``p = oh * OW + ow`` it reads the contiguous run
``plane + shift * OW + p``: one offset per non-zero, any stride, any dilation, no im2col.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats._index import as_index
from ..formats.csr import CSR
from ..target import cpu_isa, num_cores, vector_lanes
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv, samples_in_parallel
from ._epilogue import bias_const
from ._epilogue import epilogue as _epilogue
from ._lanes import row_copy_macro
from .kernel import KernelCall, without_params
from .kernel import finish as _finish

# The PrimFunc attribute that carries the kernel's spec (see PlaneConvSpec.to_json).
SPEC_ATTR = "tvm_sparse.conv_planes"
# Vector registers: 32 with AVX-512 (tile up to 24 accumulators), 16 with AVX2 (up to 12).
_MAX_VECTORS = {16: 24, 8: 12, 4: 12}


@dataclass(frozen=True)
class PlaneConvSpec:
    """What one kernel is specialized to: shapes, index dtypes and knobs."""

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
    vectors: int
    ogroup: int
    parallel: bool
    residual: bool = False  # a tensor of the output's shape added before the activation
    # one plane per tap (c, kw, kh) instead of per (c, kw, row phase): every tap run starts at
    # a plane start, aligned (see ``expansion_helps``)
    expanded: bool = False
    # whole samples in parallel, each with its own planes, serial loops inside (a batch of at
    # least as many samples as cores: see ``_conv_dims.samples_in_parallel``)
    batch_parallel: bool = False
    # conv groups (the dense kernel only): output channel group g reads input channels
    # g * C / groups onwards
    groups: int = 1
    # the last position tile trimmed to the positions it holds (see ``tail_widths``)
    narrow_tail: bool = False
    # output channels that share each tap run they read (see ``share_runs``)
    share: int = 1
    # 1-row kernels: planes rounded up to whole vectors, so every tap run (a plane start)
    # is vector-aligned (see ``aligns_by_default``)
    aligned: bool = False
    # input channels per cache block (0: one block of all): a tile runs every output channel
    # over one block's tap runs before the next block, its partial sums kept in a task-local
    # buffer between blocks. A tuning knob, off by default: it keeps a block's runs in L1 but
    # costs a partial-sum load, store and loop exit per (channel, block). 90% weights, Zen 4,
    # 1 thread, weights from DRAM: 64 -> 64 3x3 at 56x56 1.19x faster with 16 channels a block,
    # but 128 -> 128 3x3 at 28x28 1.00x, 512 -> 512 3x3 at 7x7 0.90x (64), 1x1 convs 0.4-0.9x.
    cblock: int = 0
    # the output written over the residual (no y argument, for ``call_tir_inplace``): each
    # residual element is read once, where the output element at its index is stored
    inplace: bool = False

    def to_json(self) -> str:
        """The spec as the kernel's ``tvm_sparse.conv_planes`` attribute, so a later pass
        (``passes.fuse_residual``) can rebuild the kernel with another epilogue."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PlaneConvSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, fields: dict) -> PlaneConvSpec:
        """The spec of a decoded ``to_json`` (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    @property
    def inner_loop(self):
        """The loop kind inside one sample: serial when samples run in parallel."""
        return T.parallel if self.parallel and not self.batch_parallel else T.serial

    @property
    def sample_loop(self):
        """The loop kind over the samples (each allocates its own scratch)."""
        return T.parallel if self.batch_parallel else T.serial

    @property
    def scratch_bytes(self) -> int:
        """Bytes of one sample's planes and padded copy (one of each a thread with samples in
        parallel)."""
        hp, wp = self.padded_hw
        padded = self.x_shape[1] * hp * wp if self.needs_pad else 0
        return 4 * (self.planes * self.plane_size + padded)

    @property
    def phases(self) -> int:
        """Row phases: taps of a strided conv land on ``sh`` interleaved row sets (expanded:
        one per tap row)."""
        if self.expanded:
            return self.kernel_hw[0]
        return self.strides[0] if self.kernel_hw[0] > 1 else 1

    @property
    def plane_rows(self) -> int:
        if self.expanded:
            return self.out_hw[0]
        kh, dh, sh = self.kernel_hw[0], self.dilation[0], self.strides[0]
        return self.out_hw[0] + ((kh - 1) * dh) // sh

    @property
    def plane_size(self) -> int:
        """Floats per plane; expanded planes are rounded up to whole vectors, so every plane
        (and tap run) starts vector-aligned."""
        size = self.plane_rows * self.out_hw[1]
        return -(-size // self.lanes) * self.lanes if self.expanded or self.aligned else size

    @property
    def planes(self) -> int:
        return self.x_shape[1] * self.kernel_hw[1] * self.phases

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def tile(self) -> int:
        return self.vectors * self.lanes

    @property
    def tiles(self) -> int:
        return -(-self.positions // self.tile)

    @property
    def padded_hw(self) -> tuple[int, int]:
        top, left, bottom, right = self.pads
        return self.x_shape[2] + top + bottom, self.x_shape[3] + left + right

    @property
    def needs_pad(self) -> bool:
        return any(self.pads)

    @property
    def padded_copy(self) -> bool:
        """Whether the planes are filled through a zero-padded copy of the sample (``xp``):
        a padded conv whose planes ``flat_planes_macro`` does not fill straight from x."""
        return self.needs_pad and not flat_fill_applies(self)

    @property
    def blocks(self) -> int:
        """Blocks of ``share`` output channels (the channels themselves with share 1)."""
        return -(-self.o // self.share)

    @property
    def cblocks(self) -> int:
        """Input-channel blocks a tile's non-zeros are split into (1 without blocking)."""
        ci = self.x_shape[1]
        return -(-ci // self.cblock) if 0 < self.cblock < ci else 1

    @property
    def channel_floats(self) -> int:
        """Floats of the tap planes of one input channel (the blocks' offset unit)."""
        return self.kernel_hw[1] * self.phases * self.plane_size

    @property
    def patterns(self) -> int:
        """Which channels of a block a tap has non-zeros for: a bit each (pattern 0 unused)."""
        return 1 << self.share

    @property
    def const_sizes(self) -> tuple[int, int, int]:
        """Lengths of the (values, run offsets, pointers) constants. With share > 1 the runs
        (at most the non-zeros) are padded to the non-zeros: the kernel then depends on the
        weights' count only, as with share 1, so layers of one shape share one kernel
        (``passes.dedupe_kernels``) and one timing; with the run count in it, ResNet-50's
        compile took 31 s instead of 13."""
        runs = max(self.nnz, 1)
        if self.share == 1:
            return runs, runs, self.o * self.cblocks + 1
        return runs * self.share, runs, self.blocks * self.cblocks * self.patterns + 1

    @property
    def identity_planes(self) -> bool:
        """1x1, stride 1, no padding: the planes are the input channels themselves."""
        return self.kernel_hw == (1, 1) and self.strides == (1, 1) and not self.needs_pad


def pad_macro(spec: PlaneConvSpec):
    """Macro: ``xp`` = one sample of x zero padded (borders zeroed, interior rows copied)."""
    _, ci, h, wd = spec.x_shape
    hp, wp = spec.padded_hw
    top, left, _, _ = spec.pads
    rows = spec.inner_loop
    copy_row = row_copy_macro(wd, 1, spec.lanes)

    @T.macro
    def pad(xflat, xp, nb):
        for c in rows(ci):
            for r in range(hp):
                if r < top or r >= top + h:
                    for v in T.vectorized(wp):
                        xp[(c * hp + r) * wp + v] = T.float32(0)
                else:
                    for v in range(left):
                        xp[(c * hp + r) * wp + v] = T.float32(0)
                    src: T.let = ((nb * ci + c) * h + r - top) * wd
                    copy_row(xp, (c * hp + r) * wp + left, xflat, src)
                    for v in range(wp - left - wd):
                        xp[(c * hp + r) * wp + left + wd + v] = T.float32(0)

    return pad


def planes_macro(spec: PlaneConvSpec):
    """Macro: the tap planes of one sample from the padded input ``xp`` (at ``base``), from
    output row ``row0`` on: ``spec.out_hw[0]`` rows of outputs (a band of them, see
    ``sparse_conv_panel_x86``)."""
    ci = spec.x_shape[1]
    kw_, ph_ = spec.kernel_hw[1], spec.phases
    sh, sw = spec.strides
    dw = spec.dilation[1]
    hp, wp = spec.padded_hw
    rows_, ow = spec.plane_rows, spec.out_hw[1]
    size = spec.plane_size
    loop = spec.inner_loop
    # the row a plane starts at: its phase, or (expanded) its tap row times the dilation
    row_step = spec.dilation[0] if spec.expanded else 1
    pad_tail = size - rows_ * ow  # expanded planes' padding: zero (never NaN or denormal)
    copy_row = row_copy_macro(ow, sw, spec.lanes)

    @T.macro
    def planes(xp, base, xs, row0):
        for pl in loop(ci * kw_ * ph_):
            c: T.let = pl // (kw_ * ph_)
            k: T.let = pl // ph_ % kw_
            phase: T.let = pl % ph_ * row_step
            for e in range(pad_tail):
                xs[pl * size + rows_ * ow + e] = T.float32(0)
            for r in range(rows_):
                src: T.let = (row0 + r) * sh + phase
                row: T.let = base + (c * hp + src) * wp + k * dw
                if src < hp:
                    copy_row(xs, pl * size + r * ow, xp, row)
                else:
                    for v in T.vectorized(ow):
                        xs[pl * size + r * ow + v] = T.float32(0)

    return planes


def flat_fill_applies(spec: PlaneConvSpec) -> bool:
    """Whether ``flat_planes_macro`` fills the planes of ``spec``: a padded conv of stride 1
    and dilation 1 whose output rows are as wide as its input's (each plane row is then an
    input row shifted by the tap column), with planes of ``FLAT_MIN_VECTORS`` vectors or more
    (the 7x7 planes of ResNet's last stage, 49 floats, filled 4-7% slower so)."""
    return (
        spec.needs_pad
        and spec.strides == (1, 1)
        and spec.dilation == (1, 1)
        and spec.out_hw[1] == spec.x_shape[3]
        and spec.plane_rows * spec.out_hw[1] >= FLAT_MIN_VECTORS * spec.lanes
    )


FLAT_MIN_VECTORS = 8


def flat_planes_macro(spec: PlaneConvSpec):
    """Macro: the tap planes of one sample (at ``base`` in ``xflat``) straight from the input,
    from output row ``row0`` on, for a conv ``flat_fill_applies`` takes.

    Why: ``pad_macro`` then ``planes_macro`` copy every row twice, in vectors of the row's width
    (56 = three zmm and a ymm), and their padded copy is one more buffer in L2; in a 90% ResNet-50
    these fills were 22-38% of the 3x3 convs' time. With the output as wide as the input, a
    plane's rows that have input rows are one run of the input shifted by ``s = kw - left``
    floats: copied as one run of whole vectors, then the ``|s|`` columns of each row that the
    shift brought from the next or previous row (the padding) are zeroed, as are the rows
    above or below the input."""
    ci, h, wd = spec.x_shape[1:]
    kw_, ph_ = spec.kernel_hw[1], spec.phases
    top, left = spec.pads[0], spec.pads[1]
    rows_, size = spec.plane_rows, spec.plane_size
    lanes = spec.lanes
    loop = spec.inner_loop
    pad_tail = size - rows_ * wd
    hw = h * wd

    @T.macro
    def planes(xflat, base, xs, row0):
        for pl in loop(ci * kw_ * ph_):
            c: T.let = pl // (kw_ * ph_)
            shift: T.let = pl // ph_ % kw_ - left
            first: T.let = row0 + pl % ph_ - top  # the input row of plane row 0
            lo: T.let = T.max(0, T.min(rows_, -first))  # plane rows lo .. hi have input rows
            hi: T.let = T.max(lo, T.min(rows_, h - first))
            dst: T.let = pl * size
            for e in range(lo * wd):
                xs[dst + e] = T.float32(0)
            for e in range((rows_ - hi) * wd):
                xs[dst + hi * wd + e] = T.float32(0)
            for e in range(pad_tail):
                xs[dst + rows_ * wd + e] = T.float32(0)
            # the run: its first -shift (shift < 0) or last shift (shift > 0) floats would come
            # from outside the sample's rows (padding columns): zeros, not read
            head: T.let = T.max(0, -shift)
            count: T.let = (hi - lo) * wd - head - T.max(0, shift)
            d0: T.let = dst + lo * wd + head
            s0: T.let = base + c * hw + (first + lo) * wd + head + shift
            for v in range(count // lanes):
                xs[T.ramp(d0 + v * lanes, 1, lanes)] = xflat[T.ramp(s0 + v * lanes, 1, lanes)]
            for e in range(count % lanes):
                xs[d0 + count // lanes * lanes + e] = xflat[s0 + count // lanes * lanes + e]
            for r in range(lo, hi):  # the columns the shift wrapped in from another row
                for j in range(T.abs(shift)):
                    xs[dst + r * wd + T.if_then_else(shift < 0, j, wd - 1 - j)] = T.float32(0)

    return planes


def tap_planes_macro(spec: PlaneConvSpec):
    """Macro: sample ``nb``'s tap planes in ``xs`` (through the padded copy ``xp`` when the
    conv pads; the input channels themselves for a 1x1 unit-stride conv). Shared by the sparse
    kernel here and the dense one (``dense_conv_planes_x86``)."""
    _, ci, h, wd = spec.x_shape
    chw = ci * h * wd
    npos, size = spec.positions, spec.plane_size
    identity, padded_copy = spec.identity_planes, spec.padded_copy
    loop = spec.inner_loop
    pad = pad_macro(spec)
    planes = planes_macro(spec)
    flat_planes = flat_planes_macro(spec)

    @T.macro
    def fill(x, xflat, xp, xs, nb):
        if identity:
            for c in loop(ci):
                for v in T.vectorized(npos):
                    xs[c * size + v] = xflat[nb * chw + c * npos + v]
                if size > npos:  # aligned planes' padding: zeros, never NaN or denormal
                    for v in T.vectorized(size - npos):
                        xs[c * size + npos + v] = T.float32(0)
        elif padded_copy:
            pad(xflat, xp, nb)
            planes(xp, 0, xs, 0)
        elif spec.needs_pad:  # stride 1, as wide as the input: no padded copy
            flat_planes(xflat, nb * chw, xs, 0)
        else:
            planes(xflat, nb * chw, xs, 0)

    return fill


def tail_widths(spec: PlaneConvSpec) -> tuple[int, int]:
    """The last position tile's vectors: (full vectors, lanes of a narrower last one or 0).

    Why: a tile of ``vectors * lanes`` positions computes every lane of every vector, used or
    not. The last tile holds only the positions left over (a 7x7 output: 49 = 3 x 16 + 1), so
    it runs as many full vectors as those fill and the rest in a 4- or 8-lane vector: 3 zmm and
    one xmm FMA per non-zero instead of 4 zmm; GSC's 10x10 output, 6 zmm and one xmm instead of
    7 (a 4-lane FMA and load cost half a 16-lane one on Zen 4, a quarter of the cache lines)."""
    lanes = spec.lanes
    left = spec.positions - (spec.tiles - 1) * spec.tile
    full, rest = divmod(left, lanes)
    if rest == 0:
        return full, 0
    narrow = next((w for w in (4, 8) if rest <= w < lanes), 0)
    return (full, narrow) if narrow else (full + 1, 0)


def _tile_macro(spec: PlaneConvSpec, vectors: int, narrow: int = 0):
    """Macro: the block ``blk`` of ``spec.share`` output channels (one channel with share 1)
    over the position tile at ``p0``: every non-zero of the block streams past ``vectors``
    register accumulators a channel (and one of ``narrow`` lanes, where not 0: the last tile,
    see ``tail_widths``), then bias, activation, store. With share > 1 each tap run is loaded
    once for every channel of the block that has a non-zero there (``share_runs``)."""
    lanes, n = spec.lanes, vectors
    o, npos = spec.o, spec.positions
    g, npat = spec.share, spec.patterns
    shared = g > 1
    tile = n * lanes + narrow  # positions this macro's tile computes
    hb = int(spec.has_bias)
    activation = spec.activation
    residual = spec.residual
    nw = n * lanes  # where the narrow vector starts
    has_narrow = narrow > 0
    ncb = spec.cblocks
    stride = spec.tile  # floats of one channel's partial sums in ``part``

    @T.macro
    def fma(acc, xs, a, value, q):
        """acc (channel a) += value * the run at q."""
        for u in T.unroll(n):
            acc[T.ramp(a * tile + u * lanes, 1, lanes)] = (
                acc[T.ramp(a * tile + u * lanes, 1, lanes)]
                + T.broadcast(value, lanes) * xs[T.ramp(q + u * lanes, 1, lanes)]
            )
        if has_narrow:
            acc[T.ramp(a * tile + nw, 1, narrow)] = (
                acc[T.ramp(a * tile + nw, 1, narrow)]
                + T.broadcast(value, narrow) * xs[T.ramp(q + nw, 1, narrow)]
            )

    def vector_store(width: int):
        @T.macro
        def store_vector(acc, a0, bias_oc, rf, yf, at):
            """yf[at:] = act(acc[a0:] + bias (+ residual)), ``width`` lanes."""
            if residual:
                yf[T.ramp(at, 1, width)] = _epilogue(
                    acc[T.ramp(a0, 1, width)]
                    + T.broadcast(bias_oc, width)
                    + rf[T.ramp(at, 1, width)],
                    activation,
                    width,
                )
            else:
                yf[T.ramp(at, 1, width)] = _epilogue(
                    acc[T.ramp(a0, 1, width)] + T.broadcast(bias_oc, width), activation, width
                )

        return store_vector

    store_full = vector_store(lanes)
    store_narrow = vector_store(narrow if has_narrow else lanes)  # unused without a narrow one

    @T.macro
    def zero(acc, a):
        for u in T.unroll(n):
            acc[T.ramp(a * tile + u * lanes, 1, lanes)] = T.broadcast(T.float32(0), lanes)
        if has_narrow:
            acc[T.ramp(a * tile + nw, 1, narrow)] = T.broadcast(T.float32(0), narrow)

    @T.macro
    def copy_tile(dst, at_dst, src, at_src):
        """One channel's tile of partial sums between the registers (``acc``) and the
        task's buffer (``part``) that keeps them between input-channel blocks."""
        for u in T.unroll(n):
            dst[T.ramp(at_dst + u * lanes, 1, lanes)] = src[T.ramp(at_src + u * lanes, 1, lanes)]
        if has_narrow:
            dst[T.ramp(at_dst + nw, 1, narrow)] = src[T.ramp(at_src + nw, 1, narrow)]

    @T.macro
    def store(acc, base, bias, rf, yf, tail, nb, oc, p0):
        out: T.let = (nb * o + oc) * npos + p0
        if p0 + tile <= npos:
            for u in T.unroll(n):
                store_full(acc, base + u * lanes, bias[oc * hb], rf, yf, out + u * lanes)
            if has_narrow:
                store_narrow(acc, base + nw, bias[oc * hb], rf, yf, out + nw)
        else:  # through ``tail``: a dynamic index into acc would keep it out of registers
            for u in T.unroll(n):
                tail[T.ramp(u * lanes, 1, lanes)] = acc[T.ramp(base + u * lanes, 1, lanes)]
            if has_narrow:
                tail[T.ramp(nw, 1, narrow)] = acc[T.ramp(base + nw, 1, narrow)]
            for e in range(npos - p0):
                if residual:
                    yf[out + e] = _epilogue(tail[e] + bias[oc * hb] + rf[out + e], activation)
                else:
                    yf[out + e] = _epilogue(tail[e] + bias[oc * hb], activation)

    @T.macro
    def channel_tile(xs, vals, offs, ptr, bias, rf, yf, tail, part, nb, blk, bl, p0, cb):
        acc = T.alloc_buffer((g * tile,), "float32", scope="global")
        for a in T.unroll(g):  # cb is 0 without input-channel blocks: zeros
            if cb > 0:
                copy_tile(acc, a * tile, part, (bl * g + a) * stride)
            else:
                zero(acc, a)
        if shared:
            # one loop per pattern, each a fixed set of channels once unrolled (pattern =
            # pm + 1: ``T.unroll(1, npat)`` around this body gave wrong results in a
            # prototype, though a lone ``T.unroll(1, 8)`` runs 1..7; not understood)
            for pm in T.unroll(npat - 1):
                pat: T.let = pm + 1
                at_s: T.let = (blk * ncb + cb) * npat + pat
                lo_s: T.let = T.Cast("int32", ptr[at_s])
                hi_s: T.let = T.Cast("int32", ptr[at_s + 1])
                for j in range(lo_s, hi_s):
                    q_s: T.let = T.Cast("int32", offs[j]) + p0
                    for a in T.unroll(g):
                        if T.shift_right(pat, a) % 2 == 1:
                            fma(acc, xs, a, vals[j * g + a], q_s)
        else:
            lo: T.let = T.Cast("int32", ptr[blk * ncb + cb])
            hi: T.let = T.Cast("int32", ptr[blk * ncb + cb + 1])
            for j in range(lo, hi):
                fma(acc, xs, 0, vals[j], T.Cast("int32", offs[j]) + p0)
        for a in T.unroll(g):
            oc: T.let = blk * g + a
            if oc < o:
                if cb < ncb - 1:
                    copy_tile(part, (bl * g + a) * stride, acc, a * tile)
                else:
                    store(acc, a * tile, bias, rf, yf, tail, nb, oc, p0)

    return channel_tile


def plane_kernel(spec: PlaneConvSpec) -> tvm.tirx.PrimFunc:
    """The kernel: per sample, pad and re-lay the input as tap planes, then for every
    (position tile, output-channel group) run the group's channels over the tile. Params
    ``(x, vals, offs, ptr, bias, res, y)``, without ``y`` where the output overwrites ``res``
    (``inplace``)."""
    if spec.inplace and not spec.residual:
        raise ValueError("an in-place tap-plane conv writes over its residual: it needs one")
    bn, ci, h, wd = spec.x_shape
    o, (oh, ow) = spec.o, spec.out_hw
    hp, wp = spec.padded_hw
    npos, tile, ntiles = spec.positions, spec.tile, spec.tiles
    nblk = spec.blocks
    ncb = spec.cblocks
    per_task = -(-spec.ogroup // spec.share)  # channel blocks a parallel task runs
    ngroups = -(-nblk // per_task)
    total = spec.planes * spec.plane_size
    nval, noffs, nptr = spec.const_sizes
    loop = spec.inner_loop
    samples = spec.sample_loop
    padded_copy = spec.padded_copy
    chw = ci * h * wd
    # without a residual the parameter is a 1-float placeholder (the last constant)
    res_shape = (bn, o, oh, ow) if spec.residual else (1,)
    res_size = bn * o * npos if spec.residual else 1
    fill = tap_planes_macro(spec)
    channel_tile = _tile_macro(spec, spec.vectors)
    tail_vectors, narrow = tail_widths(spec) if spec.narrow_tail else (spec.vectors, 0)
    last_tile = _tile_macro(spec, tail_vectors, narrow)
    last_p0 = (ntiles - 1) * tile

    @T.macro
    def body(x, vals, offs, ptr, bias, yf, rf):
        xflat = T.decl_buffer((bn * chw,), "float32", data=x.data)
        for nb in samples(bn):
            # a tile past the last position reads up to `tile` floats beyond the last plane
            xs = T.alloc_buffer((total + tile,), "float32", scope="global")
            xp = T.alloc_buffer((ci * hp * wp if padded_copy else 1,), "float32", scope="global")
            for e in T.vectorized(tile):
                xs[total + e] = T.float32(0)
            fill(x, xflat, xp, xs, nb)
            for tg in loop(ntiles * ngroups):
                tail = T.alloc_buffer((tile,), "float32", scope="global")
                # the partial sums of the task's channels between input-channel blocks
                part = T.alloc_buffer((per_task * spec.share * tile if ncb > 1 else 1,),
                                      "float32", scope="global")  # fmt: skip
                p0: T.let = tg // ngroups * tile
                for cb in range(ncb):
                    for bl in range(per_task):
                        blk: T.let = tg % ngroups * per_task + bl
                        if blk < nblk:
                            if p0 == last_p0:
                                last_tile(xs, vals, offs, ptr, bias, rf, yf, tail, part, nb,
                                          blk, bl, p0, cb)  # fmt: skip
                            else:
                                channel_tile(xs, vals, offs, ptr, bias, rf, yf, tail, part,
                                             nb, blk, bl, p0, cb)  # fmt: skip

    inplace = spec.inplace

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        offs: T.Buffer((noffs,), spec.idx_dtype),
        ptr: T.Buffer((nptr,), spec.ptr_dtype),
        bias: T.Buffer((spec.nbias,), "float32"),
        res: T.Buffer(res_shape, "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        rf = T.decl_buffer((res_size,), "float32", data=res.data)
        if inplace:
            body(x, vals, offs, ptr, bias, rf, rf)
        else:
            yf = T.decl_buffer((bn * o * npos,), "float32", data=y.data)
            body(x, vals, offs, ptr, bias, yf, rf)

    func = without_params(kernel, {"y"} if inplace else set())
    return _finish(func).with_attr(SPEC_ATTR, spec.to_json())


def plane_offsets(cols: np.ndarray, spec: PlaneConvSpec) -> np.ndarray:
    """Each weight column ``(c, kh, kw)`` (OIHW order) as its tap run's start: plane
    ``(c, kw, (kh*dh) % sh)`` times the plane size, plus ``(kh*dh) // sh`` rows."""
    kh, kw = spec.kernel_hw
    sh, dh = spec.strides[0], spec.dilation[0]
    cols = np.asarray(cols).astype(np.int64)
    c_idx, rem = cols // (kh * kw), cols % (kh * kw)
    tap_h, tap_w = rem // kw, rem % kw
    if spec.expanded:
        return ((c_idx * kw + tap_w) * kh + tap_h) * spec.plane_size
    plane = (c_idx * kw + tap_w) * spec.phases + (tap_h * dh) % sh
    return plane * spec.plane_size + (tap_h * dh) // sh * spec.out_hw[1]


def expansion_helps(kernel_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether one plane per tap (``PlaneConvSpec.expanded``) is worth a tuning trial.

    A tap run starts ``shift * OW`` floats into its plane; unless ``OW`` is a multiple of 8
    most runs start off a 32-byte boundary and every vector load of them splits across cache
    lines: 12.8 instead of 8.6 cycles per non-zero for a 7-vector tile (Zen 4 probe, L1 hot).
    Expanded planes all start aligned but are ``KH`` times the relayout and the cache
    footprint: measured 12% faster on 256 -> 256 3x3 at 7x7, even at 128 -> 128 at 14x14, 23%
    slower on GSC's 64 -> 64 5x5 at 10x10 (Zen 4, 1 thread). So it is a knob, off by default.
    """
    return kernel_hw[0] > 1 and out_hw[1] % 8 != 0


def expands_by_default(kernel_hw, out_hw, strides) -> bool:
    """Expanded planes by default for strided convs where they are a knob: ResNet-50's
    stride-2 3x3 convs at 90% ran 1.27-1.52x faster so (128 at 56x56 -> 28x28 883 against 1126
    us, 256 -> 14x14 736 against 1120, 512 -> 7x7 612 against 825; Sapphire Rapids, weights
    cold), their row phases making unexpanded runs short and unaligned. At stride 1 the
    evidence is mixed (128 at 28x28 even, GSC's 5x5 23% slower on Zen 4): a tuning knob."""
    return max(strides) > 1 and expansion_helps(kernel_hw, out_hw)


def aligns_by_default(kernel_hw: tuple[int, int], positions: int, lanes: int) -> bool:
    """Whether a 1-row kernel's planes are rounded up to whole vectors by default: where its
    output positions are not whole vectors (7x7, 14x14), every tap run but one in ``lanes``
    would start off a vector boundary and each of its vector loads would split across two cache
    lines. The planes' padding costs a few zeros per channel. 90% weights, Zen 4, 1 thread:
    1x1 256 -> 1024 and 1024 -> 256 at 14x14 1.15x and 1.19x faster aligned, 512 -> 2048 at
    7x7 1.04x; 28x28 and 56x56 are whole vectors already."""
    return kernel_hw[0] == 1 and positions % lanes != 0


def default_vectors(positions: int, lanes: int, taps: int | None = None) -> int:
    """Accumulators per tile: no more than the positions need, tiles of even size (a 7x7
    output: 4 x 16 lanes, not 24 mostly wasted), and few enough that the input columns every
    tile reads stay in cache. A tile reads ``taps`` (C*KH*KW) runs of ``vectors * lanes``
    floats: with 64 taps, 4 zmm-wide runs (16 KiB) stay in L1 and beat longer ones by 1.4x;
    with hundreds of taps the runs come from L2 anyway, and 8 vectors amortize each non-zero's
    index load and broadcast better (2x faster than 4 on 256 -> 64 at 56x56, Zen 4)."""
    most = _MAX_VECTORS[lanes]
    if taps is not None:
        most = min(most, (4 if taps <= 64 else 8) * 16 // lanes)
    need = -(-positions // lanes)
    if need <= most:
        return need
    tiles = -(-need // most)
    return -(-need // tiles)


def share_runs(offs: np.ndarray, ptr: np.ndarray, vals: np.ndarray, o: int, share: int,
               block_floats: int = 0, cblocks: int = 1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """CSR rows (tap-run offsets, pointers, values) repacked for blocks of ``share`` output
    channels: each (block, run offset) once, with the ``share`` weights of its channels (0
    where a channel has none), sorted by block, then by input-channel block (runs at offset
    ``off`` are in block ``off // block_floats`` of ``cblocks``; one block when 0), then by
    pattern (the bitmask of channels with a non-zero), then offset. Returns ``(weights [runs *
    share], offsets [runs], pointers [blocks * cblocks * 2**share + 1])``: block b's runs of
    channel block k and pattern p are ``pointers[(b * cblocks + k) * 2**share + p]`` up to the
    next pointer.

    Why: a run loaded once feeds every channel of the block that uses it: at 20% density three
    channels share 19% of their runs (0.81 loads a non-zero), at 10% 10% (see
    ``default_share`` for the times)."""
    rows = np.repeat(np.arange(o), np.diff(ptr))
    block, channel = rows // share, rows % share
    keys = block.astype(np.int64) * (int(offs.max(initial=0)) + 1) + offs.astype(np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    # each (run, channel) once: the sum of the channel bits is their OR (ufunc.at is slow)
    pattern = np.bincount(inverse, weights=1 << channel, minlength=unique.size).astype(np.int64)
    weights = np.zeros((unique.size, share), np.float32)
    weights[inverse, channel] = vals[: rows.size]
    run_block = np.zeros(unique.size, np.int64)
    run_block[inverse] = block
    run_offs = np.zeros(unique.size, offs.dtype)
    run_offs[inverse] = offs[: rows.size]
    run_cb = run_offs.astype(np.int64) // block_floats if block_floats else np.zeros_like(run_block)
    order = np.lexsort((run_offs, pattern, run_cb, run_block))
    npat = 1 << share
    slot = (run_block[order] * cblocks + run_cb[order]) * npat + pattern[order]
    counts = np.bincount(slot, minlength=-(-o // share) * cblocks * npat)
    pointers = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return weights[order].reshape(-1), run_offs[order], pointers


def default_cblock(target, taps: int, ci: int) -> int:
    """Input channels per cache block by default: 16 for convs with more than one tap on an
    Intel AVX-512 core, none otherwise. Intel Xeon (AVX-512, 2 MiB L2), 90% weights, no block /
    16 (us): 64 3x3 at 56x56 537 / 484, 128 3x3 at 28x28 496 / 373; but 1x1 256 -> 64 at 56x56
    417 / 499 and 128 -> 512 at 28x28 113 / 296. On Zen 4 blocks won on 64 3x3 at 56x56 only
    (1.19x) and lost on most other shapes, so AVX2 and Zen 4 keep none."""
    return 16 if taps > 1 and ci > 16 and cpu_isa(target).whole_zmm else 0


def default_share(lanes: int, vectors: int, nnz_per_channel: float) -> int:
    """Channels a tap run is shared by, by default (AVX-512): three while their 3 x
    ``vectors`` accumulators leave registers to spare, else two, where each channel has many
    non-zeros; one otherwise, and on AVX2 (16 registers, not measured).

    Why the non-zeros: a block runs one loop per pattern (7 for three channels), so a channel
    with few non-zeros makes short loops that mispredict their exits. 90% weights, Zen 4,
    share 1 / 2 / 3 (us): 512 3x3 at 7x7 (460 a channel) 648 / 641 / 618, 256 3x3 at 14x14
    (230) 559 / 544 / 535, 128 3x3 at 28x28 (115) 555 / 537 / 533, 1x1 1024 -> 256 at 14x14
    (102) 271 / 261 / 259, GSC's 5x5 at 80% (320) 79 / 75 / 73; but 1x1 128 -> 512 at 28x28
    (13) 171 / 174 / 221 and 256 -> 1024 at 14x14 (26) 211 / 212 / 232; and with 8 vectors
    (64 3x3 at 56x56) 506 / 490 / 597, three channels spilling."""
    if lanes != 16 or nnz_per_channel < 96:
        return 1
    return 3 if vectors <= 7 else 2


def sparse_conv2d_planes(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    vectors: int | None = None, ogroup: int | None = None, parallel: bool = True,
    lanes: int | None = None, expanded: bool | None = None, share: int | None = None,
    cblock: int | None = None, aligned: bool | None = None,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, any stride / padding / dilation.

    With ``parallel`` and at least as many samples as cores, whole samples run in parallel.

    Knobs: ``vectors`` register accumulators per tile (default: the positions, up to what the
    ISA's registers hold), ``ogroup`` output channels per parallel task (default: enough tasks
    for the cores), ``lanes`` the vector width (default: the target's, 16 with AVX-512),
    ``expanded`` one plane per tap, every run aligned (see ``expansion_helps``; default:
    ``expands_by_default``), ``share`` output channels that share each tap run (1-4, see
    ``share_runs``; default: ``default_share``), ``cblock`` input channels per cache block
    (0: no blocking; default: ``default_cblock``; see ``PlaneConvSpec.cblock``).
    Consts: ``(vals, tap-run offsets, row pointers, bias, residual placeholder)`` (share > 1:
    as ``share_runs`` packs them); the last is replaced by a tensor of the output's shape when
    ``passes.fuse_residual`` fuses an add.
    """
    weight, dims = checked_groups1_conv("sparse_conv2d_planes", x_shape, weight_oihw, conv,
                                        activation)  # fmt: skip
    (bn, ci, _, _), (o, kh, kw) = dims.x, dims.kernel
    lanes = lanes or vector_lanes(target)
    if lanes not in _MAX_VECTORS:
        raise ValueError(f"lanes must be one of {sorted(_MAX_VECTORS)}, got {lanes}")
    positions = dims.out_hw[0] * dims.out_hw[1]
    vectors = vectors or default_vectors(positions, lanes, ci * kh * kw)
    if not 1 <= vectors <= _MAX_VECTORS[lanes]:
        raise ValueError(f"vectors must be in 1..{_MAX_VECTORS[lanes]}, got {vectors}")
    if expanded is None:
        expanded = expands_by_default((kh, kw), dims.out_hw, dims.strides)
    ntiles = -(-positions // (vectors * lanes))
    if ogroup is None:
        tasks = 4 * num_cores(target) if parallel else 1
        ogroup = max(1, (o * ntiles) // max(tasks, 1) // max(ntiles, 1)) if tasks > ntiles else o
    ogroup = max(1, min(int(ogroup), o))
    csr = CSR.from_dense(weight.reshape(o, ci * kh * kw))
    bias_arr, has_bias = bias_const(bias, o)
    if aligned is None:
        aligned = aligns_by_default((kh, kw), positions, lanes)
    probe = PlaneConvSpec(
        dims.x, o, (kh, kw), dims.out_hw, dims.pads, dims.strides, dims.dilation, csr.nnz,
        "int32", "int32", bias_arr.size, has_bias, activation, lanes, vectors, ogroup, parallel,
        expanded=bool(expanded) and kh > 1, aligned=bool(aligned) and kh == 1,
    )  # fmt: skip
    total = probe.planes * probe.plane_size
    offs = as_index(plane_offsets(csr.indices, probe), max(total - 1, 0))
    ptr = np.ascontiguousarray(csr.indptr)
    vals = np.asarray(csr.data, dtype=np.float32)
    if share is None:
        share = default_share(lanes, vectors, csr.nnz / max(o, 1))
    share = int(share)
    if not 1 <= share <= 4:
        raise ValueError(f"share must be in 1..4, got {share}")
    if cblock is None:
        cblock = default_cblock(target, kh * kw, ci)
    cblock = int(cblock) if 0 < int(cblock) < ci else 0
    ncb = -(-ci // cblock) if cblock else 1
    block_floats = probe.channel_floats * cblock
    runs = csr.nnz
    if share > 1:
        vals, offs, ptr = share_runs(offs, ptr, vals, o, share, block_floats, ncb)
        runs = offs.size
        pad = max(csr.nnz, 1) - runs  # see PlaneConvSpec.const_sizes
        vals = np.concatenate([vals, np.zeros(pad * share, np.float32)])
        offs = np.concatenate([offs, np.zeros(pad, offs.dtype)])
    elif ncb > 1:  # row oc's runs of channel block k: ptr[oc * ncb + k] up to the next
        key = np.repeat(np.arange(o, dtype=np.int64), np.diff(ptr)) * ncb
        key += offs.astype(np.int64) // block_floats
        ptr = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=o * ncb))])
        ptr = ptr.astype(np.int32)
    if vals.size == 0:
        vals, offs = np.zeros(1, np.float32), np.zeros(1, offs.dtype)
    spec = PlaneConvSpec(
        dims.x, o, (kh, kw), dims.out_hw, dims.pads, dims.strides, dims.dilation, csr.nnz,
        str(offs.dtype), str(ptr.dtype), bias_arr.size, has_bias, activation, lanes, vectors,
        ogroup, parallel, expanded=probe.expanded, aligned=probe.aligned,
        batch_parallel=bool(parallel)
        and samples_in_parallel(bn, target, probe.scratch_bytes),
        narrow_tail=True, share=share, cblock=cblock,
    )  # fmt: skip
    weight_bytes = int(vals.nbytes + offs.nbytes + ptr.nbytes)
    info = {
        "kernel": "conv_planes",
        "nnz": csr.nnz,
        "density": csr.density,
        "macs_sparse": csr.nnz * bn * positions,
        "macs_dense": o * ci * kh * kw * bn * positions,
        "bytes": weight_bytes + 4 * (bn * positions * o + int(np.prod(dims.x))),
        "weight_bytes": weight_bytes,
        "tile": (vectors, lanes, ogroup),
        "expanded": probe.expanded,
        "share": share,
        "cblock": cblock,
        "runs": runs,
        "batch_parallel": spec.batch_parallel,
        "format": csr.stats(),
    }
    return KernelCall(
        func=plane_kernel(spec),
        name="sparse_conv2d_planes",
        consts=(vals, offs, ptr, bias_arr, np.zeros(1, np.float32)),
        out_shape=(bn, o) + tuple(dims.out_hw),
        info=info,
    )


__all__ = [
    "SPEC_ATTR",
    "PlaneConvSpec",
    "default_share",
    "default_vectors",
    "plane_kernel",
    "plane_offsets",
    "share_runs",
    "sparse_conv2d_planes",
]
