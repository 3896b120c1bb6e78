"""Residual add + LayerNorm over the last axis in one pass over the rows, as block-free TIR.

Why: a post-LN transformer block ends in ``layer_norm(sublayer_out + residual)``. TVM runs the
add as one kernel (reads two tensors, writes one) and the layer norm as another (reads it back
twice). This kernel reads both inputs once, keeps the row's sum in a small scratch that stays in
L1, and writes the normalized row: about a third of the memory traffic, all of it a vector
wide (16 lanes on AVX-512, 8 on AVX2: ``target.vector_lanes``).

Matches ``relax.nn.layer_norm`` (population variance, ``(x - mean) / sqrt(var + eps) * gamma +
beta``); the mean and variance are computed in two passes over the row in L1, which is at least
as accurate as TVM's one-pass form. NaN / Inf propagate as in the unfused ops.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ..target import vector_lanes
from .kernel import KernelCall, finish


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for s in shape:
        total *= int(s)
    return total


def _normalize_macro(lanes: int, nvec: int, ntail: int, inv_c: float, epsilon: float):
    """Passes 2 and 3 over a row of ``src`` from ``src_base`` (``nvec`` vectors, ``ntail``
    more): the variance around ``mean``, then ``(v - mean) * rstd * gamma + beta`` into ``of``
    from ``base``. Shared by the row kernels; ``part`` and ``stat`` are their scratch."""

    @T.macro
    def normalize(src, src_base, of, base, mean, part, stat, gamma, beta):
        for lane in T.vectorized(lanes):
            part[lane] = T.float32(0)
        for i0 in range(nvec):
            for lane in T.vectorized(lanes):
                d: T.let = src[src_base + i0 * lanes + lane] - mean
                part[lane] = part[lane] + d * d
        stat[1] = T.float32(0)
        for it in range(ntail):
            stat[1] = stat[1] + (src[src_base + nvec * lanes + it] - mean) * (
                src[src_base + nvec * lanes + it] - mean
            )
        for lane in range(lanes):
            stat[1] = stat[1] + part[lane]
        rstd: T.let = T.float32(1) / T.sqrt(stat[1] * T.float32(inv_c) + T.float32(epsilon))
        for i0 in range(nvec):
            for lane in T.vectorized(lanes):
                i: T.let = i0 * lanes + lane
                of[base + i] = (src[src_base + i] - mean) * rstd * gamma[i] + beta[i]
        for it in range(ntail):
            i: T.let = nvec * lanes + it
            of[base + i] = (src[src_base + i] - mean) * rstd * gamma[i] + beta[i]

    return normalize


def add_layer_norm_kernel(
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    epsilon: float,
    parallel: bool = True,
    target=None,
) -> KernelCall:
    """``out = layer_norm(a + b)`` over the last axis; the kernel is ``(a, b, gamma, beta, out)``.

    ``a`` and ``b`` hold the same values in the same row-major order as ``out`` (any shapes with
    the same number of elements: a reshape in front costs nothing). No constants: gamma and
    beta are arguments, as in the graph. ``target`` sets the vector width (None: AVX2's 8).
    """
    channels = int(out_shape[-1])
    total = _numel(out_shape)
    if _numel(a_shape) != total or _numel(b_shape) != total or channels < 1:
        raise ValueError(f"add_layer_norm: shapes {a_shape}, {b_shape} do not match {out_shape}")
    rows_n = total // channels
    _LANES = vector_lanes(target)  # noqa: N806 (a constant of the TIR below)
    nvec = channels // _LANES
    ntail = channels - nvec * _LANES
    inv_c = 1.0 / channels
    rows = T.parallel if parallel else T.serial
    normalize = _normalize_macro(_LANES, nvec, ntail, inv_c, epsilon)

    @T.prim_func
    def kernel(
        a: T.Buffer(a_shape, "float32"),
        b: T.Buffer(b_shape, "float32"),
        gamma: T.Buffer((channels,), "float32"),
        beta: T.Buffer((channels,), "float32"),
        out: T.Buffer(out_shape, "float32"),
    ):
        af = T.decl_buffer((total,), "float32", data=a.data)
        bf = T.decl_buffer((total,), "float32", data=b.data)
        of = T.decl_buffer((total,), "float32", data=out.data)
        for r in rows(rows_n):
            row = T.alloc_buffer((channels,), "float32", scope="global")
            part = T.alloc_buffer((_LANES,), "float32", scope="local")
            stat = T.alloc_buffer((2,), "float32", scope="local")
            base: T.let = r * channels
            # pass 1: the sum, kept for the next passes, and its 8 partial sums
            for lane in T.vectorized(_LANES):
                part[lane] = T.float32(0)
            for i0 in range(nvec):
                for lane in T.vectorized(_LANES):
                    v: T.let = af[base + i0 * _LANES + lane] + bf[base + i0 * _LANES + lane]
                    row[i0 * _LANES + lane] = v
                    part[lane] = part[lane] + v
            stat[0] = T.float32(0)
            for it in range(ntail):
                row[nvec * _LANES + it] = (
                    af[base + nvec * _LANES + it] + bf[base + nvec * _LANES + it]
                )
                stat[0] = stat[0] + row[nvec * _LANES + it]
            for lane in range(_LANES):
                stat[0] = stat[0] + part[lane]
            mean: T.let = stat[0] * T.float32(inv_c)
            # passes 2 and 3: the variance around that mean; normalize, scale, shift
            normalize(row, 0, of, base, mean, part, stat, gamma, beta)

    return KernelCall(
        func=finish(kernel),
        name="add_layer_norm",
        consts=(),
        out_shape=tuple(int(s) for s in out_shape),
        info={"kernel": "add_layer_norm", "rows": rows_n, "channels": channels, "lanes": _LANES},
    )


def layer_norm_kernel(
    shape: tuple[int, ...], epsilon: float, parallel: bool = True, target=None
) -> KernelCall:
    """``out = layer_norm(x)`` over the last axis of ``shape``; the kernel is ``(x, gamma, beta,
    out)``. The same three passes over each row as ``add_layer_norm_kernel``, reading ``x``
    directly (no sum to keep). TVM's own schedule of ``relax.nn.layer_norm`` on a single row
    (a ``[1, C]`` feature vector before a classifier head) recomputes the mean for each element:
    about 1 ms for C = 768 at 1 thread, where this kernel takes microseconds."""
    channels = int(shape[-1])
    total = _numel(shape)
    if channels < 1:
        raise ValueError(f"layer_norm: shape {shape} has no channels")
    rows_n = total // channels
    _LANES = vector_lanes(target)  # noqa: N806 (a constant of the TIR below)
    nvec = channels // _LANES
    ntail = channels - nvec * _LANES
    inv_c = 1.0 / channels
    rows = T.parallel if parallel else T.serial
    normalize = _normalize_macro(_LANES, nvec, ntail, inv_c, epsilon)

    @T.prim_func
    def kernel(
        x: T.Buffer(shape, "float32"),
        gamma: T.Buffer((channels,), "float32"),
        beta: T.Buffer((channels,), "float32"),
        out: T.Buffer(shape, "float32"),
    ):
        xf = T.decl_buffer((total,), "float32", data=x.data)
        of = T.decl_buffer((total,), "float32", data=out.data)
        for r in rows(rows_n):
            part = T.alloc_buffer((_LANES,), "float32", scope="local")
            stat = T.alloc_buffer((2,), "float32", scope="local")
            base: T.let = r * channels
            for lane in T.vectorized(_LANES):
                part[lane] = T.float32(0)
            for i0 in range(nvec):
                for lane in T.vectorized(_LANES):
                    part[lane] = part[lane] + xf[base + i0 * _LANES + lane]
            stat[0] = T.float32(0)
            for it in range(ntail):
                stat[0] = stat[0] + xf[base + nvec * _LANES + it]
            for lane in range(_LANES):
                stat[0] = stat[0] + part[lane]
            mean: T.let = stat[0] * T.float32(inv_c)
            normalize(xf, base, of, base, mean, part, stat, gamma, beta)

    return KernelCall(
        func=finish(kernel),
        name="layer_norm_rows",
        consts=(),
        out_shape=tuple(int(s) for s in shape),
        info={"kernel": "layer_norm_rows", "rows": rows_n, "channels": channels, "lanes": _LANES},
    )


def channels_first_layer_norm_kernel(
    shape: tuple[int, ...], epsilon: float, parallel: bool = True, target=None
) -> KernelCall:
    """LayerNorm over axis 1 of ``shape = (N, C, *spatial)``, in that layout: what
    ``permute(NCHW -> NHWC) -> layer_norm(last axis) -> permute(NHWC -> NCHW)`` computes
    (ConvNeXt's stem and downsampling norms, torchvision's ``LayerNorm2d``), without the two
    transposes. The kernel is ``(x, gamma, beta, out)``.

    The statistics of a vector of pixels (``target.vector_lanes`` of them) are accumulated over
    the channels with the pixels in the lanes: each channel's values of those pixels are
    contiguous, so every pass is a vector load per channel and the block of ``C x lanes``
    values stays in L1 across the three passes (mean, variance around it, normalize). The
    pixels past the last full vector go through the same passes one at a time.
    """
    if len(shape) < 3:
        raise ValueError(f"channels-first layer_norm: shape {shape} has no spatial axes")
    n_batch, channels = int(shape[0]), int(shape[1])
    pixels = _numel(shape[2:])
    total = n_batch * channels * pixels
    _LANES = vector_lanes(target)  # noqa: N806 (a constant of the TIR below)
    npv = pixels // _LANES
    ptail = pixels - npv * _LANES
    npv_d, ptail_d = max(npv, 1), max(ptail, 1)  # divisors (a loop of 0 jobs does not run)
    inv_c = 1.0 / channels
    outer = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer(shape, "float32"),
        gamma: T.Buffer((channels,), "float32"),
        beta: T.Buffer((channels,), "float32"),
        out: T.Buffer(shape, "float32"),
    ):
        xf = T.decl_buffer((total,), "float32", data=x.data)
        of = T.decl_buffer((total,), "float32", data=out.data)
        for job in outer(n_batch * npv):
            mean = T.alloc_buffer((_LANES,), "float32", scope="local")
            acc = T.alloc_buffer((_LANES,), "float32", scope="local")
            base: T.let = (job // npv_d) * channels * pixels + (job % npv_d) * _LANES
            for lane in T.vectorized(_LANES):
                acc[lane] = T.float32(0)
            for c in range(channels):
                for lane in T.vectorized(_LANES):
                    acc[lane] = acc[lane] + xf[base + c * pixels + lane]
            for lane in T.vectorized(_LANES):
                mean[lane] = acc[lane] * T.float32(inv_c)
                acc[lane] = T.float32(0)
            for c in range(channels):
                for lane in T.vectorized(_LANES):
                    d: T.let = xf[base + c * pixels + lane] - mean[lane]
                    acc[lane] = acc[lane] + d * d
            for lane in T.vectorized(_LANES):
                acc[lane] = T.float32(1) / T.sqrt(acc[lane] * T.float32(inv_c) + T.float32(epsilon))
            for c in range(channels):
                for lane in T.vectorized(_LANES):
                    of[base + c * pixels + lane] = (
                        xf[base + c * pixels + lane] - mean[lane]
                    ) * acc[lane] * gamma[c] + beta[c]
        for job in outer(n_batch * ptail):
            stat = T.alloc_buffer((2,), "float32", scope="local")
            base: T.let = (job // ptail_d) * channels * pixels + npv * _LANES + job % ptail_d
            stat[0] = T.float32(0)
            for c in range(channels):
                stat[0] = stat[0] + xf[base + c * pixels]
            mean: T.let = stat[0] * T.float32(inv_c)
            stat[1] = T.float32(0)
            for c in range(channels):
                stat[1] = stat[1] + (xf[base + c * pixels] - mean) * (xf[base + c * pixels] - mean)
            rstd: T.let = T.float32(1) / T.sqrt(stat[1] * T.float32(inv_c) + T.float32(epsilon))
            for c in range(channels):
                of[base + c * pixels] = (xf[base + c * pixels] - mean) * rstd * gamma[c] + beta[c]

    return KernelCall(
        func=finish(kernel),
        name="layer_norm_channels_first",
        consts=(),
        out_shape=tuple(int(s) for s in shape),
        info={"kernel": "layer_norm_channels_first", "channels": channels, "pixels": pixels},
    )
