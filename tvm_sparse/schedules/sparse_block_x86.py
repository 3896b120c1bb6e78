"""The BSR block kernel for small batches: one block row at a time, vectorized over the block.

Below the panel kernel's ``min_batch`` there are too few batch lanes to vectorize over, so the
block's longer side is the vector instead.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats.bsr import BSR
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info


def _block_values(bsr: BSR, vec_rows: bool) -> np.ndarray:
    """Block values flattened; each block transposed to [c, r] when the kernel vectorizes rows."""
    data = bsr.data.transpose(0, 2, 1) if vec_rows else bsr.data
    return np.ascontiguousarray(data.reshape(-1), dtype=np.float32)


def _block_kernel(m, n, k, block, nblocks, idx_dtype, ptr_dtype, nbias, has_bias, activation,
                  parallel):  # fmt: skip
    """BSR x dense x at small batch: vectorized over the block's longer side.

    Wide blocks (c >= r) load c contiguous activations and keep r x c partial sums; tall blocks
    (r > c, values stored [c, r]) broadcast one activation over r outputs.
    """
    r, c = block
    nbr = -(-n // r)
    kp = -(-k // c) * c
    rc = r * c
    nval = max(nblocks * rc, 1)
    nidx = max(nblocks, 1)
    vec_rows = r > c
    rows = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        cols: T.Buffer((nidx,), idx_dtype),
        ptr: T.Buffer((nbr + 1,), ptr_dtype),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        xp = T.alloc_buffer((m, kp), "float32", scope="global")
        for bb in range(m):
            for kk in range(kp):
                xp[bb, kk] = T.if_then_else(kk < k, x[bb, T.min(kk, k - 1)], T.float32(0))
        for ib in rows(nbr):
            lo: T.let = T.Cast("int32", ptr[ib])
            hi: T.let = T.Cast("int32", ptr[ib + 1])
            for b in range(m):
                acc = T.alloc_buffer((rc,), "float32", scope="global")
                for lane in T.vectorized(rc):
                    acc[lane] = T.float32(0)
                for j in range(lo, hi):
                    col: T.let = T.Cast("int32", cols[j]) * c
                    if vec_rows:
                        for e in T.unroll(c):
                            xv: T.let = xp[b, col + e]
                            for a in T.vectorized(r):
                                acc[e * r + a] = acc[e * r + a] + vals[j * rc + e * r + a] * xv
                    else:
                        for a in T.unroll(r):
                            for e in T.vectorized(c):
                                acc[a * c + e] = (
                                    acc[a * c + e] + vals[j * rc + a * c + e] * xp[b, col + e]
                                )
                for a in range(r):
                    if ib * r + a < n:
                        s = T.alloc_buffer((1,), "float32", scope="global")
                        s[0] = T.float32(0)
                        for e in T.unroll(c):
                            if vec_rows:
                                s[0] = s[0] + acc[e * r + a]
                            else:
                                s[0] = s[0] + acc[a * c + e]
                        if has_bias:
                            y[b, ib * r + a] = _epilogue(s[0] + bias[ib * r + a], activation)
                        else:
                            y[b, ib * r + a] = _epilogue(s[0], activation)

    return kernel


def bsr_block_call(m: int, bsr: BSR, bias_arr: np.ndarray, has_bias: bool,
                   activation: str | None, parallel: bool) -> KernelCall:  # fmt: skip
    """The block kernel for ``bsr`` at batch ``m`` and its packed constants."""
    n, k = bsr.shape
    r, c = bsr.block
    vec_rows = r > c
    vals, cols, ptr = _block_values(bsr, vec_rows), np.asarray(bsr.indices), bsr.indptr
    if bsr.nblocks == 0:
        vals, cols = np.zeros(1, np.float32), np.zeros(1, cols.dtype)
    func = _block_kernel(
        m, n, k, (r, c), bsr.nblocks, str(cols.dtype), str(ptr.dtype), bias_arr.size, has_bias,
        activation, parallel,
    )  # fmt: skip
    info = _linear_info(
        "bsr_block", m, n, k, bsr.nnz, bsr.stored, vals.nbytes + cols.nbytes + ptr.nbytes,
        {"format": bsr.stats()},
    )  # fmt: skip
    return KernelCall(
        func=_finish(func),
        name="bsr_linear",
        consts=(vals, np.ascontiguousarray(cols), np.ascontiguousarray(ptr), bias_arr),
        out_shape=(m, n),
        info=info,
    )
