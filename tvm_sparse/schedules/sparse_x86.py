"""Sparse-weight x dense-activation kernels for x86 CPUs (AVX2 + FMA), as block-free TIR.

Every builder takes the dense float32 weight (torch / Gemm-transB layout ``[N, K]``, conv OIHW),
packs it into the layout its kernel streams, and returns a ``KernelCall`` whose PrimFunc takes
``(activation, *consts, out)``. The kernels are written as plain TIR loops over static shapes
(closures over Python ints), because their reduction extents are data dependent.

Three kernels, picked by shape:

- ``rows`` (CSR, batch < ``min_batch``): one output row is a dot product of the row's non-zeros
  with ``x`` gathered at their columns. Rows are padded to chunks of 8 non-zeros; a chunk's
  indices are split out of int64 words in general-purpose registers and its 8 activations are
  loaded as scalars into one vector for an 8-wide FMA (twice as fast as ``vgatherdps`` on Zen 3).
- ``panel`` (CSR or BSR, batch >= ``min_batch``): ``x`` is transposed inside the kernel to
  ``xT[K, m]`` so one weight non-zero multiplies a contiguous vector of batch values:
  ``yT[n, :] += w[n, k] * xT[k, :]``, with the ``yT`` tile held in registers.
- ``block`` (BSR, small batch): one block row at a time, vectorized over the block.

The kernels live in ``sparse_rows_x86``, ``sparse_panel_x86`` and ``sparse_block_x86``, their
weight packing in ``panel_packing``; ``sparse_conv2d`` (the direct sparse convolution) lives in
``sparse_conv_x86``. This module picks the kernel and re-exports what callers use.

Padding entries (zeros added to fill a vector) multiply activations the row already reads, so a
finite activation gives exactly the dense result (up to summation order); NaN / Inf weights
propagate as they would in the dense product.
"""

from __future__ import annotations

import numpy as np

from ..formats.bsr import BSR
from ..formats.csr import CSR
from ..target import vector_lanes
from ._epilogue import ACTIVATIONS
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .sparse_block_x86 import bsr_block_call
from .sparse_conv_x86 import sparse_conv2d
from .sparse_panel_x86 import panel_call, tiles_shape
from .sparse_rows_x86 import csr_rows_call


def epilogue_lanes(target) -> int:
    """The panel kernel's width for a heavy activation: 16 lanes where the target has AVX-512
    (Zen 4 included: its 512-bit ops cost two halves, as two ymm ops would), else 8."""
    return 16 if vector_lanes(target) >= 16 else 8


def csr_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    min_batch: int = 5,
    row_batch: int = 2,
    m_tile: int | None = None,
    panel_cols: int | None = None,
    row_block: int | None = None,
    parallel: bool = True,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored CSR.

    Knobs: ``min_batch`` (from this batch on the transposed-panel kernel is used; below it the
    row kernel), ``row_batch`` (batch rows the row kernel serves per decoded chunk), ``m_tile``
    (batch lanes per register tile of the panel kernel; None: ``batch_tile``'s rule),
    ``panel_cols`` (weight columns per panel; default keeps a panel's activations in L1),
    ``row_block`` (output rows whose partial sums stay in cache while all panels pass),
    ``parallel`` (row blocks over threads).
    """
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    csr = CSR.from_dense(weight)
    bias_arr, has_bias = _bias_const(bias, n)
    if m >= min_batch:
        bsr = BSR.from_dense(weight, (1, 1))
        return panel_call(
            "csr_linear",
            m,
            bsr,
            bias_arr,
            has_bias,
            activation,
            m_tile,
            panel_cols,
            row_block,
            parallel,
            epilogue_lanes=epilogue_lanes(target),
        )
    return csr_rows_call(m, csr, bias_arr, has_bias, activation, row_batch, parallel)


def bsr_linear(
    m: int,
    weight: np.ndarray,
    block: tuple[int, int],
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    min_batch: int = 2,
    m_tile: int | None = None,
    panel_cols: int | None = None,
    row_block: int | None = None,
    parallel: bool = True,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored BSR with ``block=(r, c)``.

    Shapes that are not multiples of the block are padded inside. ``m_tile`` defaults to about
    64 / r batch lanes so the ``r x m_tile`` accumulator tile fits the 16 ymm registers.
    """
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    bsr = BSR.from_dense(weight, block)
    r, c = bsr.block
    bias_arr, has_bias = _bias_const(bias, n)
    if m >= min_batch:
        return panel_call(
            "bsr_linear",
            m,
            bsr,
            bias_arr,
            has_bias,
            activation,
            m_tile,
            panel_cols,
            row_block,
            parallel,
            widest_tile=max(8, (64 // r) // 8 * 8),
            epilogue_lanes=epilogue_lanes(target),
        )
    return bsr_block_call(m, bsr, bias_arr, has_bias, activation, parallel)


__all__ = [
    "ACTIVATIONS",
    "bsr_linear",
    "csr_linear",
    "tiles_shape",
    "sparse_conv2d",
]
