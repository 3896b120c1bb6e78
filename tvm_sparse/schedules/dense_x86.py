"""Dense linear and conv2d kernels for x86 CPUs with AVX2, as scheduled TIR.

Why this exists: TVM 0.27 ships no BLAS and no x86 schedules for matmul or conv, and its
fallback is ~40x slower than onnxruntime. tvm-sparse keeps a layer dense wherever sparse does
not pay, so the dense kernels set the floor of every compiled model.

Both ops become one GEMM with a register-blocked micro-kernel:

    acc[i, j] = sum_k A[i, k] * B[j // nb, k, j % nb]

``A`` is the *broadcast* operand (``mr`` rows, one scalar broadcast per row and k), ``B`` the
*panel* operand, packed as ``[cols / nb, K, nb]`` so that one k step reads ``nb`` contiguous
floats (``nb / 8`` AVX2 registers). The ``mr x nb`` accumulator tile lives in registers
(``cache_write`` to ``local``, rows unrolled, columns vectorized) for the whole K loop.

- linear: A = the activation ``x[m, K]`` (rows padded to ``mr`` at run time, a cheap copy),
  B = the weight, packed and zero padded once in numpy (a constant).
- conv2d (groups=1): an implicit GEMM. A = ``mr`` consecutive output pixels of one row, read
  straight from the input transposed to zero padded NHWC (one cheap pass), B = the weight
  packed as ``[Co/16, KH*KW*Ci, 16]``. No im2col matrix is built: a pixel's address is affine
  in the (kh, kw, ci) loops, and the reduction reads both operands sequentially.
  (An im2col-panel version measured 2x slower on the GSC convs: the gather's index
  arithmetic cost more than the FMAs.)
- conv2d (groups>1, depthwise): a direct loop nest, correct but not tuned.

Bias and activation (relu, gelu in erf form) are fused into an epilogue that also drops the
padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir, te, tirx

from ..target import num_cores, resolve_target
from .kernel import KernelCall
from .kernel import finish as _finish

ACTIVATIONS = (None, "relu", "gelu")


@dataclass(frozen=True)
class GemmTiling:
    """The micro-kernel's knobs: ``mr`` broadcast rows x ``nb`` vector columns per tile."""

    mr: int
    nb: int
    k_unroll: int = 1  # unroll factor of the K loop (1: let LLVM decide)
    parallel: bool = True


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def choose_tiling(rows: int, cols: int, num_cores: int = 1) -> GemmTiling:
    """Pick ``mr x nb`` for a GEMM with ``rows`` broadcast rows and ``cols`` vector columns.

    AVX2 has 16 ymm registers: 6x16 (12 accumulators) or 4x16 is the classic FMA kernel. With
    few rows (batch 1..3, the memory-bound GEMV case) the tile widens instead, so there are still
    >= 8 independent FMA chains to hide the 4-cycle FMA latency. ``nb`` never exceeds the padded
    column count, so a 12-output layer does not pad to 128.
    """
    col_cap = max(16, _round_up(cols, 16))
    if rows >= 4:
        mr = min((6, 5, 4), key=lambda r: (_round_up(rows, r), -r))
        return GemmTiling(mr=mr, nb=16, parallel=num_cores > 1)
    nb = {1: 64, 2: 32, 3: 32}[rows]
    return GemmTiling(mr=rows, nb=min(nb, col_cap), parallel=num_cores > 1)


def _apply_activation(value: te.Tensor, activation: str | None):
    if activation is None:
        return value
    if activation == "relu":
        return te.max(value, tirx.const(0.0, "float32"))
    if activation == "gelu":
        half = tirx.const(0.5, "float32")
        return value * (half + half * te.erf(value * tirx.const(1.0 / math.sqrt(2.0), "float32")))
    raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")


# --------------------------------------------------------------------------------------------
# The GEMM schedule shared by linear and conv2d
# --------------------------------------------------------------------------------------------


def schedule_gemm(
    sch: s_tir.Schedule,
    tiling: GemmTiling,
    gemm_block: str = "gemm",
    epilogue_block: str | None = "epilogue",
) -> s_tir.Schedule:
    """Schedule ``acc[i, j] = sum_k A[i, k] * B[j // nb, k, j % nb]`` as a register micro-kernel.

    ``epilogue_block`` (reads ``acc``, writes the output) runs per tile, while the tile is in L1.
    Loop order: column panel, row tile, K, rows (unrolled), columns (vectorized), so one
    packed panel is reused from L2 by every row tile.
    """
    mr, nb = tiling.mr, tiling.nb
    gemm = sch.get_sblock(gemm_block)

    # Step 1. Tile: columns by nb (one packed panel), rows by mr, K whole and innermost-but-two.
    i, j, k = sch.get_loops(gemm)
    i_o, i_i = sch.split(i, [None, mr])
    j_o, j_i = sch.split(j, [None, nb])
    sch.reorder(j_o, i_o, k, i_i, j_i)

    # Step 2. Keep the mr x nb accumulators in registers for the whole K loop.
    acc_local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc_local, i_o)

    # Step 3. Epilogue (bias, activation, unpad) per tile.
    if epilogue_block is not None:
        sch.reverse_compute_at(sch.get_sblock(epilogue_block), i_o)

    # Step 4. Parallel over (column panel, row tile): threads get contiguous ranges of panels.
    if tiling.parallel:
        sch.parallel(sch.fuse(j_o, i_o))

    # Step 5. Micro-kernel: unroll rows, vectorize columns; optionally unroll K. The reduction
    # is split into init + update last (the loop primitives need an intact reduction block).
    if tiling.k_unroll > 1:
        k, k_i = sch.split(k, [None, tiling.k_unroll])
        sch.unroll(k_i)
    sch.unroll(i_i)
    sch.vectorize(j_i)
    sch.decompose_reduction(gemm, k)
    sch.vectorize(sch.get_loops(acc_local)[-1])
    return sch


def _parallel_elementwise(sch: s_tir.Schedule, block, parallel: bool) -> None:
    loops = sch.get_loops(block)
    if parallel and len(loops) >= 2:
        sch.parallel(sch.fuse(*loops[:2]) if len(loops) > 2 else loops[0])
    elif parallel:
        sch.parallel(loops[0])


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------


def pack_panels(matrix: np.ndarray, nb: int) -> np.ndarray:
    """``[cols, K]`` -> ``[ceil(cols / nb), K, nb]``, zero padded: the micro-kernel's B layout."""
    cols, depth = matrix.shape
    padded = np.zeros((_round_up(cols, nb), depth), dtype=np.float32)
    padded[:cols] = matrix
    return np.ascontiguousarray(padded.reshape(-1, nb, depth).transpose(0, 2, 1))


def linear_compute(
    m: int, k: int, n: int, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for ``act(x @ W.T + b)`` with a panel-packed weight; returns the PrimFunc's params."""
    mr, nb = tiling.mr, tiling.nb
    m_pad, n_pad = _round_up(m, mr), _round_up(n, nb)
    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n_pad // nb, k, nb), "float32", name="w_packed")
    if m_pad != m:
        zero = tirx.const(0.0, "float32")
        a = te.compute((m_pad, k), lambda i, r: te.if_then_else(i < m, x[i, r], zero), "x_pad")
    else:
        a = x
    rk = te.reduce_axis((0, k), name="k")
    acc = te.compute(
        (m_pad, n_pad),
        lambda i, j: te.sum(a[i, rk] * w[j // nb, rk, j % nb], axis=rk),
        name="gemm",
    )
    params = [x, w]
    if has_bias:
        bias = te.placeholder((n,), "float32", name="bias")
        params.append(bias)
        out = te.compute(
            (m, n), lambda i, j: _apply_activation(acc[i, j] + bias[j], activation), "epilogue"
        )
    else:
        out = te.compute((m, n), lambda i, j: _apply_activation(acc[i, j], activation), "epilogue")
    return [*params, out]


def dense_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: tvm.target.Target | None = None,
    tiling: GemmTiling | None = None,
) -> KernelCall:
    """``y[m, N] = act(x[m, K] @ weight[N, K].T + bias[N])`` as a scheduled kernel.

    The weight (torch / ONNX-Gemm transB layout) is packed here into ``[N/nb, K, nb]`` panels;
    consts are ``(packed_weight, bias?)``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    target = resolve_target(target or "llvm")
    weight = np.asarray(weight, dtype=np.float32)
    n, k = weight.shape
    tiling = tiling or choose_tiling(m, n, num_cores(target))
    params = linear_compute(m, k, n, tiling, bias is not None, activation)
    sch = s_tir.Schedule(te.create_prim_func(params))
    schedule_gemm(sch, tiling)
    consts = [pack_panels(weight, tiling.nb)]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(n))
    m_pad, n_pad = _round_up(m, tiling.mr), _round_up(n, tiling.nb)
    return KernelCall(
        func=_finish(sch.mod["main"]),
        name=f"dense_linear_m{m}_k{k}_n{n}",
        consts=tuple(consts),
        out_shape=(m, n),
        info={
            "kind": "dense_linear",
            "macs": m * n * k,
            "macs_padded": m_pad * n_pad * k,
            "tiling": tiling,
            "activation": activation,
        },
    )


# --------------------------------------------------------------------------------------------
# Conv2d
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """Static shapes of one NCHW / OIHW conv2d; padding is (top, left, bottom, right)."""

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def out_hw(self) -> tuple[int, int]:
        _, _, h, w = self.x_shape
        _, _, kh, kw = self.w_shape
        top, left, bottom, right = self.padding
        oh = (h + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.strides[0] + 1
        ow = (w + left + right - self.dilation[1] * (kw - 1) - 1) // self.strides[1] + 1
        return oh, ow

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.x_shape[0], self.w_shape[0], *self.out_hw)

    @property
    def macs(self) -> int:
        _, ci_g, kh, kw = self.w_shape
        return int(np.prod(self.out_shape)) * ci_g * kh * kw


def _input_at(x: te.Tensor, geo: ConvGeometry, n, c, oh, ow, rh, rw):
    """``x_padded[n, c, oh*s + rh*d, ow*s + rw*d]``, zero outside the input."""
    _, _, h, w = geo.x_shape
    ih = oh * geo.strides[0] + rh * geo.dilation[0] - geo.padding[0]
    iw = ow * geo.strides[1] + rw * geo.dilation[1] - geo.padding[1]
    inside = tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)
    return te.if_then_else(inside, x[n, c, ih, iw], tirx.const(0.0, "float32"))


# Relative speed of an mr x 16 tile (8..12 accumulators); 7 rows spill on AVX2.
_ROW_EFFICIENCY = {6: 1.0, 5: 0.97, 4: 0.92}


def choose_conv_tiling(out_w: int, num_cores: int = 1) -> GemmTiling:
    """``mr`` consecutive output pixels of one row x ``nb`` = 16 output channels per tile.

    Picks the row block that wastes least on padding the output width, weighted by how fast
    each tile height runs.
    """
    if out_w < 4:
        return GemmTiling(mr=out_w, nb=16, parallel=num_cores > 1)
    mr = min(_ROW_EFFICIENCY, key=lambda r: _round_up(out_w, r) / _ROW_EFFICIENCY[r])
    return GemmTiling(mr=mr, nb=16, parallel=num_cores > 1)


def _nhwc_padded_input(x: te.Tensor, geo: ConvGeometry) -> te.Tensor:
    """The input as zero padded NHWC: channels contiguous, so the reduction reads both operands
    sequentially and the loads need no bounds checks. One cheap pass over the input."""
    top, left, bottom, right = geo.padding
    n, c, h, w = geo.x_shape
    zero = tirx.const(0.0, "float32")

    def value(b, y, z, ch):
        if not any(geo.padding):
            return x[b, ch, y, z]
        inside = tirx.all(y >= top, y < top + h, z >= left, z < left + w)
        return te.if_then_else(inside, x[b, ch, y - top, z - left], zero)

    return te.compute((n, h + top + bottom, w + left + right, c), value, name="x_nhwc")


def pack_conv_weight(weight: np.ndarray, nb: int) -> np.ndarray:
    """OIHW -> ``[ceil(Co / nb), KH*KW*Ci, nb]`` (reduction order kh, kw, ci), zero padded."""
    co = weight.shape[0]
    return pack_panels(weight.transpose(0, 2, 3, 1).reshape(co, -1), nb)


def conv_implicit_gemm_compute(
    geo: ConvGeometry, tiling: GemmTiling, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for conv2d (groups=1) as an implicit GEMM: output pixels x output channels.

    ``acc[n, oh, ow, co] = sum_{kh, kw, c} x_nhwc[n, oh*s + kh*d, ow*s + kw*d, c] * W[co, c, kh,
    kw]`` with the weight packed as ``[Co / nb, KH*KW*Ci, nb]`` (channels are the vector lanes)
    and the output width padded to ``mr`` (padded pixels re-read the last real column, so every
    load stays in bounds). No im2col is built: the micro-kernel broadcasts input pixels straight
    from ``x_nhwc`` with addresses that are affine in the loops.
    """
    mr, nb = tiling.mr, tiling.nb
    batch, ci, _, _ = geo.x_shape
    co, _, kh, kw = geo.w_shape
    oh, ow = geo.out_hw
    sh, sw = geo.strides
    dh, dw = geo.dilation
    co_pad, ow_pad = _round_up(co, nb), _round_up(ow, mr)

    x = te.placeholder(geo.x_shape, "float32", name="x")
    w = te.placeholder((co_pad // nb, kh * kw * ci, nb), "float32", name="w_packed")
    xt = _nhwc_padded_input(x, geo)
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, ci), name="rc")
    last = tirx.const(ow - 1, "int32")
    acc = te.compute(  # channels innermost: the register tile is [mr pixels, nb channels]
        (batch, oh, ow_pad, co_pad),
        lambda n, y, z, c: te.sum(
            xt[n, y * sh + rh * dh, te.min(z, last) * sw + rw * dw, rc]
            * w[c // nb, (rh * kw + rw) * ci + rc, c % nb],
            axis=[rh, rw, rc],
        ),
        name="gemm",
    )
    params = [x, w]
    bias = None
    if has_bias:
        bias = te.placeholder((co,), "float32", name="bias")
        params.append(bias)

    def epilogue(n, c, y, z):
        value = acc[n, y, z, c]
        return _apply_activation(value + bias[c] if bias is not None else value, activation)

    out = te.compute(geo.out_shape, epilogue, name="epilogue")
    return [*params, out]


def schedule_conv_implicit_gemm(
    sch: s_tir.Schedule,
    tiling: GemmTiling,
    channels_outer: bool = True,
) -> s_tir.Schedule:
    """Schedule :func:`conv_implicit_gemm_compute`: an ``mr`` pixel x ``nb`` channel tile.

    ``channels_outer`` walks all pixels for one packed weight panel (panel stays in L1/L2);
    otherwise all panels for one row of pixels (the input stays in L1).
    """
    mr, nb = tiling.mr, tiling.nb
    gemm = sch.get_sblock("gemm")

    # Step 0. The NHWC padded input is one cheap parallel pass.
    _parallel_elementwise(sch, sch.get_sblock("x_nhwc"), tiling.parallel)

    # Step 1. Tile: output channels by nb (one weight panel), output width by mr.
    n, y, z, c, rh, rw, rc = sch.get_loops(gemm)
    c_o, c_i = sch.split(c, [None, nb])
    z_o, z_i = sch.split(z, [None, mr])
    outer = [c_o, n, y, z_o] if channels_outer else [n, y, z_o, c_o]
    sch.reorder(*outer, rh, rw, rc, z_i, c_i)

    # Step 2. Accumulators in registers for the whole reduction; epilogue per tile.
    acc_local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc_local, outer[-1])
    sch.reverse_compute_at(sch.get_sblock("epilogue"), outer[-1])

    # Step 3. Parallel over all tiles.
    if tiling.parallel:
        sch.parallel(sch.fuse(*outer))

    # Step 4. Micro-kernel: unroll pixels, vectorize channels.
    sch.unroll(z_i)
    sch.vectorize(c_i)
    sch.decompose_reduction(gemm, rh)
    return sch


def conv_direct_compute(
    geo: ConvGeometry, has_bias: bool, activation: str | None
) -> list[te.Tensor]:
    """TE for grouped / depthwise conv2d as a direct loop nest (correct, not tuned)."""
    co, ci_g, kh, kw = geo.w_shape
    co_g = co // geo.groups
    x = te.placeholder(geo.x_shape, "float32", name="x")
    w = te.placeholder(geo.w_shape, "float32", name="weight")
    rc = te.reduce_axis((0, ci_g), name="rc")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    conv = te.compute(
        geo.out_shape,
        lambda n, c, y, z: te.sum(
            _input_at(x, geo, n, (c // co_g) * ci_g + rc, y, z, rh, rw) * w[c, rc, rh, rw],
            axis=[rc, rh, rw],
        ),
        name="conv",
    )
    params = [x, w]
    bias = None
    if has_bias:
        bias = te.placeholder((co,), "float32", name="bias")
        params.append(bias)

    def epilogue(n, c, y, z):
        value = conv[n, c, y, z]
        return _apply_activation(value + bias[c] if bias is not None else value, activation)

    out = te.compute(geo.out_shape, epilogue, name="epilogue")
    return [*params, out]


def _schedule_direct_conv(sch: s_tir.Schedule, parallel: bool) -> s_tir.Schedule:
    """Direct conv: parallel over (n, c), output row in registers via a local accumulator."""
    conv = sch.get_sblock("conv")
    n, c, y, z, rc, rh, rw = sch.get_loops(conv)
    sch.reorder(n, c, y, rc, rh, rw, z)
    acc_local = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(acc_local, y)
    epi = sch.get_sblock("epilogue")
    sch.reverse_compute_at(epi, y)
    if parallel:
        sch.parallel(sch.fuse(n, c))
    sch.decompose_reduction(conv, rc)
    return sch


def dense_conv2d(
    x_shape: tuple[int, int, int, int],
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    activation: str | None = None,
    target: tvm.target.Target | None = None,
    tiling: GemmTiling | None = None,
) -> KernelCall:
    """``y = act(conv2d(x, weight) + bias)`` in NCHW / OIHW as a scheduled kernel.

    groups=1 runs the implicit-GEMM micro-kernel (consts = ``(weight packed as
    [Co/16, KH*KW*Ci, 16], bias?)``); groups>1 runs a direct loop nest (consts =
    ``(weight, bias?)``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
    target = resolve_target(target or "llvm")
    weight = np.asarray(weight, dtype=np.float32)
    co, ci_g, kh, kw = weight.shape
    if x_shape[1] != ci_g * groups or co % groups:
        raise ValueError(
            f"conv2d shapes disagree: x {tuple(x_shape)}, weight {weight.shape}, groups {groups}"
        )
    geo = ConvGeometry(
        tuple(int(d) for d in x_shape),
        tuple(weight.shape),
        tuple(strides),
        tuple(padding),
        tuple(dilation),
        groups,
    )
    if min(geo.out_hw) <= 0:
        raise ValueError(f"conv2d output is empty: x {tuple(x_shape)}, weight {weight.shape}")
    parallel = num_cores(target) > 1
    info = {"kind": "dense_conv2d", "macs": geo.macs, "activation": activation, "groups": groups}
    if groups == 1:
        tiling = tiling or choose_conv_tiling(geo.out_hw[1], num_cores(target))
        params = conv_implicit_gemm_compute(geo, tiling, bias is not None, activation)
        sch = s_tir.Schedule(te.create_prim_func(params))
        schedule_conv_implicit_gemm(sch, tiling)
        consts = [pack_conv_weight(weight, tiling.nb)]
        info["tiling"] = tiling
        info["macs_padded"] = (
            geo.macs
            // (co * geo.out_hw[1])
            * _round_up(co, tiling.nb)
            * _round_up(geo.out_hw[1], tiling.mr)
        )
    else:
        params = conv_direct_compute(geo, bias is not None, activation)
        sch = _schedule_direct_conv(s_tir.Schedule(te.create_prim_func(params)), parallel)
        consts = [np.ascontiguousarray(weight)]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(co))
    return KernelCall(
        func=_finish(sch.mod["main"]),
        name=f"dense_conv2d_{'x'.join(map(str, x_shape))}_w{'x'.join(map(str, weight.shape))}",
        consts=tuple(consts),
        out_shape=geo.out_shape,
        info=info,
    )
