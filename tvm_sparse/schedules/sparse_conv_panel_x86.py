"""Convolutions on NCHW as the transposed-panel sparse GEMM over channels or taps (x86).

Why: a 1x1 conv is ``y[o, p] = sum_c w[o, c] x[c, p]`` over the positions ``p``, and an NCHW
sample ``x[C, P]`` is already the transposed activation ``xT[K, m]`` the panel kernel
(``sparse_panel_x86``) multiplies, with row stride ``P`` instead of a tile's width. The tap-plane
conv (``sparse_conv_planes_x86``) streams every input channel of a 24-vector position tile past
its registers (256 channels x 384 positions: 384 KiB, from L2); here a panel of ``panel_w``
channels x ``m_tile`` positions (128 x 64: 32 KiB) stays in L1 while every output channel's
non-zeros in it stream past, each one record load, ``m_tile / 16`` vector loads and FMAs.
Intel Xeon (AVX-512), 90% weights, 1 thread, isolated, planes / panel (us): 256 -> 64 at 56x56
426 / 166, 64 -> 256 at 56x56 241 / 168, 512 -> 128 at 28x28 239 / 145, 1024 -> 256 at 14x14
172 / 140. Any other conv reads its taps ``(c, kh, kw)`` as the panel's columns from the tap
planes of ``sparse_conv_planes_x86`` (a tap's run starts where ``plane_offsets`` says): 3x3 512
at 14x14 stride 2 planes 589 / panel 410, 512 at 7x7 flat 478 / panel 393.

Positions: ``P // m_tile`` whole tiles, then the rest as one tail tile rounded up to whole
vectors. Partial sums accumulate in ``y`` itself between panels (a slot's first panel starts
from zero, its last writes ``act(acc + bias [+ residual])``); a tail tile wider than the
positions it holds keeps them in a scratch and writes only those. Row blocks (disjoint output
channels) run in parallel.

Where x's channels do not start on a cache line (14x14, 7x7) or the conv is strided (ResNet's
downsampling shortcuts), a sample is first copied to a scratch whose channels do (``x_stride``),
its padding zeroed: every tile load is then one aligned line, and the tail reads padding, not
the next channel.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats.bsr import BSR
from ..target import num_cores, vector_lanes
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const, plus_bias
from ._epilogue import epilogue as _epilogue
from ._prefetch import prefetch as prefetch_line
from ._prefetch import prefetch_write
from .kernel import KernelCall, without_params
from .kernel import finish as _finish
from .panel_packing import offset_records, pack_row_panels
from .sparse_conv_planes_x86 import (
    PlaneConvSpec,
    flat_planes_macro,
    pad_macro,
    plane_offsets,
    planes_macro,
)
from .sparse_panel_x86 import RECORDS_AHEAD, RECORDS_PER_LINE

# The PrimFunc attribute that carries the kernel's spec (``passes.fuse_residual`` rebuilds it).
SPEC_ATTR = "tvm_sparse.conv_panel"
# Positions per whole tile at most: 64 (four zmm accumulators) measured best on the panel
# kernel (32: 10-20% slower on ResNet-50's 1x1 shapes; 128 with 64-channel panels: the same).
WIDEST_TILE = 64
# The narrowest tile: one AVX2 vector.
NARROWEST_TILE = 8
# Slots ahead whose output row a slot prefetches: the shortcut's lines before the last panel
# reads them, y's before the first panel writes them. Slots run in order of their non-zero
# count, so these rows are random to the hardware prefetcher, and in a model the shortcut was
# written three convs ago (L3 or DRAM).
ROWS_AHEAD = 6


@dataclass(frozen=True)
class PanelConvSpec:
    """What one kernel is specialized to: shapes, packing and knobs (JSON in ``SPEC_ATTR``)."""

    x_shape: tuple[int, int, int, int]
    o: int
    out_hw: tuple[int, int]
    strides: tuple[int, int]
    nnz: int
    npanels: int
    panel_w: int
    row_block: int
    ptr_dtype: str
    row_dtype: str
    nbias: int
    has_bias: bool
    activation: str | None
    m_tile: int
    tail_tile: int  # 0: the positions are whole tiles
    lanes: int  # the epilogue's vector width
    parallel: bool
    rec_ahead: int = RECORDS_AHEAD
    residual: bool = False  # a tensor of the output's shape added before the activation
    # any other conv: its taps are read from the tap planes of ``sparse_conv_planes_x86``
    kernel_hw: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    expanded: bool = True  # one plane per tap, each aligned (else per tap column)
    # the output written over the residual (no y argument): see ``partials_in_y``
    inplace: bool = False
    # output rows whose tap planes are filled at a time (0: the whole sample's at once; the
    # last band may be shorter): see ``default_band_rows``
    band_rows: int = 0
    # a second input (1x1 convs only): the shape and strides of the input whose channels follow
    # x's as the weight's columns (a projection shortcut taken in, ``passes.fuse_projection``)
    x2_shape: tuple = ()
    x2_strides: tuple[int, int] = (1, 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PanelConvSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, fields: dict) -> PanelConvSpec:
        """The spec of a decoded ``to_json`` (JSON lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def check_second_input(self) -> None:
        """Raise ValueError unless a second input (if any) fits: an unpadded 1x1 conv, the
        same batch, and the second input's strided grid the output's."""
        if not self.x2_shape:
            return
        x2_out = tuple(-(-self.x2_shape[2 + a] // self.x2_strides[a]) for a in (0, 1))
        if self.on_planes or x2_out != tuple(self.out_hw) or self.x2_shape[0] != self.x_shape[0]:
            raise ValueError(
                f"sparse_conv2d_panel: a second input {tuple(self.x2_shape)} (strides "
                f"{tuple(self.x2_strides)}) needs an unpadded 1x1 conv with its output grid "
                f"{tuple(self.out_hw)} and batch {self.x_shape[0]}"
            )

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def strided(self) -> bool:
        return self.strides != (1, 1)

    @property
    def on_planes(self) -> bool:
        """Whether the taps are read from tap planes (any conv but an unpadded 1x1)."""
        return self.kernel_hw != (1, 1) or any(self.pads)

    @property
    def banded(self) -> bool:
        """Whether the tap planes are filled a band of ``band_rows`` output rows at a time."""
        return self.on_planes and 0 < self.band_rows < self.out_hw[0]

    @property
    def band_hw(self) -> tuple[int, int]:
        """Output rows and columns of a band (the whole output unless ``banded``)."""
        oh, ow = self.out_hw
        return (self.band_rows if self.banded else oh), ow

    @property
    def nbands(self) -> int:
        return -(-self.out_hw[0] // self.band_hw[0])

    @property
    def band_shapes(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """``(whole tiles, positions left, tail width)`` of a band and of the last band (the
        same unbanded): each band's positions are its own tiles, its tail its own."""
        oh, ow = self.out_hw
        rows = self.band_hw[0]

        def shape(positions: int) -> tuple[int, int, int]:
            rest = positions % self.m_tile
            return positions // self.m_tile, rest, -(-rest // self.lanes) * self.lanes

        last = oh - (self.nbands - 1) * rows
        return shape(rows * ow), shape(last * ow)

    @property
    def plane_spec(self) -> PlaneConvSpec:
        """The tap-plane geometry (``sparse_conv_planes_x86``) the planes of one band are
        filled by."""
        return PlaneConvSpec(
            self.x_shape, self.o, self.kernel_hw, self.band_hw, self.pads, self.strides,
            self.dilation, self.nnz, "int32", "int32", self.nbias, self.has_bias,
            self.activation, self.lanes, 1, self.o, self.parallel, expanded=self.expanded,
        )  # fmt: skip

    @property
    def copied(self) -> bool:
        """Whether a sample is first copied to a scratch: tap planes, strided, rows of x
        that do not start on a cache line (see ``x_stride``), or two inputs (one scratch holds
        both's channels)."""
        return self.on_planes or self.strided or self.positions % 16 != 0 or bool(self.x2_shape)

    @property
    def channels(self) -> int:
        """The weight's input channels: x's, and the second input's after them."""
        return self.x_shape[1] + (self.x2_shape[1] if self.x2_shape else 0)

    @property
    def x_rows(self) -> int:
        """Rows of the x the tiles read (channels, or tap planes), ``x_stride`` apart."""
        return self.plane_spec.planes if self.on_planes else self.channels

    @property
    def x_stride(self) -> int:
        """Floats between two channels of the x the tiles read: ``P`` in x itself, ``P``
        rounded up to a cache line in the scratch. Why: with 14x14 rows (784 bytes) 3 of 4
        tile loads straddle two lines; 1024 -> 256 at 10%, Intel: 184 us, against 107 at 8x24
        (768-byte rows)."""
        if self.on_planes:
            return self.plane_spec.plane_size
        return -(-self.positions // 16) * 16 if self.copied else self.positions

    @property
    def partials_in_y(self) -> bool:
        """Whether a whole tile's partial sums wait in ``y`` between panels (else in the
        scratch ``ys``). Not when y is the residual (``inplace``): the first panel's partial
        sums would overwrite the shortcut the last one adds."""
        return not self.inplace

    @property
    def whole_tiles(self) -> int:
        return self.positions // self.m_tile

    @property
    def nrb(self) -> int:
        """Row blocks (output channels ``rb * row_block`` on)."""
        return -(-self.o // self.row_block)

    @property
    def nslots(self) -> int:
        return max(self.npanels * self.o, 1)


def tile_widths(positions: int, m_tile: int | None = None, lanes: int = 16,
                copied: bool = True) -> tuple[int, int]:  # fmt: skip
    """``(m_tile, tail_tile)`` for ``positions``: whole tiles of ``m_tile`` (None:
    ``WIDEST_TILE``; a power of two from ``NARROWEST_TILE``), then the rest as a tail tile of
    whole ``lanes`` vectors (0 when nothing is left).

    Why whole vectors: LLVM kept an 8-wide tail's accumulators as halves of zmm registers, an
    insert and an extract around every FMA (1024 -> 256 at 8x25, Intel: 47 us for the 8-wide
    tail, 8 us for a 16-wide one at 4x52). A tail wider than the rest reads the scratch's
    padding, so only a ``copied`` sample may have one."""
    if positions < NARROWEST_TILE:
        raise ValueError(f"the panel conv needs at least {NARROWEST_TILE} positions")
    wanted = WIDEST_TILE if m_tile is None else int(m_tile)
    tile = NARROWEST_TILE
    while tile * 2 <= wanted:
        tile *= 2
    rest = positions % tile
    tail = -(-rest // lanes) * lanes
    if tail != rest and not copied:
        raise ValueError(f"{positions} positions leave a tail of {rest}: x must be copied")
    return tile, tail


def accumulator_sets(width: int) -> int:
    """Independent accumulator sets a slot cycles its non-zeros through: each non-zero's FMAs
    wait on the previous one's (4 cycles on Intel), so a narrow tile is latency-bound. Intel
    Xeon, records from L1, cycles a non-zero at 1 / 2 / 4 sets: 64 positions (4 zmm) 4.4 /
    3.8, 32 positions 4.3 / 2.2, 16 positions 4.3 / - / 1.3 (a microbenchmark)."""
    return 2 if width >= 32 else 4


def _store_macro(spec: PanelConvSpec, count: int, step: int):
    """Macro: ``y[at + v] = act(acc[v] + bias [+ residual])`` for ``count`` positions from
    ``first``, ``step`` lanes a store (``count`` a multiple of ``step``; 1: scalars)."""
    has_bias, activation, residual = spec.has_bias, spec.activation, spec.residual

    def lanes_at(start):
        return start if step == 1 else T.ramp(start, 1, step)

    def spread(value):
        return value if step == 1 else T.broadcast(value, step)

    @T.macro
    def store(acc, bias, res, yf, ib, at, first):
        for vb in T.unroll(count // step):
            v0: T.let = first + vb * step
            if residual:
                yf[lanes_at(at + v0)] = _epilogue(
                    plus_bias(acc[lanes_at(v0)], spread(bias[ib]), has_bias)
                    + res[lanes_at(at + v0)],
                    activation,
                    step,
                )
            else:
                yf[lanes_at(at + v0)] = _epilogue(
                    plus_bias(acc[lanes_at(v0)], spread(bias[ib]), has_bias),
                    activation,
                    step,
                )

    return store


def _slot_macro(spec: PanelConvSpec, width: int, valid: int, next_lines: int = 0):
    """Macro: one slot (an output channel's non-zeros in one panel) over ``width`` positions at
    ``base`` (``xpos`` in the x it reads: a band's planes start at the band), of which the
    first ``valid`` exist, its partial sums in registers
    (``accumulator_sets`` of them, summed at the end); between panels in ``y`` itself, or in the
    scratch ``ys`` (a row of ``scratch_row`` an output channel) where the tile is wider than
    ``y`` or y is the residual."""
    n, p_all = spec.o, spec.positions
    ci, x_stride = spec.x_shape[1], spec.x_stride
    row_block, npanels = spec.row_block, spec.npanels
    lanes = min(spec.lanes, width)
    rec_ahead, nrec = spec.rec_ahead, max(spec.nnz, 1)
    copied, in_y = spec.copied, valid == width and spec.partials_in_y
    nslots, residual = spec.nslots, spec.residual
    lines = -(-valid // 16)  # cache lines of an output row's positions in the tile
    m_tile, vlines, x_rows = spec.m_tile, spec.m_tile // 16, spec.x_rows
    sets = accumulator_sets(width)
    ys_row = scratch_row(spec)  # each output channel's share of ys, for every tile width
    whole = valid // lanes * lanes
    store_vectors = _store_macro(spec, whole, lanes)
    store_rest = _store_macro(spec, valid - whole, 1)
    # LLVM splits a vector op of a width that is not a power of two through the stack (the
    # merged 80-wide tile: 20x slower); such a tile runs as whole vectors of ``lanes``
    chunk = width if width & (width - 1) == 0 else min(lanes, width & -width)
    nchunk = width // chunk

    @T.macro
    def slot_pass(recs, seg, slot_rows, bias, res, xf, yf, ys, b, base, xpos, rb, p, rl, s):
        slot: T.let = rb * row_block * npanels + p * rl + s
        ib: T.let = T.Cast("int32", slot_rows[slot])
        lo: T.let = T.Cast("int32", seg[slot])
        hi: T.let = T.Cast("int32", seg[slot + 1])
        at: T.let = (b * n + ib) * p_all + base
        acc = T.alloc_buffer((sets * width,), "float32", scope="global")
        for vc in T.unroll(sets * nchunk):
            for v in T.vectorized(chunk):
                acc[vc * chunk + v] = T.float32(0)
        if p > 0:
            for vc in T.unroll(nchunk):
                for v in T.vectorized(chunk):
                    acc[vc * chunk + v] = (
                        yf[at + vc * chunk + v] if in_y else ys[ib * ys_row + vc * chunk + v]
                    )
        if rec_ahead > 0:
            for h in T.unroll(2):
                ahead: T.let = T.min(lo + rec_ahead + h * RECORDS_PER_LINE, nrec - 1)
                T.evaluate(prefetch_line(recs[ahead]))
        if residual:
            if p == npanels - 1:
                row_r: T.let = T.Cast("int32", slot_rows[T.min(slot + ROWS_AHEAD, nslots - 1)])
                for h in T.unroll(lines):
                    T.evaluate(prefetch_line(res[(b * n + row_r) * p_all + base + h * 16]))
        if in_y:
            if p == 0:
                row_y: T.let = T.Cast("int32", slot_rows[T.min(slot + ROWS_AHEAD, nslots - 1)])
                for h in T.unroll(lines):
                    T.evaluate(prefetch_write(yf[(b * n + row_y) * p_all + base + h * 16]))
        # the scratch holds one sample (one band of it); x itself every sample
        xbase: T.let = T.Cast("int64", xpos if copied else b * ci * x_stride + xpos)
        if next_lines > 0:
            # this slot's share of the next tile's x lines, into L2 (see ``prefetch_next``)
            q: T.let = p * rl + s
            for h in T.unroll(next_lines):
                line: T.let = T.min(q * next_lines + h, x_rows * vlines - 1)
                T.evaluate(
                    prefetch_line(
                        xf[xbase + m_tile + (line // vlines) * x_stride + line % vlines * 16], 2
                    )
                )
        rounds: T.let = (hi - lo) // sets
        for jj in range(rounds):
            for a in T.unroll(sets):
                rec: T.let = recs[lo + jj * sets + a]
                off: T.let = T.shift_right(rec, T.int64(32)) + xbase
                w1: T.let = T.reinterpret("float32", T.Cast("int32", rec))
                for vc in T.unroll(nchunk):
                    for v in T.vectorized(chunk):
                        acc[a * width + vc * chunk + v] = (
                            acc[a * width + vc * chunk + v]
                            + w1 * xf[off + T.Cast("int64", vc * chunk + v)]
                        )
        for j in range(lo + rounds * sets, hi):
            rec1: T.let = recs[j]
            off1: T.let = T.shift_right(rec1, T.int64(32)) + xbase
            w2: T.let = T.reinterpret("float32", T.Cast("int32", rec1))
            for vc in T.unroll(nchunk):
                for v in T.vectorized(chunk):
                    acc[vc * chunk + v] = (
                        acc[vc * chunk + v] + w2 * xf[off1 + T.Cast("int64", vc * chunk + v)]
                    )
        for a in T.unroll(1, sets):
            for vc in T.unroll(nchunk):
                for v in T.vectorized(chunk):
                    acc[vc * chunk + v] = acc[vc * chunk + v] + acc[a * width + vc * chunk + v]
        if p == npanels - 1:
            store_vectors(acc, bias, res, yf, ib, at, 0)
            if whole < valid:
                store_rest(acc, bias, res, yf, ib, at, whole)
        elif in_y:
            for vc in T.unroll(nchunk):
                for v in T.vectorized(chunk):
                    yf[at + vc * chunk + v] = acc[vc * chunk + v]
        else:
            for vc in T.unroll(nchunk):
                for v in T.vectorized(chunk):
                    ys[ib * ys_row + vc * chunk + v] = acc[vc * chunk + v]

    return slot_pass


def prefetch_next(spec: PanelConvSpec) -> int:
    """x lines of the next whole tile each slot of a tile prefetches into L2 (0: none): the
    tile's channels x 64 positions, shared out over its slots. Why: slots run in order of their
    non-zero count, so a panel's first reads of each x row are random to the hardware
    prefetcher; a 56x56 sample (3 MiB at 256 channels) comes from L3."""
    if spec.whole_tiles < 2 or spec.m_tile % 16:
        return 0
    lines = spec.x_rows * (spec.m_tile // 16)
    slots = spec.npanels * min(spec.row_block, spec.o)
    return min(-(-lines // max(slots, 1)), 16)


def _copy_macro(spec: PanelConvSpec, second: bool = False):
    """Macro: sample ``b``'s (strided) positions into the scratch, one channel every
    ``x_stride`` floats (a cache line boundary); ``second``: the second input's, into the
    channels after x's."""
    x_shape, (sh, sw) = (spec.x2_shape, spec.x2_strides) if second else (spec.x_shape, spec.strides)
    _, ci, h, w = x_shape
    first = spec.x_shape[1] if second else 0
    oh, ow = spec.out_hw
    p_all, x_stride, strided = spec.positions, spec.x_stride, (sh, sw) != (1, 1)
    rows = T.parallel if spec.parallel else T.serial

    @T.macro
    def copy(x, xs, b):
        xf = T.decl_buffer((int(np.prod(x_shape)),), "float32", data=x.data)
        for c in rows(ci):
            at: T.let = (first + c) * x_stride
            if strided:
                for r in range(oh):
                    for q in T.vectorized(ow):
                        xs[at + r * ow + q] = xf[((b * ci + c) * h + r * sh) * w + q * sw]
            else:
                for v in T.vectorized(p_all):
                    xs[at + v] = xf[(b * ci + c) * p_all + v]
            for v in range(p_all, x_stride):  # padding a wide tail reads: zeros, not garbage
                xs[at + v] = T.float32(0)

    return copy


def merges_tail(whole: int, tail: int, lanes: int) -> bool:
    """Whether a band's tail tile of ``tail`` positions (one vector) is run as part of its
    last whole tile (``m_tile + tail`` wide) instead of as its own pass over the records.

    Why: a one-vector tail pass costs a record load, a broadcast and the slot's overhead for
    one FMA per non-zero. Intel Xeon (AVX-512), 90%, 1 thread, separate / merged (us): 1024 ->
    256 at 14x14 177 / 171, 512 -> 128 at 28x28 163 / 157, 256 -> 1024 at 14x14 163 / 160."""
    return whole > 0 and 0 < tail <= lanes


def scratch_row(spec: PanelConvSpec) -> int:
    """Floats of the partial-sum scratch ``ys`` each output channel owns: the widest tile that
    keeps its partial sums there between panels (a tail wider than its positions; every tile
    where y is the residual; a merged tail, ``m_tile + tail`` wide), 1 if none does.

    One stride for every tile width: row ``c`` owns ``ys[c * row : (c + 1) * row]`` whatever
    tile runs, so row blocks on different threads, at tiles of different widths, never share
    a float (indexed by each tile's own width, a merged 80-wide tile's rows overlapped the
    64-wide rows of the next row block: wrong sums, now and then, on 2 threads)."""
    (whole_b, rest_b, tail_b), (whole_l, rest_l, tail_l) = spec.band_shapes
    widths = [t for r, t in ((rest_b, tail_b), (rest_l, tail_l)) if 0 < r < t]
    if not spec.partials_in_y and spec.npanels > 1:
        widths += [spec.m_tile, tail_b, tail_l]
    widths += [
        spec.m_tile + tail
        for whole, tail in ((whole_b, tail_b), (whole_l, tail_l))
        if merges_tail(whole, tail, spec.lanes)
    ]
    return max(widths + [1])


def _band_macro(spec: PanelConvSpec, whole: int, rest: int, tail: int):
    """Macro: every slot of row block ``rb`` over one band's tiles (``whole`` of ``m_tile``
    positions, then a tail of ``tail`` for the ``rest``), the band starting at position ``y0``
    of y and at position 0 of the x it reads (its tap planes; x itself unbanded)."""
    n, m_tile, npanels, row_block = spec.o, spec.m_tile, spec.npanels, spec.row_block
    main = _slot_macro(spec, m_tile, m_tile, prefetch_next(spec))
    if merges_tail(whole, tail, spec.lanes):
        last = _slot_macro(spec, m_tile + tail, m_tile + rest)
        tail = 0
    else:
        last = _slot_macro(spec, m_tile, m_tile)
    tail_pass = _slot_macro(spec, max(tail, 1), rest)

    @T.macro
    def band(recs, seg, slot_rows, bias, res, xf, yf, ys, b, y0, rb):
        rl: T.let = T.min(row_block, n - rb * row_block)
        for t in range(whole):
            if t + 1 < whole:
                for p in range(npanels):
                    for s in range(rl):
                        main(recs, seg, slot_rows, bias, res, xf, yf, ys, b, y0 + t * m_tile,
                             t * m_tile, rb, p, rl, s)  # fmt: skip
            else:
                for p in range(npanels):
                    for s in range(rl):
                        last(recs, seg, slot_rows, bias, res, xf, yf, ys, b, y0 + t * m_tile,
                             t * m_tile, rb, p, rl, s)  # fmt: skip
        if tail > 0:
            for p in range(npanels):
                for s in range(rl):
                    tail_pass(recs, seg, slot_rows, bias, res, xf, yf, ys, b,
                              y0 + whole * m_tile, whole * m_tile, rb, p, rl, s)  # fmt: skip

    return band


def panel_conv_kernel(spec: PanelConvSpec) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x, records, seg, slot_rows, bias, [residual,] y)`` for ``spec``;
    ``(x, records, seg, slot_rows, bias, residual)`` where the output overwrites the residual
    (``inplace``, for ``call_tir_inplace``)."""
    if spec.inplace and not spec.residual:
        raise ValueError("an in-place panel conv writes over its residual: it needs one")
    bn, ci, h, w = spec.x_shape
    n, p_all, m_tile = spec.o, spec.positions, spec.m_tile
    nrb, copied = spec.nrb, spec.copied
    nbands, band_rows = spec.nbands, spec.band_hw[0]
    band_p = band_rows * spec.out_hw[1]
    (whole_b, rest_b, tail_b), (whole_l, rest_l, tail_l) = spec.band_shapes
    y_shape = (bn, n, *spec.out_hw)
    nrec, nslots = max(spec.nnz, 1), spec.nslots
    ptr_dtype, row_dtype = spec.ptr_dtype, spec.row_dtype
    rows = T.parallel if spec.parallel else T.serial
    tiles_b = _band_macro(spec, whole_b, rest_b, tail_b)
    tiles_l = _band_macro(spec, whole_l, rest_l, tail_l)
    copy = _copy_macro(spec)
    two_inputs = bool(spec.x2_shape)
    x2_shape = spec.x2_shape or (1, 1, 1, 1)
    copy_second = _copy_macro(spec, second=True) if two_inputs else copy
    on_planes = spec.on_planes
    spec.check_second_input()
    if on_planes:
        pspec = spec.plane_spec
        pad, fill_planes = pad_macro(pspec), planes_macro(pspec)
        fill_flat = flat_planes_macro(pspec)
        # padded: through a padded copy, or (stride 1, as wide as x) straight from x
        padded_copy, flat = pspec.padded_copy, pspec.needs_pad and not pspec.padded_copy
        planes_total = pspec.planes * pspec.plane_size
        hp, wp = pspec.padded_hw
        padded = ci * hp * wp if padded_copy else 1
    ys_size = n * scratch_row(spec)

    @T.macro
    def sample(recs, seg, slot_rows, bias, res, xf, yf, ys, b, band):
        for rb in rows(nrb):
            if band + 1 < nbands:
                tiles_b(recs, seg, slot_rows, bias, res, xf, yf, ys, b, band * band_p, rb)
            else:
                tiles_l(recs, seg, slot_rows, bias, res, xf, yf, ys, b, band * band_p, rb)

    @T.macro
    def body(x, x2, recs, seg, slot_rows, bias, res, y):
        xf = T.decl_buffer((bn * ci * h * w,), "float32", data=x.data)
        yf = T.decl_buffer((bn * n * p_all,), "float32", data=y.data)
        ys = T.alloc_buffer((ys_size,), "float32", scope="global")
        if on_planes:
            # a tail tile reads up to a tile past a run's last position: slack, never a fault
            xs = T.alloc_buffer((planes_total + m_tile,), "float32", scope="global")
            xp = T.alloc_buffer((padded,), "float32", scope="global")
            for b in range(bn):
                if padded_copy:
                    pad(xf, xp, b)
                for band in range(nbands):
                    if flat:
                        fill_flat(xf, b * ci * h * w, xs, band * band_rows)
                    elif padded_copy:
                        fill_planes(xp, 0, xs, band * band_rows)
                    else:
                        fill_planes(xf, b * ci * h * w, xs, band * band_rows)
                    sample(recs, seg, slot_rows, bias, res, xs, yf, ys, b, band)
        elif copied:
            xs = T.alloc_buffer((spec.channels * spec.x_stride,), "float32", scope="global")
            for b in range(bn):
                copy(x, xs, b)
                if two_inputs:
                    copy_second(x2, xs, b)
                sample(recs, seg, slot_rows, bias, res, xs, yf, ys, b, 0)
        else:
            for b in range(bn):
                sample(recs, seg, slot_rows, bias, res, xf, yf, ys, b, 0)

    inplace, has_residual = spec.inplace, spec.residual

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, w), "float32"),
        x2: T.Buffer(x2_shape, "float32"),
        recs: T.Buffer((nrec,), "int64"),
        seg: T.Buffer((nslots + 1,), ptr_dtype),
        slot_rows: T.Buffer((nslots,), row_dtype),
        bias: T.Buffer((spec.nbias,), "float32"),
        residual: T.Buffer(y_shape, "float32"),
        y: T.Buffer(y_shape, "float32"),
    ):
        if inplace:
            rf = T.decl_buffer((bn * n * p_all,), "float32", data=residual.data)
            body(x, x2, recs, seg, slot_rows, bias, rf, residual)
        elif has_residual:
            rf = T.decl_buffer((bn * n * p_all,), "float32", data=residual.data)
            body(x, x2, recs, seg, slot_rows, bias, rf, y)
        else:
            body(x, x2, recs, seg, slot_rows, bias, bias, y)

    unused = {"y"} if inplace else set() if has_residual else {"residual"}
    if not two_inputs:
        unused.add("x2")
    return _finish(without_params(kernel, unused)).with_attr(SPEC_ATTR, spec.to_json())


def is_pointwise(weight_shape, conv: ConvAttrs) -> bool:
    """Whether the conv is an unpadded 1x1 one group (read straight from x, no tap planes)."""
    _, _, kh, kw = weight_shape
    return (kh, kw) == (1, 1) and conv.groups == 1 and not any(conv.padding)


def expands_by_default(spec: PanelConvSpec) -> bool:
    """Whether the tap planes are one per tap (aligned runs, ``KH`` times the planes) by
    default: for strided convs, whose tap-column planes have row phases (short, unaligned
    runs), and where the expanded planes fit ~1.5 MiB. 90% weights, Intel, 1 thread, tap
    columns / expanded (us): 3x3 stride 2 128 at 56x56 668 / 635, 256 at 28x28 554 / 485, 512
    at 14x14 439 / 410; stride 1 512 at 7x7 (1.2 MiB expanded) 440 / 393, but 256 at 14x14
    (1.9 MiB) 402 / 412, 128 at 28x28 391 / 473, 64 at 56x56 513 / 735."""
    expanded = dataclasses.replace(spec, expanded=True).plane_spec
    fits = 4 * expanded.planes * expanded.plane_size <= 3 << 19
    return max(spec.strides) > 1 or fits


# Bytes of tap planes a band may fill at most (``default_band_rows``): half a 2 MiB L2.
BAND_BYTES = 1 << 20


def default_band_rows(spec: PanelConvSpec) -> int:
    """Output rows whose tap planes are filled at a time: 0 (the whole sample's at once) where
    they fit ``BAND_BYTES``, else the most rows whose planes do.

    Why: a 56x56 sample's planes are 2.5 MiB (64 channels, tap columns) to 3.6 MiB (128,
    expanded, stride 2), past L2. Filled whole, they are written to L3 and read back from it;
    a band's are read from L2 while they are still there. Bands are whole rows: each plane
    row is filled once (bands of whole tiles overlap rows: the stride-2 conv below took 767 us
    so), at the cost of a tail tile a band. Intel Xeon, 90% weights, 1 thread, isolated, whole
    / banded (us): 64 -> 64 3x3 at 56x56 599-643 / 510-530 (8 rows), 128 -> 128 3x3 stride 2
    at 56x56 694 / 572 (2 rows)."""
    if not spec.on_planes:
        return 0

    def planes_bytes(rows: int) -> int:
        band = dataclasses.replace(spec, band_rows=rows).plane_spec
        return 4 * band.planes * band.plane_size

    oh = spec.out_hw[0]
    if planes_bytes(oh) <= BAND_BYTES:
        return 0
    fitting = [r for r in range(1, oh) if planes_bytes(r) <= BAND_BYTES] or [1]
    passes = {r: _passes(dataclasses.replace(spec, band_rows=r)) for r in fitting}
    rows = min(fitting, key=lambda r: (passes[r], r))
    # bands may cost a tenth more tile passes (their tails), not more: at 14x14 and below a
    # band is a tile or less
    return rows if passes[rows] <= 1.1 * _passes(spec) else 0


def _passes(spec: PanelConvSpec) -> int:
    """Tile passes over the records a sample takes: every band's whole tiles and tail. Why the
    measure: a tail tile streams all records for fewer positions; 128 -> 128 3x3 stride 2 at
    56x56 (28x28 out) ran 575 us in bands of 2 rows (56 positions: one tile) and 742 us in
    bands of 4 (112: a tile and a 48-wide tail), Intel, 1 thread. A one-vector tail run with
    the last tile (``merges_tail``) still counts as a pass: the band choices were measured so."""
    (whole_b, _, tail_b), (whole_l, _, tail_l) = spec.band_shapes
    return (spec.nbands - 1) * (whole_b + (tail_b > 0)) + whole_l + (tail_l > 0)


def default_row_block(o: int, parallel: bool, cores: int) -> int:
    """Output channels a row block: all of them up to 512 (their partial sums, 512 x 64
    positions, stay in L2 while the panels pass), split so each core gets a block."""
    block = min(o, 512)
    if parallel and cores > 1:
        block = min(block, -(-o // cores))
    return max(block, 1)


def sparse_conv2d_panel(
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    m_tile: int | None = None, panel_cols: int | None = None, row_block: int | None = None,
    parallel: bool = True, expanded: bool | None = None, band_rows: int | None = None,
    second_input: tuple[tuple[int, int, int, int], tuple[int, int]] | None = None,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, any stride, padding and dilation: an
    unpadded 1x1 conv reads x itself, any other the tap planes of ``sparse_conv_planes_x86``
    (its weight columns the taps ``(c, kh, kw)``).

    Knobs: ``m_tile`` positions a whole tile (a power of two, 8-64; default 64), ``panel_cols``
    weight columns a panel (default: 128 x 64 positions, 32 KiB of x in L1), ``row_block``
    output channels a row block (default ``default_row_block``), ``parallel`` row blocks over
    the cores, ``expanded`` one tap plane per tap (default ``expands_by_default``),
    ``band_rows`` output rows whose tap planes are filled at a time (0: the whole sample's;
    default ``default_band_rows``). Consts:
    ``(records, seg, slot_rows, bias)``; ``passes.fuse_residual`` adds the shortcut as a new
    argument before ``y``.

    ``second_input``: ``(shape, strides)`` of a second input for an unpadded 1x1 conv, whose
    channels follow x's as the weight's input channels: the kernel (arguments ``x, x2,
    consts...``) is ``conv(x, w[:, :C]) + conv_strides(x2, w[:, C:])``, both copied into one
    scratch (a ResNet block's last conv with its projection shortcut: ``fuse_projection``).
    """
    check_shape = x_shape
    if second_input is not None:
        check_shape = (x_shape[0], x_shape[1] + second_input[0][1], *x_shape[2:])
    weight, dims = checked_groups1_conv("sparse_conv2d_panel", check_shape, weight_oihw, conv,
                                        activation)  # fmt: skip
    (bn, ci, _, _), (o, kh, kw) = dims.x, dims.kernel
    positions = dims.out_hw[0] * dims.out_hw[1]
    k = ci * kh * kw
    bsr = BSR.from_dense(weight.reshape(o, k), (1, 1))
    bias_arr, has_bias = bias_const(bias, o)
    probe = PanelConvSpec(
        dims.x, o, dims.out_hw, dims.strides, bsr.nnz, 1, 1, 1, "int32", "int32",
        bias_arr.size, has_bias, activation, 64, 0, vector_lanes(target), bool(parallel),
        kernel_hw=(kh, kw), pads=dims.pads, dilation=dims.dilation,
    )  # fmt: skip
    if second_input is not None:
        x2_shape, x2_strides = (tuple(int(d) for d in v) for v in second_input)
        probe = dataclasses.replace(
            probe, x_shape=tuple(x_shape), x2_shape=x2_shape, x2_strides=x2_strides
        )
        probe.check_second_input()  # before the packing reads the planes of a padded conv
    if expanded is None:
        expanded = expands_by_default(probe) if probe.on_planes else True
    probe = dataclasses.replace(probe, expanded=bool(expanded))
    m_tile, tail = tile_widths(positions, m_tile, vector_lanes(target), probe.copied)
    probe = dataclasses.replace(probe, m_tile=m_tile, tail_tile=tail)
    if band_rows is None:
        band_rows = default_band_rows(probe)
    probe = dataclasses.replace(probe, band_rows=max(0, int(band_rows)))
    if panel_cols is None:
        panel_cols = max(16, 8192 // m_tile)
    panel_cols = max(1, min(int(panel_cols), k))
    row_block = row_block or default_row_block(o, parallel, num_cores(target))
    row_block = max(1, min(int(row_block), o))
    vals, cols, seg, slot_rows, npanels = pack_row_panels(bsr, panel_cols, row_block)
    if bsr.nblocks == 0:
        vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
    spec = dataclasses.replace(
        probe, npanels=npanels, panel_w=panel_cols, row_block=row_block,
        ptr_dtype=str(seg.dtype), row_dtype=str(slot_rows.dtype), m_tile=m_tile, tail_tile=tail,
    )  # fmt: skip
    if spec.on_planes:  # where each tap's run starts in the planes
        offsets = plane_offsets(cols, spec.plane_spec)
    else:  # channel * stride
        offsets = np.asarray(cols, dtype=np.int64) * spec.x_stride
    recs = offset_records(vals, offsets)
    weight_bytes = int(recs.nbytes + seg.nbytes + slot_rows.nbytes)
    info = {
        "kernel": "conv_panel",
        "nnz": bsr.nnz,
        "density": bsr.nnz / max(weight.size, 1),
        "macs_sparse": bsr.nnz * bn * positions,
        "macs_dense": o * k * bn * positions,
        "bytes": weight_bytes + 4 * (bn * positions * o + int(np.prod(dims.x))),
        "weight_bytes": weight_bytes,
        "tile": (m_tile, tail),
        "positions_computed": spec.whole_tiles * m_tile + tail,
        "panels": npanels,
        "row_block": row_block,
        "tap_planes": ("expanded" if spec.expanded else "columns") if spec.on_planes else None,
    }
    return KernelCall(
        func=panel_conv_kernel(spec),
        name="sparse_conv2d_panel",
        consts=(recs, seg, slot_rows, bias_arr),
        out_shape=(bn, o, *dims.out_hw),
        info=info,
    )


__all__ = [
    "SPEC_ATTR",
    "PanelConvSpec",
    "default_band_rows",
    "expands_by_default",
    "is_pointwise",
    "panel_conv_kernel",
    "sparse_conv2d_panel",
    "tile_widths",
]
