"""The TIR of the sparse CUDA kernels: block-free loops with explicit thread bindings.

Kept apart from the builders (``sparse_cuda``), which pack the weight and pick a kernel and its
launch shape: this module is only the three loop nests (see ``sparse_cuda`` for what each does).
Every PrimFunc is already scheduled (``tirx.is_scheduled``): dlight leaves it alone.
"""

from __future__ import annotations

from tvm.script import tirx as T

from ._epilogue import epilogue as _epilogue

_FULL_MASK = 0xFFFFFFFF


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


def warp_rows_kernel(m, n, k, block, nvals, nidx, idx_dtype, ptr_dtype, nbias, has_bias,
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


def panel_tile_kernel(m, n, k, block, nvals, nidx, npanels, panel_cols, idx_dtype, seg_dtype,
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


def sparse_sparse_kernel(m, tab, nbias, has_bias, activation, threads, chunk, shared_acc):
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
