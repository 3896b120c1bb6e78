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
            # pass 2: the variance around that mean
            for lane in T.vectorized(_LANES):
                part[lane] = T.float32(0)
            for i0 in range(nvec):
                for lane in T.vectorized(_LANES):
                    d: T.let = row[i0 * _LANES + lane] - mean
                    part[lane] = part[lane] + d * d
            stat[1] = T.float32(0)
            for it in range(ntail):
                stat[1] = stat[1] + (row[nvec * _LANES + it] - mean) * (
                    row[nvec * _LANES + it] - mean
                )
            for lane in range(_LANES):
                stat[1] = stat[1] + part[lane]
            rstd: T.let = T.float32(1) / T.sqrt(stat[1] * T.float32(inv_c) + T.float32(epsilon))
            # pass 3: normalize, scale, shift
            for i0 in range(nvec):
                for lane in T.vectorized(_LANES):
                    i: T.let = i0 * _LANES + lane
                    of[base + i] = (row[i] - mean) * rstd * gamma[i] + beta[i]
            for it in range(ntail):
                i: T.let = nvec * _LANES + it
                of[base + i] = (row[i] - mean) * rstd * gamma[i] + beta[i]

    return KernelCall(
        func=finish(kernel),
        name="add_layer_norm",
        consts=(),
        out_shape=tuple(int(s) for s in out_shape),
        info={"kernel": "add_layer_norm", "rows": rows_n, "channels": channels, "lanes": _LANES},
    )
