"""Sparse kernels for CUDA GPUs, as block-free TIR with explicit thread bindings.

The builders mirror ``sparse_x86`` / ``sparse_sparse_x86`` (same signatures, same ``KernelCall``
contract: ``func(activation, *consts, out)``), so the rewrite passes need no change to use them.

Three kernel families:

- ``warp rows`` (CSR or BSR, batch <= ``warp_batch``): one warp per (block) row. The 32 lanes walk
  the row's stored entries with stride 32, so value and index loads are coalesced; each lane keeps
  ``m * r`` partial sums, and five ``__shfl_down_sync`` steps reduce them. BSR values are stored
  per block row as ``r`` strips (``[r, blocks * c]``) so the lanes read them contiguously too.
- ``panel tile`` (CSR or BSR, larger batch): a thread block owns ``warps`` block rows and a tile
  of ``bt`` samples; the activations of one column panel are staged transposed in shared memory
  (``xs[col, sample]``, row stride ``bt + 1`` so neither the store nor the load conflicts) and
  every weight entry, loaded once per warp, multiplies ``bt`` samples. Lanes are
  ``(32 / bt) x bt``: the ``32 / bt`` lane groups split the row's entries and are reduced by
  shuffles at the end.
- ``sparse-sparse`` (complementary packing): per sample, ``splits`` thread blocks each own a
  chunk of the inputs. A block compacts its non-zero inputs into shared memory (a shared atomic
  counter hands out slots), then spreads ``active x G`` packed slots over its threads, each doing
  ``atomicAdd`` into a shared accumulator (global when ``N + G`` floats do not fit), which is
  flushed with global atomics; a last kernel adds bias and activation. Summation order therefore
  varies from run to run (float rounding only).

The loop nests are in ``sparse_cuda_kernels``; the dense baseline they are compared with is
``dense_cuda.dense_linear``; the families the per-layer choice lists are in ``kernels/cuda_*``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..formats.bsr import BSR
from ..formats.complementary import ComplementaryPacked
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info
from .panel_packing import pack_column_panels
from .scatter_tables import ScatterTables, scatter_tables
from .sparse_cuda_kernels import panel_tile_kernel, sparse_sparse_kernel, warp_rows_kernel

_SHARED_BUDGET = 40 * 1024  # bytes of static shared memory a kernel may take (48 KiB limit)
_SHARED_LIMIT = 48 * 1024


def panel_tile_fits(panel_cols: int, batch_tile: int) -> bool:
    """Whether a panel tile's x panel (``batch_tile`` samples + 1 row of ``panel_cols``
    floats) fits the 48 KiB of static shared memory a block may take."""
    return panel_cols * (batch_tile + 1) * 4 <= _SHARED_LIMIT


def pow2_at_least(v: int, cap: int = 32) -> int:
    p = 1
    while p < min(v, cap):
        p *= 2
    return p


def pack_block_strips(bsr: BSR) -> np.ndarray:
    """BSR values laid out per block row as ``r`` strips of ``blocks * c`` (coalesced per lane).

    Block row ``ib`` with blocks ``lo..hi`` (``nb = hi - lo``) owns values
    ``[lo * r * c, hi * r * c)``; entry ``(block lo + t, row a, col e)`` sits at
    ``lo * r * c + a * nb * c + t * c + e``. For CSR (1x1 blocks) this is the CSR value array.
    """
    r, c = bsr.block
    ptr = bsr.indptr.astype(np.int64)
    counts = np.diff(ptr)
    j = np.arange(bsr.nblocks)
    lo = np.repeat(ptr[:-1], counts)
    nb = np.repeat(counts, counts)
    a = np.arange(r)[None, :, None]
    e = np.arange(c)[None, None, :]
    dest = (lo * r * c)[:, None, None] + a * (nb * c)[:, None, None] + ((j - lo) * c)[:, None, None]
    dest = dest + e
    out = np.zeros(bsr.nblocks * r * c, dtype=np.float32)
    out[dest.reshape(-1)] = bsr.data.reshape(-1)
    return out


def gpu_scatter_tables(packed: ComplementaryPacked) -> ScatterTables:
    """The CPU scalar-scatter layout (input-major, G slots an input, a dummy owner per empty
    slot so their atomics do not all hit one address) with int32 indices: GPUs load words."""
    tab = scatter_tables(packed, vector=False)
    return dataclasses.replace(
        tab,
        owner=tab.owner.astype(np.int32),
        res_ptr=tab.res_ptr.astype(np.int32),
        res_owner=tab.res_owner.astype(np.int32),
    )


def _block_linear(name, m, weight, block, bias, activation, warp_batch, warps, batch_tile,
                  panel_cols) -> KernelCall:  # fmt: skip
    """The shared body of ``csr_linear`` (1x1 blocks) and ``bsr_linear``."""
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    bsr = BSR.from_dense(weight, block)
    r, c = bsr.block
    bias_arr, has_bias = _bias_const(bias, n)
    fmt = bsr.stats()
    if m <= warp_batch and m * r <= 32:
        vals = pack_block_strips(bsr)
        cols, ptr = np.ascontiguousarray(bsr.indices), np.ascontiguousarray(bsr.indptr)
        if bsr.nblocks == 0:
            vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
        func = warp_rows_kernel(
            m, n, k, (r, c), vals.size, cols.size, str(cols.dtype), str(ptr.dtype), bias_arr.size,
            has_bias, activation, warps,
        )  # fmt: skip
        info = _linear_info(
            "cuda_warp_rows", m, n, k, bsr.nnz, bsr.stored,
            vals.nbytes + cols.nbytes + ptr.nbytes, {"format": fmt, "warps": warps},
        )  # fmt: skip
        consts = (vals, cols, ptr, bias_arr)
    else:
        bt = batch_tile or pow2_at_least(m)
        if bt not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"batch_tile must be a power of two <= 32, got {bt}")
        if panel_cols is None:
            panel_cols = max(c, (_SHARED_BUDGET // 4 // (bt + 1)) // c * c)
        panel_cols = max(c, panel_cols // c * c)
        if not panel_tile_fits(panel_cols, bt):
            raise ValueError(f"panel_cols={panel_cols} x batch_tile={bt} exceeds shared memory")
        vals, cols, seg, npanels = pack_column_panels(bsr, panel_cols)
        if bsr.nblocks == 0:
            vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
        func = panel_tile_kernel(
            m, n, k, (r, c), vals.size, cols.size, npanels, panel_cols, str(cols.dtype),
            str(seg.dtype), bias_arr.size, has_bias, activation, warps, bt,
        )  # fmt: skip
        info = _linear_info(
            "cuda_panel_tile", m, n, k, bsr.nnz, bsr.stored,
            vals.nbytes + cols.nbytes + seg.nbytes,
            {"format": fmt, "warps": warps, "batch_tile": bt, "panel_cols": panel_cols,
             "panels": npanels},
        )  # fmt: skip
        consts = (vals, cols, seg, bias_arr)
    return KernelCall(func=_finish(func), name=name, consts=consts, out_shape=(m, n), info=info)


def csr_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    warp_batch: int = 4,
    warps: int = 4,
    batch_tile: int | None = None,
    panel_cols: int | None = None,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored CSR, on a CUDA GPU.

    Knobs: ``warp_batch`` (up to this batch, the warp-per-row kernel with ``m`` sums per lane),
    ``warps`` (warps per thread block), ``batch_tile`` (samples per tile of the panel kernel,
    a power of two <= 32; default the next power of two >= m), ``panel_cols`` (columns of x per
    shared-memory panel; default fills ~40 KiB). ``target`` is accepted for symmetry.
    """
    return _block_linear(
        "csr_linear", m, weight, (1, 1), bias, activation, warp_batch, warps, batch_tile,
        panel_cols,
    )  # fmt: skip


def bsr_linear(
    m: int,
    weight: np.ndarray,
    block: tuple[int, int],
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    warp_batch: int = 4,
    warps: int = 4,
    batch_tile: int | None = None,
    panel_cols: int | None = None,
) -> KernelCall:
    """Like ``csr_linear`` with the weight stored BSR with ``block=(r, c)`` (padded inside).

    The warp kernel keeps ``m * r`` sums per lane, so it is used while ``m * r <= 32``.
    """
    return _block_linear(
        "bsr_linear", m, weight, tuple(block), bias, activation, warp_batch, warps, batch_tile,
        panel_cols,
    )  # fmt: skip


def sparse_sparse_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    max_groups: int | None = None,
    threads: int = 256,
    chunk: int = 512,
    shared_acc: bool | None = None,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight[N, K].T + bias), skipping zeros of x and of the weight.

    The weight is complementary-packed (``ComplementaryPacked``, ``max_groups`` = budget G).
    Knobs: ``threads`` per block, ``chunk`` inputs per block (``ceil(K / chunk)`` blocks per
    sample), ``shared_acc`` (accumulate in shared memory; default when ``N + G`` floats fit).
    """
    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    tab = gpu_scatter_tables(ComplementaryPacked.from_dense(weight, max_groups))
    bias_arr, has_bias = _bias_const(bias, n)
    chunk = max(1, min(chunk, k))
    fits = (tab.acc_size + chunk + 1) * 4 <= _SHARED_BUDGET
    if shared_acc is None:
        shared_acc = fits
    elif shared_acc and not fits:
        raise ValueError(f"N + G = {tab.acc_size} accumulators do not fit in shared memory")
    func = sparse_sparse_kernel(
        m, tab, bias_arr.size, has_bias, activation, threads, chunk, shared_acc
    )
    info = {
        "kernel": "cuda_sparse_sparse",
        "m": m,
        "n": n,
        "k": k,
        "nnz_weights": int(tab.packed.nnz),
        "weight_density": tab.packed.nnz / (n * k) if n * k else 0.0,
        "packing": tab.packed.stats(),
        "macs_dense": m * n * k,
        "kernel_macs_per_unit_density": float(m * (tab.groups * k + tab.residual_nnz)),
        "weight_bytes": tab.nbytes,
        "shared_acc": bool(shared_acc),
        "chunk": chunk,
        "threads": threads,
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_sparse_linear",
        consts=(tab.values, tab.owner, tab.res_ptr, tab.res_owner, tab.res_values, bias_arr),
        out_shape=(m, n),
        info=info,
    )
