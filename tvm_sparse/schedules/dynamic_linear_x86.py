"""Linear kernels whose row count is symbolic: a model exported with a dynamic batch (or
sequence) axis keeps its sparse and dense linears scheduled instead of falling back to TVM's
unscheduled loops (92x slower on a 4x1024 MLP).

The weights are constants, so everything but the row count is static: the kernels loop over the
rows ``m`` (a ``T.int64`` the call's input shape binds) around a body specialised to the weight.
They parallelise over (row, output block) and vectorise over outputs; they are simpler than the
static kernels (no batch panels), which the choice still takes whenever the shape is static.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ..formats.csr import CSR
from ..target import vector_lanes
from ._epilogue import bias_const, check_activation, epilogue
from .kernel import KernelCall, as_weight, finish, linear_info

# The dense kernel's register block: _ROWS rows x _DENSE_VECTORS output vectors of
# accumulators (16 independent FMA chains; each weight vector loaded once feeds _ROWS rows)
_DENSE_VECTORS = 4
_ROWS = 4
# outputs per parallel task of the CSR kernel
_CSR_ROWS_PER_TASK = 64


def dense_linear_dynamic(
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: tvm.target.Target | None = None,
    example_rows: int = 1,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) for any m. Consts: weight as column panels
    ``[N / B][K][B]`` (B = vectors x lanes, zero padded), bias."""
    check_activation(activation)
    weight = as_weight(weight, 2)
    n, k = weight.shape
    lanes = vector_lanes(target)
    block = _DENSE_VECTORS * lanes
    blocks = -(-n // block)
    padded = np.zeros((blocks * block, k), np.float32)
    padded[:n] = weight
    panels = np.ascontiguousarray(padded.reshape(blocks, block, k).transpose(0, 2, 1))
    bias_arr, has_bias = bias_const(bias, n)
    nbias = bias_arr.shape[0]
    L, V = lanes, _DENSE_VECTORS

    R = _ROWS

    @T.prim_func(private=True)
    def kernel(x_handle: T.handle, w: T.Buffer((blocks * k * block,), "float32"),
               b: T.Buffer((nbias,), "float32"), y_handle: T.handle):  # fmt: skip
        m = T.int64()
        x = T.match_buffer(x_handle, (m, k), "float32")
        y = T.match_buffer(y_handle, (m, n), "float32")
        # output block outer: a thread's run of tasks reuses one weight panel (in L2)
        for task in T.parallel((m + R - 1) // R * blocks):
            jb: T.let = task // ((m + R - 1) // R)
            i0: T.let = task % ((m + R - 1) // R) * R
            if i0 + R <= m:  # a full block of rows: each weight vector feeds R rows
                acc = T.alloc_buffer((R * block,), "float32", scope="local")
                for a in T.unroll(R * V):
                    acc[T.ramp(a * L, 1, L)] = T.broadcast(T.float32(0), L)
                for kk in range(k):
                    for r in T.unroll(R):
                        xv: T.let = T.broadcast(x[i0 + r, kk], L)
                        for v in T.unroll(V):
                            acc[T.ramp((r * V + v) * L, 1, L)] = (
                                acc[T.ramp((r * V + v) * L, 1, L)]
                                + xv * w[T.ramp((jb * k + kk) * block + v * L, 1, L)]
                            )
                for r, j in T.grid(R, block):
                    col: T.let = jb * block + j
                    if col < n:
                        y[i0 + r, col] = epilogue(acc[r * block + j] + T.if_then_else(
                            has_bias, b[col % nbias], T.float32(0)), activation)  # fmt: skip
            else:  # the last rows, one at a time (accumulators apart: indexed by constants only)
                for r in range(m - i0):
                    one = T.alloc_buffer((block,), "float32", scope="local")
                    for v in T.unroll(V):
                        one[T.ramp(v * L, 1, L)] = T.broadcast(T.float32(0), L)
                    for kk in range(k):
                        xv1: T.let = T.broadcast(x[i0 + r, kk], L)
                        for v in T.unroll(V):
                            one[T.ramp(v * L, 1, L)] = (
                                one[T.ramp(v * L, 1, L)]
                                + xv1 * w[T.ramp((jb * k + kk) * block + v * L, 1, L)]
                            )
                    for j in range(block):
                        col1: T.let = jb * block + j
                        if col1 < n:
                            y[i0 + r, col1] = epilogue(one[j] + T.if_then_else(
                                has_bias, b[col1 % nbias], T.float32(0)), activation)  # fmt: skip

    consts = (panels.reshape(-1), bias_arr)
    return KernelCall(
        func=finish(kernel),
        name=f"dense_linear_dyn_k{k}_n{n}",
        consts=consts,
        out_shape=(example_rows, n),  # what a timing or test run passes; any m runs
        info=linear_info("dense_dynamic", 1, n, k, n * k, blocks * block * k, panels.nbytes, {}),
    )


def csr_linear_dynamic(
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target: tvm.target.Target | None = None,
    example_rows: int = 1,
) -> KernelCall:
    """The CSR sparse-dense linear for any m. A task computes a run of outputs for a block of
    ``lanes`` rows (x's block transposed, one vector multiply-add per stored value), or, for
    the last rows, for one row (four partial sums per gathered dot product). Consts: values,
    column indices, row pointers, bias."""
    check_activation(activation)
    weight = as_weight(weight, 2)
    n, k = weight.shape
    csr = CSR.from_dense(weight)
    nnz = csr.nnz
    values, indices = csr.data, csr.indices.astype(np.int32)
    indptr = csr.indptr.astype(np.int32)
    if nnz == 0:  # keep every buffer non-empty
        values, indices = np.zeros(1, np.float32), np.zeros(1, np.int32)
    bias_arr, has_bias = bias_const(bias, n)
    nbias = bias_arr.shape[0]
    per_task = min(_CSR_ROWS_PER_TASK, n)
    tasks = -(-n // per_task)
    stored = values.shape[0]
    R = _ROWS
    assert R == 4, "the single-row path below adds exactly four partial sums"
    L = vector_lanes(target)

    @T.prim_func(private=True)
    def kernel(x_handle: T.handle, data: T.Buffer((stored,), "float32"),
               index: T.Buffer((stored,), "int32"), ptr: T.Buffer((n + 1,), "int32"),
               b: T.Buffer((nbias,), "float32"), y_handle: T.handle):  # fmt: skip
        m = T.int64()
        x = T.match_buffer(x_handle, (m, k), "float32")
        y = T.match_buffer(y_handle, (m, n), "float32")
        # a run of outputs outer: a thread's run of tasks reuses its part of the CSR arrays
        for task in T.parallel((m + L - 1) // L * tasks):
            t: T.let = task // ((m + L - 1) // L)
            i0: T.let = task % ((m + L - 1) // L) * L
            if i0 + L <= m:  # L rows at once: x's block transposed, one vector FMA per value
                xt = T.alloc_buffer((k * L,), "float32", scope="global")
                for kk, lane in T.grid(k, L):
                    xt[kk * L + lane] = x[i0 + lane, kk]
                acc = T.alloc_buffer((R * L,), "float32", scope="local")
                for jj in range(per_task):
                    j: T.let = t * per_task + jj
                    if j < n:
                        begin: T.let = ptr[j]
                        quarter: T.let = (ptr[j + 1] - begin) // R
                        for u in T.unroll(R):
                            acc[T.ramp(u * L, 1, L)] = T.broadcast(T.float32(0), L)
                        for q in range(quarter):  # R independent chains over the row's values
                            for u in T.unroll(R):
                                acc[T.ramp(u * L, 1, L)] = (
                                    acc[T.ramp(u * L, 1, L)]
                                    + T.broadcast(data[begin + u * quarter + q], L)
                                    * xt[T.ramp(index[begin + u * quarter + q] * L, 1, L)]
                                )
                        for p in range(begin + R * quarter, ptr[j + 1]):
                            acc[T.ramp(0, 1, L)] = (
                                acc[T.ramp(0, 1, L)]
                                + T.broadcast(data[p], L) * xt[T.ramp(index[p] * L, 1, L)]
                            )
                        for lane in range(L):
                            y[i0 + lane, j] = epilogue(
                                acc[lane] + acc[L + lane] + acc[2 * L + lane] + acc[3 * L + lane]
                                + T.if_then_else(has_bias, b[j % nbias], T.float32(0)),
                                activation,
                            )  # fmt: skip
            else:  # the last rows, one at a time, with R partial sums over the row's values
                for r0 in range(m - i0):
                    part = T.alloc_buffer((R,), "float32", scope="local")
                    for jj in range(per_task):
                        j1: T.let = t * per_task + jj
                        if j1 < n:
                            start: T.let = ptr[j1]
                            count: T.let = ptr[j1 + 1] - start
                            for u in T.unroll(R):
                                part[u] = T.float32(0)
                            for q in range(count // R):
                                for u in T.unroll(R):
                                    part[u] = (
                                        part[u]
                                        + data[start + q * R + u]
                                        * x[i0 + r0, index[start + q * R + u]]
                                    )
                            for e in range(count % R):
                                part[0] = (
                                    part[0]
                                    + data[start + count // R * R + e]
                                    * x[i0 + r0, index[start + count // R * R + e]]
                                )
                            y[i0 + r0, j1] = epilogue(
                                part[0] + part[1] + part[2] + part[3] + T.if_then_else(
                                    has_bias, b[j1 % nbias], T.float32(0)), activation)  # fmt: skip

    consts = (values, indices, indptr, bias_arr)
    weight_bytes = values.nbytes + indices.nbytes + indptr.nbytes
    return KernelCall(
        func=finish(kernel),
        name=f"csr_linear_dyn_k{k}_n{n}",
        consts=consts,
        out_shape=(example_rows, n),  # what a timing or test run passes; any m runs
        info=linear_info("csr_dynamic", 1, n, k, nnz, nnz, weight_bytes, {}),
    )
