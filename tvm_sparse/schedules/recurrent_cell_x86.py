"""One LSTM step in one kernel: ``h @ R^T`` (dense or CSR), the input projection's row, the
gates and the state update.

Why: unrolled (``onnx_recurrent``), a step is a matrix-vector product and two small elementwise
kernels. At batch 1 the elementwise kernels and their calls cost as much as the product: an
LSTM-128 over 49 frames ran at 0.81x onnxruntime, whose LSTM kernel does a step in one pass.
Here the product's accumulators for ``units`` hidden units hold all four of their gates (the
weight's columns are regrouped by unit block), so the step's elementwise math runs on registers
right after the block's product, and one call does the step.

``spec.gates`` are the column offsets of the input (i), forget (f), cell (g) and output (o)
gates in the ``4H`` pre-activation vector (ONNX writes i o f c, PyTorch i f g o). The input
projection's row is read in place from the projection of the whole sequence (``x_mode``
"step": ``xw[t, 0, :]`` or ``xw[0, t, :]`` for a time axis of 0 or 1,
``t = first + s * stride`` for step ``s``), or comes as a ``[1, 4H]`` tensor ("row", one
step). A kernel runs a whole chain of ``steps`` steps, the state kept in its outputs (rows of
``hs`` / ``cs``) and in cache: no call, allocation or tuple per step.
Arguments: ``h0, c0, xw, *consts`` and the outputs ``hs, cs``.
The math is the unfused graph's, op for op: ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``,
``h' = sigmoid(o) * tanh(c')``, with TVM's own ``sigmoid`` / ``tanh`` intrinsics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

from ..formats.csr import CSR
from .kernel import KernelCall
from .kernel import finish as _finish
from .sparse_rows_x86 import index_words, pack_gather_rows, row_dot_macro

ROLES = ("i", "f", "g", "o")
MAX_BATCH = 3  # 8 accumulator vectors a row; at 4 rows and more the GEMM's reuse of each weight
# load matters more than the calls saved, and the unfused product (a GEMM) is kept


@dataclass(frozen=True)
class LstmCellSpec:
    """What one fused LSTM kernel is specialized to: ``steps`` steps of one direction."""

    hidden: int
    batch: int  # at most MAX_BATCH: every row's accumulators stay in registers
    units: int  # hidden units per block: the product's accumulators are 4 x units floats
    gates: tuple[int, int, int, int]  # column offsets of i, f, g, o in the 4H pre-activations
    x_mode: str  # "step" (xw[t] of the sequence's projection) or "row" (a [1, 4H] tensor)
    x_shape: tuple[int, ...]
    time_axis: int = 0  # "step": the axis of xw that t indexes (0 or 1)
    first: int = 0  # "step": the time index of the first step
    steps: int = 1
    stride: int = 1  # "step": +1 forward, -1 reverse

    @property
    def blocks(self) -> int:
        return -(-self.hidden // self.units)


def block_units(hidden: int, lanes: int) -> int:
    """Units per block: two vectors of each gate (8 accumulator vectors, enough independent
    FMA chains to hide the FMA latency), fewer where the layer is narrower; a power of two."""
    return min(2 * lanes, 1 << max(hidden - 1, 0).bit_length())


def pack_cell_panels(r_t: np.ndarray, spec: LstmCellSpec) -> np.ndarray:
    """``R^T`` ([H, 4H]) regrouped as ``[blocks, H, 4 * units]``: block ``b`` holds the i, f, g
    and o columns of units ``b * units ..`` in that order (zeros past the last unit)."""
    hidden, units = spec.hidden, spec.units
    panels = np.zeros((spec.blocks, hidden, 4 * units), np.float32)
    for b in range(spec.blocks):
        width = min(units, hidden - b * units)
        for role, offset in enumerate(spec.gates):
            start = offset + b * units
            panels[b, :, role * units : role * units + width] = r_t[:, start : start + width]
    return panels


def _x_reader(spec: LstmCellSpec):
    """``read(xw, s, r, col)``: step ``s``'s pre-activation input of batch row ``r`` at
    column ``col``."""
    if spec.x_mode == "row":
        return lambda xw, s, r, col: xw[r, col]
    first, stride = spec.first, spec.stride
    if spec.time_axis == 0:
        return lambda xw, s, r, col: xw[first + s * stride, r, col]
    return lambda xw, s, r, col: xw[r, first + s * stride, col]


def _cell_macro(spec: LstmCellSpec):
    """The state update of step ``s``, batch row ``r``, units ``blk * units + uu`` from the
    block's products ``acc`` (a T.macro: the dense and CSR kernels share it). States are rows
    of ``hs`` / ``cs``: rows ``s * batch ..`` are the step's input state, the next ``batch``
    rows its output."""
    units, batch, width = spec.units, spec.batch, 4 * spec.units
    gi, gf, gg, go = spec.gates
    read = _x_reader(spec)

    # Python helpers, not lets: TVM 0.27's vectorizer evaluates a let in a vectorized loop
    # once, for lane 0 (an int let of the loop var even drops the loop's stores); so buffers
    # only, the pre-activations updated in ``acc`` itself
    def unit(blk, uu):
        return blk * units + uu

    def pre(r, role, uu):
        return r * width + role * units + uu

    def row(s, r):
        return s * batch + r

    @T.macro
    def update(acc, xw, hs, cs, s, r, blk, uu):
        acc[pre(r, 0, uu)] = acc[pre(r, 0, uu)] + read(xw, s, r, gi + unit(blk, uu))
        acc[pre(r, 1, uu)] = acc[pre(r, 1, uu)] + read(xw, s, r, gf + unit(blk, uu))
        acc[pre(r, 2, uu)] = acc[pre(r, 2, uu)] + read(xw, s, r, gg + unit(blk, uu))
        acc[pre(r, 3, uu)] = acc[pre(r, 3, uu)] + read(xw, s, r, go + unit(blk, uu))
        cs[row(s + 1, r), unit(blk, uu)] = T.sigmoid(acc[pre(r, 1, uu)]) * cs[
            row(s, r), unit(blk, uu)
        ] + T.sigmoid(acc[pre(r, 0, uu)]) * T.tanh(acc[pre(r, 2, uu)])
        hs[row(s + 1, r), unit(blk, uu)] = T.sigmoid(acc[pre(r, 3, uu)]) * T.tanh(
            cs[row(s + 1, r), unit(blk, uu)]
        )

    return update


def dense_cell_kernel(spec: LstmCellSpec):
    """The fused steps with a dense ``R^T`` packed by ``pack_cell_panels``. Outputs ``hs`` and
    ``cs`` ([(steps + 1) * batch, H]): the first ``batch`` rows the initial state, the next
    ones step 0's, and so on."""
    hidden, units, steps, batch = spec.hidden, spec.units, spec.steps, spec.batch
    width, blocks = 4 * units, spec.blocks
    full = hidden // units  # blocks whose units are all real
    update = _cell_macro(spec)

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        panels: T.Buffer((blocks, hidden, width), "float32"),
        hs: T.Buffer(((steps + 1) * batch, hidden), "float32"),
        cs: T.Buffer(((steps + 1) * batch, hidden), "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
            cs[r, u] = c0[r, u]
        for s in range(steps):
            for blk in range(blocks):
                acc = T.alloc_buffer((batch * width,), "float32", scope="local")
                for j in T.vectorized(batch * width):
                    acc[j] = T.float32(0)
                for k in range(hidden):
                    for r in T.unroll(batch):
                        for j in T.vectorized(width):
                            acc[r * width + j] = (
                                acc[r * width + j] + hs[s * batch + r, k] * panels[blk, k, j]
                            )
                for r in T.unroll(batch):
                    if blk < full:
                        for uu in T.vectorized(units):
                            update(acc, xw, hs, cs, s, r, blk, uu)
                    else:
                        for uu in range(hidden - full * units):
                            update(acc, xw, hs, cs, s, r, blk, uu)

    return kernel


def dense_cell_call(r_t: np.ndarray, spec: LstmCellSpec) -> KernelCall:
    """The dense fused steps and the packed weight (consts: ``(panels,)``)."""
    panels = pack_cell_panels(np.asarray(r_t, np.float32), spec)
    hidden = spec.hidden
    return KernelCall(
        func=_finish(dense_cell_kernel(spec)),
        name=f"lstm_dense_h{hidden}_s{spec.steps}",
        consts=(panels,),
        out_shape=((spec.steps + 1) * spec.batch, hidden),
        info={
            "kind": "lstm",
            "weights": "dense",
            "macs": 4 * hidden * hidden * spec.steps * spec.batch,
        },
    )


def csr_cell_kernel(spec: LstmCellSpec, nchunks: int, per_word: int):
    """The fused steps with a CSR ``R`` ([4H, H], rows padded to chunks of 8, as the CSR row
    kernel packs it): each pre-activation is one row's dot product with the step's h
    (``sparse_rows_x86.row_dot_macro``), then the block's state update."""
    hidden, units, steps, batch = spec.hidden, spec.units, spec.steps, spec.batch
    width, blocks = 4 * units, spec.blocks
    full = hidden // units
    nval = max(nchunks * 8, 8)
    nwords = max(nval // per_word, 1)
    # one chunk in flight: with two (the CSR row kernel's choice at batch 1) LLVM builds the
    # 16 gathered activations with masked broadcasts here, 1.7x slower (Zen 4, 256 units)
    unroll = 1
    lanes = 8 * unroll
    row_dot = row_dot_macro((steps + 1) * batch, per_word, unroll, batch)
    update = _cell_macro(spec)
    g0, g1, g2, g3 = spec.gates

    @T.macro
    def gate_rows(vals, words, ptr, hs, acc, s, blk, offset, q):
        """The pre-activations of role ``q`` (gate columns from ``offset``) of the block."""
        for uu in range(T.min(units, hidden - blk * units)):
            lo: T.let = ptr[offset + blk * units + uu]
            hi: T.let = ptr[offset + blk * units + uu + 1]
            part = T.alloc_buffer((batch * lanes,), "float32", scope="global")
            row_dot(hs, vals, words, lo, hi, s, part)
            for r in T.unroll(batch):
                acc[r * width + q * units + uu] = part[r * lanes] + part[r * lanes + 1]

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        vals: T.Buffer((nval,), "float32"),
        words: T.Buffer((nwords,), "int64"),
        ptr: T.Buffer((4 * hidden + 1,), "int32"),
        hs: T.Buffer(((steps + 1) * batch, hidden), "float32"),
        cs: T.Buffer(((steps + 1) * batch, hidden), "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
            cs[r, u] = c0[r, u]
        for s in range(steps):
            for blk in range(blocks):
                acc = T.alloc_buffer((batch * width,), "float32", scope="local")
                gate_rows(vals, words, ptr, hs, acc, s, blk, g0, 0)
                gate_rows(vals, words, ptr, hs, acc, s, blk, g1, 1)
                gate_rows(vals, words, ptr, hs, acc, s, blk, g2, 2)
                gate_rows(vals, words, ptr, hs, acc, s, blk, g3, 3)
                for r in T.unroll(batch):
                    if blk < full:
                        for uu in T.vectorized(units):
                            update(acc, xw, hs, cs, s, r, blk, uu)
                    else:
                        for uu in range(hidden - full * units):
                            update(acc, xw, hs, cs, s, r, blk, uu)

    return kernel


def pack_cell_rows(r_t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``R`` (``r_t.T``, [4H, H]) packed as the CSR row kernel packs a weight: ``(values, index
    words, chunk pointers, indices per word)``."""
    csr = CSR.from_dense(np.ascontiguousarray(np.asarray(r_t, np.float32).T))
    vals, cols, chunk_ptr = pack_gather_rows(csr, 8)
    if vals.size == 0:  # keep buffers non-empty
        vals, cols = np.zeros(8, np.float32), np.zeros(8, csr.indices.dtype)
    words, per_word = index_words(cols)
    return vals, words, chunk_ptr.astype(np.int32), per_word


def csr_cell_call(vals: np.ndarray, words: np.ndarray, chunk_ptr: np.ndarray, per_word: int,
                  spec: LstmCellSpec) -> KernelCall:  # fmt: skip
    """The CSR fused steps on ``R`` packed by ``pack_cell_rows`` (or taken from the CSR row
    kernel the choice made for the step's product); consts: values, words, chunk pointers."""
    hidden = spec.hidden
    nchunks = int(chunk_ptr[-1])
    return KernelCall(
        func=_finish(csr_cell_kernel(spec, nchunks, per_word)),
        name=f"lstm_csr_h{hidden}_s{spec.steps}",
        consts=(vals, words, chunk_ptr),
        out_shape=((spec.steps + 1) * spec.batch, hidden),
        info={"kind": "lstm", "weights": "csr", "stored": nchunks * 8,
              "macs": nchunks * 8 * spec.steps * spec.batch},
    )  # fmt: skip
