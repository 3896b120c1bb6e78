"""The CSR row kernel for small batches: one output is a row's non-zeros dotted with gathered x.

Rows are padded to chunks of 8 non-zeros; a chunk's indices are split out of int64 words in
general-purpose registers and its 8 activations are loaded as scalars into one vector for an
8-wide FMA (twice as fast as ``vgatherdps`` on Zen 3). Padding entries are 0.0 at a column the
row reads anyway, so a finite activation gives exactly the dense result.
"""

from __future__ import annotations

import json

import numpy as np
from tvm.script import tirx as T

from ..formats.csr import CSR
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish
from .kernel import linear_info as _linear_info

# the PrimFunc attribute with a CSR row kernel's sizes and index packing (JSON): a fusion pass
# (``fuse_recurrent_cell``) reuses the kernel's packed weight
SPEC_ATTR = "tvm_sparse.csr_rows"


def pack_gather_rows(csr: CSR, lanes: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR with every row padded to a multiple of ``lanes`` entries.

    Returns ``(values, columns, chunk_ptr)``: row ``i`` owns chunks ``chunk_ptr[i]..[i+1]`` of
    ``lanes`` entries each. Padding entries are 0.0 at the row's last column, so they read an
    activation the row reads anyway.
    """
    counts = csr.row_nnz()
    padded = counts + (-counts) % lanes
    starts = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    total = int(starts[-1])
    values = np.zeros(total, dtype=np.float32)
    columns = np.zeros(total, dtype=csr.indices.dtype)
    rows = csr.row_ids()
    offset = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1].astype(np.int64), counts)
    dest = starts[rows] + offset
    values[dest] = csr.data
    columns[dest] = csr.indices
    for i in np.nonzero(padded > counts)[0]:  # pad with the row's last column
        columns[starts[i] + counts[i] : starts[i + 1]] = csr.indices[csr.indptr[i + 1] - 1]
    chunk_ptr = (starts // lanes).astype(np.int32)
    return values, columns, chunk_ptr


def _index_words(cols: np.ndarray) -> tuple[np.ndarray, int]:
    """Column indices reinterpreted as int64 words: ``(words, indices per word)``.

    The row kernel loads one word and splits it with shifts in general-purpose registers, so
    every non-zero costs one load (its activation) instead of two.
    """
    per_word = 8 // cols.itemsize
    return np.ascontiguousarray(cols).view(np.int64), per_word


def _word_index(word, lane: int, per_word: int):
    """Index ``lane`` of an int64 word of ``per_word`` unsigned packed indices, as int32."""
    bits = 64 // per_word
    mask = T.int64((1 << bits) - 1)
    if lane == 0:
        return T.Cast("int32", T.bitwise_and(word, mask))
    return T.Cast("int32", T.bitwise_and(T.shift_right(word, T.int64(bits * lane)), mask))


def pack_row_chunks(csr: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``csr`` as the row kernel reads it: ``(values, index words, chunk pointers, indices per
    word)`` (``pack_gather_rows`` then ``_index_words``; never empty buffers)."""
    vals, cols, chunk_ptr = pack_gather_rows(csr, 8)
    if vals.size == 0:  # keep buffers non-empty
        vals, cols = np.zeros(8, np.float32), np.zeros(8, csr.indices.dtype)
    words, per_word = _index_words(cols)
    return vals, words, chunk_ptr.astype(np.int32), per_word


def chunk_buffer_sizes(nchunks: int, per_word: int) -> tuple[int, int]:
    """The lengths of the values and index-word buffers of ``nchunks`` chunks."""
    nval = max(nchunks * 8, 8)
    return nval, max(nval // per_word, 1)


def row_dot_macro(m: int, per_word: int, unroll: int, mb: int):
    """``row_dot(x, vals, words, lo, hi, bo, acc)``: rows ``bo * mb ..`` of ``x`` ([m, k],
    clamped to row m - 1) dotted with the CSR row whose chunks are ``lo .. hi``, for ``mb``
    batch rows; the dot of batch row ``bi`` ends as ``acc[bi * 8 * unroll] + acc[.. + 1]``
    (``acc``: ``mb * 8 * unroll`` floats).

    Rows are padded to chunks of 8 non-zeros. A chunk's eight column indices come from two
    (int16) or four (int32) int64 loads split with shifts, the eight activations are loaded as
    scalars into a vector, and one 8-wide FMA consumes them: one load per non-zero, no
    ``vpextrw``. On Zen 3 this runs about twice as fast as ``vgatherdps`` (measured 0.11 vs
    0.21 ms for 2048x2048 at 10%). ``unroll`` chunks are in flight per batch row with
    ``unroll`` independent accumulators; the ``mb`` batch rows share each decoded chunk.
    """
    wpc = 8 // per_word  # int64 words per chunk
    lanes = 8 * unroll

    @T.macro
    def row_dot(x, vals, words, lo, hi, bo, acc):
        for lane in T.vectorized(mb * lanes):
            acc[lane] = T.float32(0)
        for c in range((hi - lo) // unroll):
            at: T.let = (lo + c * unroll) * 8
            idx = T.alloc_buffer((lanes,), "int32", scope="global")
            for u in T.unroll(unroll * wpc):
                wd: T.let = words[at // per_word + u]
                for j in T.unroll(per_word):
                    idx[u * per_word + j] = _word_index(wd, j, per_word)
            for bi in T.unroll(mb):
                xv = T.alloc_buffer((lanes,), "float32", scope="global")
                for j in T.unroll(lanes):
                    xv[j] = x[T.min(bo * mb + bi, m - 1), idx[j]]
                for u in T.unroll(unroll):
                    acc[T.ramp(bi * lanes + u * 8, 1, 8)] = (
                        acc[T.ramp(bi * lanes + u * 8, 1, 8)]
                        + vals[T.ramp(at + u * 8, 1, 8)] * xv[T.ramp(u * 8, 1, 8)]
                    )
        for c in range(lo + (hi - lo) // unroll * unroll, hi):
            idx1 = T.alloc_buffer((8,), "int32", scope="global")
            for u in T.unroll(wpc):
                wd1: T.let = words[c * wpc + u]
                for j in T.unroll(per_word):
                    idx1[u * per_word + j] = _word_index(wd1, j, per_word)
            for bi in T.unroll(mb):
                xv1 = T.alloc_buffer((8,), "float32", scope="global")
                for j in T.unroll(8):
                    xv1[j] = x[T.min(bo * mb + bi, m - 1), idx1[j]]
                acc[T.ramp(bi * lanes, 1, 8)] = (
                    acc[T.ramp(bi * lanes, 1, 8)] + vals[T.ramp(c * 8, 1, 8)] * xv1[T.ramp(0, 1, 8)]
                )
        for bi in T.unroll(mb):
            # tree reduction: a serial 16-add chain per row costs more than the row
            for u in T.unroll(unroll - 1):
                acc[T.ramp(bi * lanes, 1, 8)] = (
                    acc[T.ramp(bi * lanes, 1, 8)] + acc[T.ramp(bi * lanes + u * 8 + 8, 1, 8)]
                )
            acc[T.ramp(bi * lanes, 1, 4)] = (
                acc[T.ramp(bi * lanes, 1, 4)] + acc[T.ramp(bi * lanes + 4, 1, 4)]
            )
            acc[T.ramp(bi * lanes, 1, 2)] = (
                acc[T.ramp(bi * lanes, 1, 2)] + acc[T.ramp(bi * lanes + 2, 1, 2)]
            )

    return row_dot


def _rows_kernel(m, n, k, nchunks, per_word, nbias, has_bias, activation, unroll, mb, parallel):
    """CSR rows x dense x: one output is a dot product of a row's non-zeros with gathered x
    (``row_dot_macro``)."""
    nval, nwords = chunk_buffer_sizes(nchunks, per_word)
    rows = T.parallel if parallel else T.serial
    lanes = 8 * unroll
    nbo = -(-m // mb)
    row_dot = row_dot_macro(m, per_word, unroll, mb)

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        words: T.Buffer((nwords,), "int64"),
        ptr: T.Buffer((n + 1,), "int32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        for i in rows(n):
            lo: T.let = ptr[i]
            hi: T.let = ptr[i + 1]
            for bo in range(nbo):
                acc = T.alloc_buffer((mb * lanes,), "float32", scope="global")
                row_dot(x, vals, words, lo, hi, bo, acc)
                for bi in T.unroll(mb):
                    if bo * mb + bi < m:
                        if has_bias:
                            y[bo * mb + bi, i] = _epilogue(
                                acc[bi * lanes] + acc[bi * lanes + 1] + bias[i], activation
                            )
                        else:
                            y[bo * mb + bi, i] = _epilogue(
                                acc[bi * lanes] + acc[bi * lanes + 1], activation
                            )

    return kernel


def csr_rows_call(
    m: int,
    csr: CSR,
    bias_arr: np.ndarray,
    has_bias: bool,
    activation: str | None,
    row_batch: int,
    parallel: bool,
) -> KernelCall:
    """The row kernel for ``csr`` at batch ``m`` and its packed constants."""
    n, k = csr.shape
    vals, words, chunk_ptr, per_word = pack_row_chunks(csr)
    nchunks = int(chunk_ptr[-1])
    unroll, mb = (2, 1) if m == 1 else (1, min(m, row_batch))
    func = _rows_kernel(
        m, n, k, nchunks, per_word, bias_arr.size, has_bias, activation, unroll, mb, parallel
    )
    info = _linear_info(
        "csr_rows", m, n, k, csr.nnz, nchunks * 8, vals.nbytes + words.nbytes + chunk_ptr.nbytes,
        {"format": csr.stats(), "row_batch": mb},
    )  # fmt: skip
    spec = {"m": m, "n": n, "k": k, "per_word": per_word, "bias": has_bias,
            "activation": activation}  # fmt: skip
    return KernelCall(
        func=_finish(func).with_attr(SPEC_ATTR, json.dumps(spec)),
        name="csr_linear",
        consts=(vals, words, chunk_ptr, bias_arr),
        out_shape=(m, n),
        info=info,
    )
