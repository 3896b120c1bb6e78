"""Sparse kernels for CUDA GPUs, as block-free TIR with explicit thread bindings.

The builders mirror ``sparse_x86`` / ``sparse_sparse_x86`` (same signatures, same ``KernelCall``
contract: ``func(activation, *consts, out)``), so the rewrite passes need no change to use them.
Every PrimFunc is already scheduled (``tirx.is_scheduled``): dlight leaves it alone.

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

``dense_linear`` is TE + dlight's GPU rules (Matmul / GEMV / LowBatchGEMV), the comparison
baseline. ``cuda_candidates`` lists these kernels for the per-layer choice on CUDA targets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats.bsr import BSR
from ..formats.complementary import ComplementaryPacked
from ._epilogue import ACTIVATIONS
from ._epilogue import SQRT1_2 as _SQRT1_2
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import as_weight as _as_weight
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info
from .sparse_sparse_x86 import ScatterTables, scatter_tables
from .sparse_x86 import pack_panels

_FULL_MASK = 0xFFFFFFFF
_SHARED_BUDGET = 40 * 1024  # bytes of static shared memory a kernel may take (48 KiB limit)


# --------------------------------------------------------------------------- helpers


def _shfl_down(value, offset):
    return T.tvm_warp_shuffle_down(T.uint32(_FULL_MASK), value, offset, 32, 32)


def _atomic_add(buf, index, value):
    """``atomicAdd(&buf[index], value)``: CUDA's builtin (TVM 0.27's CUDA codegen has no TIR op).

    Written as ``address_of(buf[index])``, which TVM's sync analysis (ThreadSync) sees as a read:
    atomics need no barrier between them, and a read-write ``tvm_access_ptr`` would make it put
    a ``__syncthreads()`` inside the (divergent) scatter loop. The kernels place their barriers
    themselves, between the phases.
    """
    return T.evaluate(T.call_extern("float32", "atomicAdd", T.address_of(buf[index]), value))


def _pow2_at_least(v: int, cap: int = 32) -> int:
    p = 1
    while p < min(v, cap):
        p *= 2
    return p


# --------------------------------------------------------------------------- packing


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


# --------------------------------------------------------------------------- kernels


def _warp_rows_kernel(m, n, k, block, nvals, nidx, idx_dtype, ptr_dtype, nbias, has_bias,
                      activation, warps):  # fmt: skip
    """One warp per block row; lanes stride the row's stored entries; shuffle reduction."""
    r, c = block
    nbr = -(-n // r)
    nacc = m * r
    grid = -(-nbr // warps)

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nvals,), "float32"),
        cols: T.Buffer((nidx,), idx_dtype),
        ptr: T.Buffer((nbr + 1,), ptr_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for lane in T.thread_binding(32, thread="threadIdx.x"):
                    acc = T.alloc_buffer((nacc,), "float32", scope="local")
                    ib: T.let = bx * warps + ty
                    if ib < nbr:
                        lo: T.let = T.Cast("int32", ptr[ib])
                        nb: T.let = T.Cast("int32", ptr[ib + 1]) - lo
                        for i in T.unroll(nacc):
                            acc[i] = T.float32(0)
                        for q in range(lane, nb * c, 32):
                            col: T.let = T.Cast("int32", cols[lo + q // c]) * c + q % c
                            for b in T.unroll(m):
                                xv: T.let = x[b, T.min(col, k - 1)]  # padded BSR columns hold 0
                                for a in T.unroll(r):
                                    acc[b * r + a] = (
                                        acc[b * r + a] + vals[lo * r * c + a * nb * c + q] * xv
                                    )
                        for i in T.unroll(nacc):
                            for step in T.unroll(5):
                                acc[i] = acc[i] + _shfl_down(acc[i], 16 >> step)
                        if lane == 0:
                            for b in T.unroll(m):
                                for a in T.unroll(r):
                                    if ib * r + a < n:
                                        if has_bias:
                                            y[b, ib * r + a] = _epilogue(
                                                acc[b * r + a] + bias[ib * r + a], activation
                                            )
                                        else:
                                            y[b, ib * r + a] = _epilogue(acc[b * r + a], activation)

    return kernel


def _panel_tile_kernel(m, n, k, block, nvals, nidx, npanels, panel_cols, idx_dtype, seg_dtype,
                       nbias, has_bias, activation, warps, bt):  # fmt: skip
    """Block rows x a batch tile; x panels staged transposed in shared memory (see module doc)."""
    r, c = block
    rc = r * c
    nbr = -(-n // r)
    sub = 32 // bt
    stride = bt + 1
    nthreads = warps * 32
    grid_x = -(-nbr // warps)
    grid_y = -(-m // bt)
    tile = panel_cols * bt

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nvals,), "float32"),
        cols: T.Buffer((nidx,), idx_dtype),
        seg: T.Buffer((npanels * nbr + 1,), seg_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        for by in T.thread_binding(grid_y, thread="blockIdx.y"):
            for bx in T.thread_binding(grid_x, thread="blockIdx.x"):
                for ty in T.thread_binding(warps, thread="threadIdx.y"):
                    for lane in T.thread_binding(32, thread="threadIdx.x"):
                        xs = T.alloc_buffer((panel_cols * stride,), "float32", scope="shared")
                        acc = T.alloc_buffer((r,), "float32", scope="local")
                        ib: T.let = bx * warps + ty
                        s: T.let = lane // bt
                        bl: T.let = lane % bt
                        for a in T.unroll(r):
                            acc[a] = T.float32(0)
                        for p in range(npanels):
                            T.tvm_storage_sync("shared")
                            for t in range(ty * 32 + lane, tile, nthreads):
                                kk: T.let = t % panel_cols
                                bb: T.let = by * bt + t // panel_cols
                                gk: T.let = p * panel_cols + kk
                                xs[kk * stride + t // panel_cols] = T.if_then_else(
                                    bb < m and gk < k,
                                    x[T.min(bb, m - 1), T.min(gk, k - 1)],
                                    T.float32(0),
                                )
                            T.tvm_storage_sync("shared")
                            if ib < nbr:
                                lo: T.let = T.Cast("int32", seg[p * nbr + ib])
                                hi: T.let = T.Cast("int32", seg[p * nbr + ib + 1])
                                for j in range(lo + s, hi, sub):
                                    col: T.let = T.Cast("int32", cols[j]) * c - p * panel_cols
                                    for e in T.unroll(c):
                                        xv: T.let = xs[(col + e) * stride + bl]
                                        for a in T.unroll(r):
                                            acc[a] = acc[a] + vals[j * rc + a * c + e] * xv
                        if ib < nbr:
                            for a in T.unroll(r):
                                for step in T.unroll(5):
                                    if (16 >> step) >= bt:
                                        acc[a] = acc[a] + _shfl_down(acc[a], 16 >> step)
                            if s == 0 and by * bt + bl < m:
                                for a in T.unroll(r):
                                    if ib * r + a < n:
                                        if has_bias:
                                            y[by * bt + bl, ib * r + a] = _epilogue(
                                                acc[a] + bias[ib * r + a], activation
                                            )
                                        else:
                                            y[by * bt + bl, ib * r + a] = _epilogue(
                                                acc[a], activation
                                            )

    return kernel


def _sparse_sparse_kernel(m, tab, nbias, has_bias, activation, threads, chunk, shared_acc):
    """Zero the accumulators; per (sample, input chunk): compact, scatter-add; epilogue."""
    n, k, g = tab.n_out, tab.n_in, tab.groups
    nacc = tab.acc_size
    nval, nres = tab.values.size, tab.res_values.size
    odt, pdt, rdt = str(tab.owner.dtype), str(tab.res_ptr.dtype), str(tab.res_owner.dtype)
    has_res = tab.residual_nnz > 0
    splits = -(-k // chunk)
    sh_acc = nacc if shared_acc else 1
    zero_grid = -(-(m * nacc) // threads)
    out_grid = -(-(m * n) // threads)

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        owner: T.Buffer((nval,), odt),
        res_ptr: T.Buffer((k + 1,), pdt),
        res_owner: T.Buffer((nres,), rdt),
        res_vals: T.Buffer((nres,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        accg = T.alloc_buffer((m * nacc,), "float32", scope="global")
        # Step 1. Zero the global accumulators (a kernel of its own).
        for bx in T.thread_binding(zero_grid, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                if bx * threads + tx < m * nacc:
                    accg[bx * threads + tx] = T.float32(0)
        # Step 2. Compact the active inputs of a chunk, scatter-add their packed columns.
        for bb in T.thread_binding(m, thread="blockIdx.y"):
            for bs in T.thread_binding(splits, thread="blockIdx.x"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    active = T.alloc_buffer((chunk,), "int32", scope="shared")
                    cnt = T.alloc_buffer((1,), "int32", scope="shared")
                    acc = T.alloc_buffer((sh_acc,), "float32", scope="shared")
                    pos = T.alloc_buffer((1,), "int32", scope="local")
                    if tx == 0:
                        cnt[0] = 0
                    if shared_acc:
                        for i in range(tx, nacc, threads):
                            acc[i] = T.float32(0)
                    T.tvm_storage_sync("shared")
                    for i in range(tx, chunk, threads):
                        if bs * chunk + i < k:
                            if x[bb, bs * chunk + i] != T.float32(0):  # NaN counts as active
                                pos[0] = T.call_extern(
                                    "int32", "atomicAdd", T.address_of(cnt[0]), 1
                                )
                                active[pos[0]] = bs * chunk + i
                    T.tvm_storage_sync("shared")
                    total = T.alloc_buffer((1,), "int32", scope="local")
                    total[0] = cnt[0]
                    for t in range(tx, total[0] * g, threads):
                        col: T.let = active[t // g]
                        o: T.let = owner[col * g + t % g]
                        if shared_acc:
                            _atomic_add(acc, o, x[bb, col] * vals[col * g + t % g])
                        else:
                            _atomic_add(accg, bb * nacc + o, x[bb, col] * vals[col * g + t % g])
                    if has_res:
                        for jj in range(tx, total[0], threads):
                            rcol: T.let = active[jj]
                            for rr in range(
                                T.Cast("int32", res_ptr[rcol]), T.Cast("int32", res_ptr[rcol + 1])
                            ):
                                ro: T.let = T.Cast("int32", res_owner[rr])
                                if shared_acc:
                                    _atomic_add(acc, ro, x[bb, rcol] * res_vals[rr])
                                else:
                                    _atomic_add(
                                        accg,
                                        bb * nacc + ro,
                                        x[bb, rcol] * res_vals[rr],
                                    )
                    if shared_acc:
                        T.tvm_storage_sync("shared")
                        part = T.alloc_buffer((1,), "float32", scope="local")
                        for i in range(tx, n, threads):
                            # (TVM's sync analysis rejects a shared load in an if condition)
                            part[0] = acc[i]
                            if part[0] != T.float32(0):
                                _atomic_add(accg, bb * nacc + i, part[0])
        # Step 3. Epilogue: bias and activation.
        for bx in T.thread_binding(out_grid, thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                if bx * threads + tx < m * n:
                    if has_bias:
                        y[(bx * threads + tx) // n, (bx * threads + tx) % n] = _epilogue(
                            accg[((bx * threads + tx) // n) * nacc + (bx * threads + tx) % n]
                            + bias[(bx * threads + tx) % n],
                            activation,
                        )
                    else:
                        y[(bx * threads + tx) // n, (bx * threads + tx) % n] = _epilogue(
                            accg[((bx * threads + tx) // n) * nacc + (bx * threads + tx) % n],
                            activation,
                        )

    return kernel


# --------------------------------------------------------------------------- builders


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
        func = _warp_rows_kernel(
            m, n, k, (r, c), vals.size, cols.size, str(cols.dtype), str(ptr.dtype), bias_arr.size,
            has_bias, activation, warps,
        )  # fmt: skip
        info = _linear_info(
            "cuda_warp_rows", m, n, k, bsr.nnz, bsr.stored,
            vals.nbytes + cols.nbytes + ptr.nbytes, {"format": fmt, "warps": warps},
        )  # fmt: skip
        consts = (vals, cols, ptr, bias_arr)
    else:
        bt = batch_tile or _pow2_at_least(m)
        if bt not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"batch_tile must be a power of two <= 32, got {bt}")
        if panel_cols is None:
            panel_cols = max(c, (_SHARED_BUDGET // 4 // (bt + 1)) // c * c)
        panel_cols = max(c, panel_cols // c * c)
        if panel_cols * (bt + 1) * 4 > 48 * 1024:
            raise ValueError(f"panel_cols={panel_cols} x batch_tile={bt} exceeds shared memory")
        vals, cols, seg, npanels = pack_panels(bsr, panel_cols)
        if bsr.nblocks == 0:
            vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
        func = _panel_tile_kernel(
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
    func = _sparse_sparse_kernel(
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


def dense_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) in TE, scheduled by dlight's GPU rules.

    dlight's GEMV rule (batch 1) and Matmul rule (larger batch) already produce reasonable CUDA
    kernels for this shape, so there is no hand-written dense kernel: this is the baseline the
    sparse kernels are compared with. Consts: ``(weight [N, K], bias?)``.
    """
    from tvm import te
    from tvm.s_tir import dlight as dl

    _check_activation(activation)
    weight = _as_weight(weight, 2)
    n, k = weight.shape
    tgt = _cuda_target(target)
    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder((n, k), "float32", name="w")
    kk = te.reduce_axis((0, k), name="kk")
    mm = te.compute((m, n), lambda i, j: te.sum(x[i, kk] * w[j, kk], axis=kk), name="matmul")
    params = [x, w]
    if bias is not None:
        b = te.placeholder((n,), "float32", name="bias")
        params.append(b)
        pre = te.compute((m, n), lambda i, j: mm[i, j] + b[j], name="bias_add")
    else:
        pre = mm
    if activation == "relu":
        out = te.compute((m, n), lambda i, j: te.max(pre[i, j], T.float32(0)), name="relu")
    elif activation == "gelu":
        out = te.compute(
            (m, n),
            lambda i, j: (
                T.float32(0.5)
                * pre[i, j]
                * (T.float32(1) + te.erf(pre[i, j] * T.float32(_SQRT1_2)))
            ),
            name="gelu",
        )
    else:
        out = pre
    func = te.create_prim_func([*params, out]).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    with tgt:
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Fallback()
        )(mod)
    consts = [weight]
    if bias is not None:
        consts.append(np.ascontiguousarray(bias, dtype=np.float32).reshape(n))
    return KernelCall(
        func=_finish(mod["main"].without_attr("global_symbol")),
        name="dense_linear",
        consts=tuple(consts),
        out_shape=(m, n),
        info={"kernel": "dlight_dense", "m": m, "n": n, "k": k, "macs_dense": m * n * k},
    )


def _cuda_target(target) -> tvm.target.Target:
    from ..target import resolve_target

    return resolve_target("cuda" if target is None else target)


# --------------------------------------------------------------------------- registry


GPU_BANDWIDTH_GBS = 2500.0  # H100 SXM streaming, what a well-coalesced kernel reaches
GPU_LAUNCH_US = 4.0
_GATHER_EFFICIENCY = 0.5  # CSR: index loads + gathered x reads
_SCATTER_EFFICIENCY = 0.25  # sparse-sparse: atomics and compaction


def _gpu_seconds(nbytes: float, efficiency: float = 1.0, launches: int = 1) -> float:
    return nbytes / (GPU_BANDWIDTH_GBS * 1e9 * efficiency) + launches * GPU_LAUNCH_US * 1e-6


def cuda_candidates(layer, target, sparse: bool, machine=None) -> list:
    """Kernels that can implement a linear ``layer`` on a CUDA target (dense first).

    Estimates are memory-time on an H100-class GPU (batch-1 sparse layers are bandwidth bound);
    ``machine`` (the CPU model) is accepted for the registry's signature and unused. Conv layers
    get no candidates: TVM's own lowering (legalize + dlight) handles them.
    """
    from ..ir.layers import LINEAR
    from .registry import Candidate

    if layer.kind != LINEAR:
        return []
    w = layer.weight
    m, (n, k) = layer.rows, w.shape
    act, bias = layer.activation, layer.bias
    io = 4 * m * (n + k)
    out = [
        Candidate(
            "dense",
            _gpu_seconds(w.nbytes + io),
            lambda: dense_linear(m, w, bias, act, target),
        )
    ]
    if not sparse:
        return out
    nnz = int(np.count_nonzero(w))
    idx = 2 if k < 2**15 else 4
    out.append(
        Candidate(
            "csr",
            _gpu_seconds(nnz * (4 + idx) + 4 * (n + 1) + io, _GATHER_EFFICIENCY),
            lambda: csr_linear(m, w, bias, act, target),
        )
    )
    for r, c in ((4, 1), (8, 1), (1, 4)):
        if n % r or k % c:
            continue
        blocks = int(np.count_nonzero(w.reshape(n // r, r, k // c, c).any(axis=(1, 3))))
        stored = blocks * r * c
        if stored > 1.5 * max(nnz, 1):
            continue
        out.append(
            Candidate(
                f"bsr{r}x{c}",
                _gpu_seconds(stored * 4 + blocks * idx + io, _GATHER_EFFICIENCY * 1.5),
                lambda r=r, c=c: bsr_linear(m, w, (r, c), bias, act, target),
            )
        )
    density_in = getattr(layer, "input_density", None)
    if density_in is not None and density_in < 0.5:
        stats = ComplementaryPacked.from_dense(w).stats()
        per_input = (stats["n_groups"] * k + stats["residual_nnz"]) / max(k, 1)
        moved = m * k * density_in * per_input * 6 + 4 * m * (k + 2 * n)
        out.append(
            Candidate(
                "sparse_sparse",
                _gpu_seconds(moved, _SCATTER_EFFICIENCY, launches=3),
                lambda: sparse_sparse_linear(m, w, bias, act, target),
            )
        )
    return out


__all__ = [
    "ACTIVATIONS",
    "bsr_linear",
    "csr_linear",
    "cuda_candidates",
    "dense_linear",
    "gpu_scatter_tables",
    "pack_block_strips",
    "sparse_sparse_linear",
]
