"""Dense-math NaN / Inf semantics after a weight-sparse linear kernel (``strict_nan``).

A kernel that skips zero weights never forms ``0 * x``; with a finite ``x`` that is exact, but in
dense math ``0 * NaN`` and ``0 * Inf`` are NaN. So for a row ``b`` of ``x`` holding a non-finite
value at input ``k``, dense math gives NaN in every output ``n`` whose weight ``W[n, k]`` is zero
(the stored weights' products, Inf or NaN, the sparse kernel already formed). This kernel copies
``y`` and, only for rows with a non-finite input, sets those outputs to NaN from the weight's
column pattern (CSC: the rows of each column's non-zeros). A finite row costs one scan of its
``x`` values. The activation fused into the kernel saw the finite partial sums; the outputs set
here are NaN, as ``act(NaN)`` is for every activation onnxruntime implements (ReLU, ReLU6, GELU,
SiLU, sigmoid, hard-swish, hard-sigmoid).
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats.csr import CSR
from .kernel import KernelCall, finish


def column_pattern(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(colptr[K + 1], rows[nnz])``: for input ``k``, the outputs whose weight is non-zero
    (the weight's CSC pattern: the CSR of its transpose)."""
    csc = CSR.from_dense(np.asarray(weight).T)
    return csc.indptr.astype(np.int32), csc.indices.astype(np.int32)


def nan_fixup_kernel(m: int, weight: np.ndarray) -> KernelCall:
    """The call ``(x[m, K], colptr, rows, y[m, N]) -> y'`` for the layer's weight ``[N, K]``."""
    n, k = weight.shape
    colptr, rows = column_pattern(weight)
    nrows = max(rows.size, 1)
    if rows.size == 0:
        rows = np.zeros(1, np.int32)
    nan = T.float32(float("nan"))

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        ptr: T.Buffer((k + 1,), "int32"),
        idx: T.Buffer((nrows,), "int32"),
        y_in: T.Buffer((m, n), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        bad = T.alloc_buffer((1,), "int32", scope="local")
        flag = T.alloc_buffer((n,), "int32", scope="global")
        keep = T.alloc_buffer((n,), "int32", scope="global")
        for b in range(m):
            bad[0] = 0
            for kk in range(k):
                bad[0] = bad[0] + T.Cast("int32", T.Not(T.isfinite(x[b, kk])))
            if bad[0] == 0:
                for j in T.vectorized(n):
                    y[b, j] = y_in[b, j]
            else:
                for j in range(n):
                    flag[j] = 0
                for kk in range(k):
                    if T.Not(T.isfinite(x[b, kk])):
                        for j in range(n):
                            keep[j] = 0
                        for t in range(ptr[kk], ptr[kk + 1]):
                            keep[idx[t]] = 1
                        for j in range(n):
                            flag[j] = flag[j] | (1 - keep[j])
                for j in range(n):
                    y[b, j] = T.Select(flag[j] != 0, nan, y_in[b, j])

    return KernelCall(
        func=finish(kernel),
        name="nan_fixup",
        consts=(colptr, rows),
        out_shape=(m, n),
        info={"kernel": "nan_fixup", "rows": m, "n": n, "k": k},
    )
