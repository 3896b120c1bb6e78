"""A dense tap-plane conv and the 3x3 stride-2 max pool after it, as one kernel (x86).

Why: every ResNet (and ResNeXt, DenseNet) starts with a 7x7 stride-2 conv to 64 x 112 x 112
and a 3x3 stride-2 max pool to 56 x 56. Apart, the conv writes its 3 MiB output past L2 and the
pool reads it back from L3 (ResNet-50 at 90%, Intel Xeon, 1 thread: conv 1746 us and pool 247
us, 11% of the model). Here the conv's position tiles fill a band of ``R`` output rows in a
scratch that stays in L2, and the pool reduces the band's rows into ``R / 2`` pooled rows at
once; only the pooled quarter is written. The band keeps the row before it (the previous band's
last, ``-inf`` above the first), the top of the first pool window of each band.

The conv part is ``dense_conv_planes_x86``'s (tap planes of the whole sample, register tiles of
``mr`` channels x ``vectors`` position vectors); the pool part is ``pool_x86``'s (the window
rows reduced into a ``-inf`` padded line, then the even lanes of two vectors per tap column).
Taken where a band is a whole number of position tiles (``band_rows``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ._epilogue import register_activation
from .dense_conv_planes_x86 import tile_macro
from .kernel import finish
from .sparse_conv_planes_x86 import PlaneConvSpec, tap_planes_macro

# the pool this kernel applies: window, stride and padding (both axes), floor mode
POOL_WINDOW, POOL_STRIDE, POOL_PADDING = 3, 2, 1
# most conv output rows in a band: 64 x 16 x 112 floats is 448 KiB, a quarter of an L2
MAX_BAND_ROWS = 16


def band_rows(spec: PlaneConvSpec) -> int | None:
    """The fewest conv output rows per band: even, a whole number of position tiles, and
    dividing the output's rows; None where there is no such band (the kernel does not apply)."""
    oh, ow = spec.out_hw
    for rows in range(2, MAX_BAND_ROWS + 1, 2):
        if rows * ow % spec.tile == 0 and oh % rows == 0:
            return rows
    return None


def applies(spec: PlaneConvSpec) -> bool:
    """Whether this kernel can run the conv of ``spec`` with the pool after it: ungrouped, an
    activation applied in registers, even output sides and a band of whole tiles."""
    oh, ow = spec.out_hw
    return (
        spec.groups == 1
        and not spec.residual
        and register_activation(spec.activation) == spec.activation
        and oh % 2 == 0
        and ow % 2 == 0
        and band_rows(spec) is not None
    )


def pooled_hw(spec: PlaneConvSpec) -> tuple[int, int]:
    """The pool's output rows and columns (3x3, stride 2, padding 1, floor, even sides)."""
    oh, ow = spec.out_hw
    return oh // 2, ow // 2


def conv_maxpool_kernel(spec: PlaneConvSpec) -> tvm.tirx.PrimFunc:
    """Params ``x, wp, toffs, bias, y``: the dense planes kernel's, ``y`` pooled."""
    if not applies(spec):
        raise ValueError(f"conv + max pool: no band of whole tiles for {spec.out_hw} outputs")
    bn, ci, h, wd = spec.x_shape
    o, (oh, ow) = spec.o, spec.out_hw
    ph, pw = pooled_hw(spec)
    rows = band_rows(spec)
    kept = rows + 1  # the band's rows and the one before it
    L = spec.lanes
    tile, mr, taps = spec.tile, spec.ogroup, spec.nnz
    ngroups = -(-o // mr)
    band_tiles = rows * ow // tile
    nbands = oh // rows
    total = spec.planes * spec.plane_size
    padded_copy = spec.padded_copy
    hp, wp_ = spec.padded_hw
    loop, samples = spec.inner_loop, spec.sample_loop
    chw = ci * h * wd
    line_w = -(-(ow + 2 + 2 * L) // L) * L
    full = ow // L
    neg = T.float32(-np.inf)
    fill = tap_planes_macro(spec)

    def band_at(nb, oc, p0):  # row 1 onwards of channel oc's rows in the band scratch
        return oc * kept * ow + ow + p0 % (rows * ow)

    channel_tile = tile_macro(spec, taps, out_at=band_at)
    # pooled columns past the whole vectors taken as one half vector, if there are that many
    half = L // 2 if pw % L >= L // 2 else 0

    def columns(line, first, lanes):  # pooled outputs from line column `first` on
        evens = list(range(0, 2 * lanes, 2))
        value = T.Shuffle([line[T.ramp(first, 1, 2 * lanes)]], evens)
        for kx in range(1, POOL_WINDOW):
            value = T.max(value, T.Shuffle([line[T.ramp(first + kx, 1, 2 * lanes)]], evens))
        return value

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        wp: T.Buffer((ngroups * taps * mr,), "float32"),
        toffs: T.Buffer((taps,), "int32"),
        bias: T.Buffer((spec.nbias,), "float32"),
        y: T.Buffer((bn, o, ph, pw), "float32"),
    ):
        yf = T.decl_buffer((bn * o * ph * pw,), "float32", data=y.data)
        xflat = T.decl_buffer((bn * chw,), "float32", data=x.data)
        for nb in samples(bn):
            xs = T.alloc_buffer((total + tile,), "float32", scope="global")
            xp = T.alloc_buffer((ci * hp * wp_ if padded_copy else 1,), "float32", scope="global")
            band = T.alloc_buffer((o * kept * ow,), "float32", scope="global")
            for e in T.vectorized(tile):
                xs[total + e] = T.float32(0)
            fill(x, xflat, xp, xs, nb)
            for c in loop(o):  # the pool's top padding: the row before the first band
                for e in range(ow):
                    band[c * kept * ow + e] = neg
            for b in range(nbands):
                for tg in loop(band_tiles * ngroups):
                    tail = T.alloc_buffer((tile,), "float32", scope="global")
                    channel_tile(
                        xs, wp, toffs, bias, band, tail, nb, tg % ngroups,
                        b * rows * ow + tg // ngroups * tile,
                    )  # fmt: skip
                for c in loop(o):
                    line = T.alloc_buffer((line_w,), "float32", scope="global")
                    line[0] = neg  # the pool's left padding
                    for j in range(rows // 2):
                        src: T.let = (c * kept + 2 * j) * ow  # band rows 2j .. 2j + 2
                        for v in range(full):  # the window's rows reduced, at column 1
                            line[T.ramp(1 + v * L, 1, L)] = T.max(
                                T.max(
                                    band[T.ramp(src + v * L, 1, L)],
                                    band[T.ramp(src + ow + v * L, 1, L)],
                                ),
                                band[T.ramp(src + 2 * ow + v * L, 1, L)],
                            )
                        for e in range(full * L, ow):
                            line[1 + e] = T.max(
                                T.max(band[src + e], band[src + ow + e]), band[src + 2 * ow + e]
                            )
                        out: T.let = ((nb * o + c) * ph + b * (rows // 2) + j) * pw
                        for u in range(pw // L):
                            yf[T.ramp(out + u * L, 1, L)] = columns(line, 2 * u * L, L)
                        if half > 0:
                            yf[T.ramp(out + pw // L * L, 1, L // 2)] = columns(
                                line, 2 * (pw // L * L), L // 2
                            )
                        for u in range(pw // L * L + half, pw):
                            yf[out + u] = T.max(
                                T.max(line[2 * u], line[2 * u + 1]), line[2 * u + 2]
                            )
                    for e in range(ow):  # the band's last row: the next band's row before
                        band[c * kept * ow + e] = band[(c * kept + rows) * ow + e]

    return finish(kernel)
