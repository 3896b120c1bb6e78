"""Recurrent steps in one kernel: the product ``h @ R^T`` (dense or CSR), the input projection's
row, the gates and the state update of every step of a chain (LSTM, and GRU as PyTorch writes
it, ``linear_before_reset = 1``; ONNX's default GRU, ``linear_before_reset = 0``, in
``gru0_*_call``: per step, every block's z and r from ``h @ R_zr^T``, then every block's n from
``(r * h) @ R_n^T`` and the update, ``r * h`` and ``z`` kept in two scratch rows).

Why: unrolled (``onnx_recurrent``), a step is a matrix-vector product and two small elementwise
kernels. At batch 1 the elementwise kernels, their calls and allocations cost as much as the
product: an LSTM-128 over 49 frames ran at 0.81x onnxruntime, whose LSTM kernel does a step in
one pass. Here the product's accumulators for ``units`` hidden units hold all the gates of
those units (the weight's columns are regrouped by unit block), so the step's elementwise math
runs on them right after the block's product, and one call runs a whole chain of steps, the
state kept in its outputs and in cache.

``spec.gates`` are the column offsets of the gates in the pre-activation vector, in the order
of ``ROLES[spec.cell]``: LSTM i, f, g, o (ONNX writes i o f c, PyTorch i f g o); GRU z, r, n
(ONNX and PyTorch: z r h / r z n, found from the graph). The input projection's row is read in
place from the projection of the whole sequence (``x_mode`` "step": ``xw[t, r, :]`` or
``xw[r, t, :]`` for a time axis of 0 or 1, ``t = first + s * stride`` at step ``s``), or comes
as a ``[batch, G * H]`` tensor ("row", one step).

Arguments: LSTM ``h0, c0, xw, *weights, peep`` (peepholes P_i, P_f, P_o, or one unused float)
and the outputs ``hs, cs``; GRU ``h0, xw, *weights, rbh`` (the recurrent bias of the n gate,
inside ``r * (h Rn^T + rbh)``) and the output ``hs``.
``hs`` / ``cs`` are ``[(steps + 1) * batch, H]``: the first ``batch`` rows the initial state,
then each step's. The math is the unfused graph's, op for op, with TVM's own ``sigmoid`` /
``tanh`` intrinsics: LSTM ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) *
tanh(c')``; GRU ``n = tanh(x_n + sigmoid(r) * (hr_n + rbh))``, ``h' = n + sigmoid(z) * (h - n)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

from ..formats.csr import CSR
from .kernel import KernelCall
from .kernel import finish as _finish
from .sparse_rows_x86 import chunk_buffer_sizes, pack_row_chunks, row_dot_macro

ROLES = {"lstm": ("i", "f", "g", "o"), "gru": ("z", "r", "n"),
         # a linear_before_reset = 0 GRU's two products: h @ R_zr^T, then (r * h) @ R_n^T
         "gru_zr": ("z", "r"), "gru_n": ("n",)}  # fmt: skip
MAX_BATCH = 8  # the most batch rows any fused kernel takes (``block_units`` decides per cell)


@dataclass(frozen=True)
class CellSpec:
    """What one fused recurrent kernel is specialized to: ``steps`` steps of one direction."""

    cell: str  # "lstm" or "gru"
    hidden: int
    batch: int  # at most MAX_BATCH, and ``block_units`` fits: accumulators stay in registers
    units: int  # hidden units per block: the product's accumulators are G x units floats
    gates: tuple[int, ...]  # column offsets of the gates (ROLES order) in the pre-activations
    x_mode: str  # "step" (xw[t] of the sequence's projection) or "row" (a [batch, G*H] tensor)
    x_shape: tuple[int, ...]
    time_axis: int = 0  # "step": the axis of xw that t indexes (0 or 1)
    first: int = 0  # "step": the time index of the first step
    steps: int = 1
    stride: int = 1  # "step": +1 forward, -1 reverse
    peepholes: bool = False  # LSTM: i and f see c, o sees c' (ONNX's P: an aux [3, H] const)
    # GRU: False for linear_before_reset = 0, n = tanh(x_n + (r * h) @ R_n^T): two products a
    # step, ``zr_offsets`` the z and r columns of the first one's output
    linear_before_reset: bool = True
    zr_offsets: tuple[int, int] = (0, 0)

    @property
    def roles(self) -> int:
        return len(ROLES[self.cell])

    @property
    def width(self) -> int:
        """Accumulators a block and batch row: every gate of ``units`` units."""
        return self.roles * self.units

    @property
    def blocks(self) -> int:
        return -(-self.hidden // self.units)

    @property
    def states_shape(self) -> tuple[int, int]:
        return ((self.steps + 1) * self.batch, self.hidden)


def block_units(hidden: int, lanes: int, batch: int = 1, roles: int = 4) -> int | None:
    """Units per block: two vectors of each gate for up to 3 batch rows (8 accumulator
    vectors a row for an LSTM, enough independent FMA chains to hide the FMA latency), one
    vector for more rows while ``roles * batch`` accumulators fit in 3/4 of the vector
    registers (24 zmm; 12 ymm on AVX2); fewer units where the layer is narrower; a power of two.
    None when the rows' accumulators do not fit: the unfused product (a GEMM) is kept.

    Measured (Zen 4, hidden 64, 20 steps, x onnxruntime): at batch 4 and 6 fused with one
    vector a gate, GRU 1.7x and LSTM 1.25x, against 0.94-1.0x and 0.83-0.89x unfused; with 12
    and 16 rows an LSTM's 48-64 accumulators spilled (0.83x, 0.48x), where unfused it is at
    parity."""
    budget = 24 if lanes >= 16 else 12
    if batch > MAX_BATCH or roles * batch > budget:
        return None
    vectors = 2 if batch <= 3 else 1
    return min(vectors * lanes, 1 << max(hidden - 1, 0).bit_length())


def pack_cell_panels(r_t: np.ndarray, spec: CellSpec) -> np.ndarray:
    """``R^T`` ([H, G * H]) regrouped as ``[blocks, H, G * units]``: block ``b`` holds the gate
    columns of units ``b * units ..``, gate after gate in ROLES order (zeros past the last
    unit)."""
    hidden, units = spec.hidden, spec.units
    panels = np.zeros((spec.blocks, hidden, spec.width), np.float32)
    for b in range(spec.blocks):
        width = min(units, hidden - b * units)
        for role, offset in enumerate(spec.gates):
            start = offset + b * units
            panels[b, :, role * units : role * units + width] = r_t[:, start : start + width]
    return panels


def pack_cell_rows(r_t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``R`` (``r_t.T``, [G * H, H]) packed as the CSR row kernel packs a weight: ``(values,
    index words, chunk pointers, indices per word)``."""
    return pack_row_chunks(CSR.from_dense(np.ascontiguousarray(np.asarray(r_t, np.float32).T)))


def _x_reader(spec: CellSpec):
    """``read(xw, s, r, col)``: step ``s``'s pre-activation input of batch row ``r`` at
    column ``col``."""
    if spec.x_mode == "row":
        return lambda xw, s, r, col: xw[r, col]
    first, stride = spec.first, spec.stride
    if spec.time_axis == 0:
        return lambda xw, s, r, col: xw[first + s * stride, r, col]
    return lambda xw, s, r, col: xw[r, first + s * stride, col]


class _Index:
    """Index helpers of the kernels. Python functions, not lets: TVM 0.27's vectorizer
    evaluates a let in a vectorized loop once, for lane 0 (an int let of the loop var even
    drops the loop's stores); so the update works on buffers only, the pre-activations
    updated in ``acc`` itself."""

    def __init__(self, spec: CellSpec):
        self.units, self.batch, self.width = spec.units, spec.batch, spec.width

    def unit(self, blk, uu):
        return blk * self.units + uu

    def pre(self, r, role, uu):
        return r * self.width + role * self.units + uu

    def row(self, s, r):
        return s * self.batch + r


def _lstm_update(spec: CellSpec):
    """``update(acc, xw, hs, cs, peep, s, r, blk, uu)``: an LSTM step's state update for batch
    row ``r``, unit ``blk * units + uu``, from the block's products ``acc``; with
    ``spec.peepholes``, ``peep`` rows i, f, o add ``c * P_i``, ``c * P_f``, ``c' * P_o``."""
    gi, gf, gg, go = spec.gates
    read, ix = _x_reader(spec), _Index(spec)
    unit, pre, row = ix.unit, ix.pre, ix.row
    peepholes = spec.peepholes

    @T.macro
    def update(acc, xw, hs, cs, peep, s, r, blk, uu):
        acc[pre(r, 0, uu)] = acc[pre(r, 0, uu)] + read(xw, s, r, gi + unit(blk, uu))
        acc[pre(r, 1, uu)] = acc[pre(r, 1, uu)] + read(xw, s, r, gf + unit(blk, uu))
        acc[pre(r, 2, uu)] = acc[pre(r, 2, uu)] + read(xw, s, r, gg + unit(blk, uu))
        acc[pre(r, 3, uu)] = acc[pre(r, 3, uu)] + read(xw, s, r, go + unit(blk, uu))
        if peepholes:
            acc[pre(r, 0, uu)] = (
                acc[pre(r, 0, uu)] + cs[row(s, r), unit(blk, uu)] * peep[0, unit(blk, uu)]
            )
            acc[pre(r, 1, uu)] = (
                acc[pre(r, 1, uu)] + cs[row(s, r), unit(blk, uu)] * peep[1, unit(blk, uu)]
            )
        cs[row(s + 1, r), unit(blk, uu)] = T.sigmoid(acc[pre(r, 1, uu)]) * cs[
            row(s, r), unit(blk, uu)
        ] + T.sigmoid(acc[pre(r, 0, uu)]) * T.tanh(acc[pre(r, 2, uu)])
        if peepholes:
            acc[pre(r, 3, uu)] = (
                acc[pre(r, 3, uu)] + cs[row(s + 1, r), unit(blk, uu)] * peep[2, unit(blk, uu)]
            )
        hs[row(s + 1, r), unit(blk, uu)] = T.sigmoid(acc[pre(r, 3, uu)]) * T.tanh(
            cs[row(s + 1, r), unit(blk, uu)]
        )

    return update


def _gru_update(spec: CellSpec):
    """``update(acc, xw, hs, rbh, s, r, blk, uu)``: a GRU step (linear_before_reset = 1)."""
    gz, gr, gn = spec.gates
    read, ix = _x_reader(spec), _Index(spec)
    unit, pre, row = ix.unit, ix.pre, ix.row

    @T.macro
    def update(acc, xw, hs, rbh, _unused, s, r, blk, uu):
        acc[pre(r, 0, uu)] = acc[pre(r, 0, uu)] + read(xw, s, r, gz + unit(blk, uu))
        acc[pre(r, 1, uu)] = acc[pre(r, 1, uu)] + read(xw, s, r, gr + unit(blk, uu))
        acc[pre(r, 2, uu)] = T.tanh(
            read(xw, s, r, gn + unit(blk, uu))
            + T.sigmoid(acc[pre(r, 1, uu)]) * (acc[pre(r, 2, uu)] + rbh[unit(blk, uu)])
        )
        hs[row(s + 1, r), unit(blk, uu)] = acc[pre(r, 2, uu)] + T.sigmoid(acc[pre(r, 0, uu)]) * (
            hs[row(s, r), unit(blk, uu)] - acc[pre(r, 2, uu)]
        )

    return update


def _block_units(spec: CellSpec, update):
    """``each(*args, blk)``: ``update(*args, r, blk, uu)`` over the block's batch rows and
    units, vectorized where the block is full (the last may hold fewer units)."""
    hidden, units, batch = spec.hidden, spec.units, spec.batch
    full = hidden // units

    @T.macro
    def each(acc, xw, hs, state, aux, s, blk):
        for r in T.unroll(batch):
            if blk < full:
                for uu in T.vectorized(units):
                    update(acc, xw, hs, state, aux, s, r, blk, uu)
            else:
                for uu in range(hidden - full * units):
                    update(acc, xw, hs, state, aux, s, r, blk, uu)

    return each


def _dense_product(spec: CellSpec):
    """``product(acc, panels, hs, s, blk)``: the block's products of step ``s``, dense. Every
    vector is one gate's ``units`` wide, a power of two: a GRU's three gates as one 96-wide
    vector ran 1.5x slower (Zen 4; LLVM's lowering of vector widths that are not)."""
    hidden, units, batch, width, roles = spec.hidden, spec.units, spec.batch, spec.width, spec.roles

    @T.macro
    def product(acc, panels, hs, s, blk):
        for r, q in T.grid(batch, roles):
            for j in T.vectorized(units):
                acc[r * width + q * units + j] = T.float32(0)
        for k in range(hidden):
            for r in T.unroll(batch):
                for q in T.unroll(roles):
                    for j in T.vectorized(units):
                        acc[r * width + q * units + j] = (
                            acc[r * width + q * units + j]
                            + hs[s * batch + r, k] * panels[blk, k, q * units + j]
                        )

    return product


def _csr_product(spec: CellSpec, per_word: int, rows: int | None = None):
    """``product(acc, vals, words, ptr, hs, s, blk)``: the block's products of step ``s``, each
    one CSR row's dot product with h (``sparse_rows_x86.row_dot_macro``); ``hs`` has ``rows``
    rows (default: the states')."""
    hidden, units, batch, width = spec.hidden, spec.units, spec.batch, spec.width
    # one chunk in flight: with two (the CSR row kernel's choice at batch 1) LLVM builds the
    # 16 gathered activations with masked broadcasts here, 1.7x slower (Zen 4, 256 units)
    unroll = 1
    lanes = 8 * unroll
    row_dot = row_dot_macro(rows or spec.states_shape[0], per_word, unroll, batch)

    @T.macro
    def gate_rows(acc, vals, words, ptr, hs, s, blk, offset, q):
        for uu in range(T.min(units, hidden - blk * units)):
            lo: T.let = ptr[offset + blk * units + uu]
            hi: T.let = ptr[offset + blk * units + uu + 1]
            part = T.alloc_buffer((batch * lanes,), "float32", scope="global")
            row_dot(hs, vals, words, lo, hi, s, part)
            for r in T.unroll(batch):
                acc[r * width + q * units + uu] = part[r * lanes] + part[r * lanes + 1]

    return _each_gate(gate_rows, spec.gates)


def _each_gate(gate_rows, gates: tuple[int, ...]):
    """``product(acc, vals, words, ptr, hs, s, blk)``: ``gate_rows`` for each gate in turn
    (a macro cannot index a Python tuple with a loop variable: one call a gate, chained)."""
    *before, offset = gates
    role = len(before)
    earlier = _each_gate(gate_rows, tuple(before)) if before else None

    @T.macro
    def product(acc, vals, words, ptr, hs, s, blk):
        if earlier is not None:
            earlier(acc, vals, words, ptr, hs, s, blk)
        gate_rows(acc, vals, words, ptr, hs, s, blk, offset, role)

    return product


def _peep_shape(spec: CellSpec) -> tuple[int, ...]:
    """The LSTM's peephole const: rows P_i, P_f, P_o; one unused float without peepholes."""
    return (3, spec.hidden) if spec.peepholes else (1,)


def _lstm_dense_kernel(spec: CellSpec):
    batch, hidden, blocks, width = spec.batch, spec.hidden, spec.blocks, spec.width
    product, each = _dense_product(spec), _block_units(spec, _lstm_update(spec))

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        panels: T.Buffer((blocks, hidden, width), "float32"),
        peep: T.Buffer(_peep_shape(spec), "float32"),
        hs: T.Buffer(spec.states_shape, "float32"),
        cs: T.Buffer(spec.states_shape, "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
            cs[r, u] = c0[r, u]
        for s, blk in T.grid(spec.steps, blocks):
            acc = T.alloc_buffer((batch * width,), "float32", scope="local")
            product(acc, panels, hs, s, blk)
            each(acc, xw, hs, cs, peep, s, blk)

    return kernel


def _lstm_csr_kernel(spec: CellSpec, nchunks: int, per_word: int):
    batch, hidden, blocks, width = spec.batch, spec.hidden, spec.blocks, spec.width
    nval, nwords = chunk_buffer_sizes(nchunks, per_word)
    product, each = _csr_product(spec, per_word), _block_units(spec, _lstm_update(spec))

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        c0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        vals: T.Buffer((nval,), "float32"),
        words: T.Buffer((nwords,), "int64"),
        ptr: T.Buffer((spec.roles * hidden + 1,), "int32"),
        peep: T.Buffer(_peep_shape(spec), "float32"),
        hs: T.Buffer(spec.states_shape, "float32"),
        cs: T.Buffer(spec.states_shape, "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
            cs[r, u] = c0[r, u]
        for s, blk in T.grid(spec.steps, blocks):
            acc = T.alloc_buffer((batch * width,), "float32", scope="local")
            product(acc, vals, words, ptr, hs, s, blk)
            each(acc, xw, hs, cs, peep, s, blk)

    return kernel


def _gru_dense_kernel(spec: CellSpec):
    batch, hidden, blocks, width = spec.batch, spec.hidden, spec.blocks, spec.width
    product, each = _dense_product(spec), _block_units(spec, _gru_update(spec))

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        panels: T.Buffer((blocks, hidden, width), "float32"),
        rbh: T.Buffer((hidden,), "float32"),
        hs: T.Buffer(spec.states_shape, "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
        for s, blk in T.grid(spec.steps, blocks):
            acc = T.alloc_buffer((batch * width,), "float32", scope="local")
            product(acc, panels, hs, s, blk)
            each(acc, xw, hs, rbh, rbh, s, blk)

    return kernel


def _gru_csr_kernel(spec: CellSpec, nchunks: int, per_word: int):
    batch, hidden, blocks, width = spec.batch, spec.hidden, spec.blocks, spec.width
    nval, nwords = chunk_buffer_sizes(nchunks, per_word)
    product, each = _csr_product(spec, per_word), _block_units(spec, _gru_update(spec))

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        vals: T.Buffer((nval,), "float32"),
        words: T.Buffer((nwords,), "int64"),
        ptr: T.Buffer((spec.roles * hidden + 1,), "int32"),
        rbh: T.Buffer((hidden,), "float32"),
        hs: T.Buffer(spec.states_shape, "float32"),
    ):
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
        for s, blk in T.grid(spec.steps, blocks):
            acc = T.alloc_buffer((batch * width,), "float32", scope="local")
            product(acc, vals, words, ptr, hs, s, blk)
            each(acc, xw, hs, rbh, rbh, s, blk)

    return kernel


def product_specs(spec: CellSpec) -> tuple[CellSpec, CellSpec]:
    """A linear_before_reset = 0 GRU's two products as cell specs: z and r (at
    ``spec.zr_offsets`` of the first product's output), then n."""
    zr = dataclasses.replace(spec, cell="gru_zr", gates=spec.zr_offsets)
    return zr, dataclasses.replace(spec, cell="gru_n", gates=(0,))


def _gru0_updates(spec: CellSpec):
    """``update_zr(acc, xw, hs, zb, rh, s, r, blk, uu)``: sigmoid(z) into ``zb``, sigmoid(r) * h
    into ``rh`` (the second product's input); ``update_n(acc, xw, hs, zb, _, s, r, blk, uu)``:
    ``n = tanh(x_n + (r * h) @ R_n^T)``, ``h' = n + z * (h - n)``."""
    gz, gr, gn = spec.gates
    read = _x_reader(spec)
    zr_spec, n_spec = product_specs(spec)
    zr_ix, n_ix, ix = _Index(zr_spec), _Index(n_spec), _Index(spec)
    unit, row = ix.unit, ix.row

    @T.macro
    def update_zr(acc, xw, hs, zb, rh, s, r, blk, uu):
        zb[r, unit(blk, uu)] = T.sigmoid(
            read(xw, s, r, gz + unit(blk, uu)) + acc[zr_ix.pre(r, 0, uu)]
        )
        rh[r, unit(blk, uu)] = (
            T.sigmoid(read(xw, s, r, gr + unit(blk, uu)) + acc[zr_ix.pre(r, 1, uu)])
            * hs[row(s, r), unit(blk, uu)]
        )

    @T.macro
    def update_n(acc, xw, hs, zb, _unused, s, r, blk, uu):
        acc[n_ix.pre(r, 0, uu)] = T.tanh(
            read(xw, s, r, gn + unit(blk, uu)) + acc[n_ix.pre(r, 0, uu)]
        )
        hs[row(s + 1, r), unit(blk, uu)] = acc[n_ix.pre(r, 0, uu)] + zb[r, unit(blk, uu)] * (
            hs[row(s, r), unit(blk, uu)] - acc[n_ix.pre(r, 0, uu)]
        )

    return update_zr, update_n


def _gru0_dense_kernel(spec: CellSpec):
    batch, hidden, blocks = spec.batch, spec.hidden, spec.blocks
    zr_spec, n_spec = product_specs(spec)
    product_zr, product_n = _dense_product(zr_spec), _dense_product(n_spec)
    update_zr, update_n = _gru0_updates(spec)
    each_zr, each_n = _block_units(spec, update_zr), _block_units(spec, update_n)

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        panels_zr: T.Buffer((blocks, hidden, zr_spec.width), "float32"),
        panels_n: T.Buffer((blocks, hidden, n_spec.width), "float32"),
        hs: T.Buffer(spec.states_shape, "float32"),
    ):
        zb = T.alloc_buffer((batch, hidden), "float32", scope="global")
        rh = T.alloc_buffer((batch, hidden), "float32", scope="global")
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
        for s in range(spec.steps):
            for blk in range(blocks):
                acc = T.alloc_buffer((batch * zr_spec.width,), "float32", scope="local")
                product_zr(acc, panels_zr, hs, s, blk)
                each_zr(acc, xw, hs, zb, rh, s, blk)
            for blk in range(blocks):
                acc_n = T.alloc_buffer((batch * n_spec.width,), "float32", scope="local")
                product_n(acc_n, panels_n, rh, 0, blk)
                each_n(acc_n, xw, hs, zb, zb, s, blk)

    return kernel


def _gru0_csr_kernel(spec: CellSpec, zr_packing: tuple[int, int], n_packing: tuple[int, int]):
    """``*_packing``: (chunks, indices a word) of the two packed weights."""
    batch, hidden, blocks = spec.batch, spec.hidden, spec.blocks
    zr_spec, n_spec = product_specs(spec)
    product_zr = _csr_product(zr_spec, zr_packing[1])
    product_n = _csr_product(n_spec, n_packing[1], rows=batch)
    nval_zr, nwords_zr = chunk_buffer_sizes(*zr_packing)
    nval_n, nwords_n = chunk_buffer_sizes(*n_packing)
    update_zr, update_n = _gru0_updates(spec)
    each_zr, each_n = _block_units(spec, update_zr), _block_units(spec, update_n)

    @T.prim_func
    def kernel(
        h0: T.Buffer((batch, hidden), "float32"),
        xw: T.Buffer(spec.x_shape, "float32"),
        vals_zr: T.Buffer((nval_zr,), "float32"),
        words_zr: T.Buffer((nwords_zr,), "int64"),
        ptr_zr: T.Buffer((2 * hidden + 1,), "int32"),
        vals_n: T.Buffer((nval_n,), "float32"),
        words_n: T.Buffer((nwords_n,), "int64"),
        ptr_n: T.Buffer((hidden + 1,), "int32"),
        hs: T.Buffer(spec.states_shape, "float32"),
    ):
        zb = T.alloc_buffer((batch, hidden), "float32", scope="global")
        rh = T.alloc_buffer((batch, hidden), "float32", scope="global")
        for r, u in T.grid(batch, hidden):
            hs[r, u] = h0[r, u]
        for s in range(spec.steps):
            for blk in range(blocks):
                acc = T.alloc_buffer((batch * zr_spec.width,), "float32", scope="local")
                product_zr(acc, vals_zr, words_zr, ptr_zr, hs, s, blk)
                each_zr(acc, xw, hs, zb, rh, s, blk)
            for blk in range(blocks):
                acc_n = T.alloc_buffer((batch * n_spec.width,), "float32", scope="local")
                product_n(acc_n, vals_n, words_n, ptr_n, rh, 0, blk)
                each_n(acc_n, xw, hs, zb, zb, s, blk)

    return kernel


def gru0_dense_call(r_t_zr: np.ndarray, r_t_n: np.ndarray, spec: CellSpec) -> KernelCall:
    """A linear_before_reset = 0 GRU's fused steps with dense ``R_zr^T`` ([H, 2H], z and r at
    ``spec.zr_offsets``) and ``R_n^T`` ([H, H])."""
    zr_spec, n_spec = product_specs(spec)
    consts = (
        pack_cell_panels(np.asarray(r_t_zr, np.float32), zr_spec),
        pack_cell_panels(np.asarray(r_t_n, np.float32), n_spec),
    )
    return KernelCall(
        func=_finish(_gru0_dense_kernel(spec)),
        name=f"gru0_dense_h{spec.hidden}_s{spec.steps}",
        consts=consts,
        out_shape=spec.states_shape,
        info=_info(spec, "dense", 3 * spec.hidden * spec.hidden),
    )


def gru0_csr_call(zr: tuple, n: tuple, spec: CellSpec) -> KernelCall:
    """The same on the two weights packed as the CSR row kernel packs them: ``(values, index
    words, chunk pointers, indices a word)`` each (``pack_cell_rows``)."""
    zr_packing, n_packing = (int(zr[2][-1]), zr[3]), (int(n[2][-1]), n[3])
    return KernelCall(
        func=_finish(_gru0_csr_kernel(spec, zr_packing, n_packing)),
        name=f"gru0_csr_h{spec.hidden}_s{spec.steps}",
        consts=(*zr[:3], *n[:3]),
        out_shape=spec.states_shape,
        info=_info(spec, "csr", (zr_packing[0] + n_packing[0]) * 8),
    )


def _info(spec: CellSpec, weights: str, stored: int) -> dict:
    return {"kind": spec.cell, "weights": weights, "stored": stored,
            "macs": stored * spec.steps * spec.batch}  # fmt: skip


def dense_cell_call(r_t: np.ndarray, spec: CellSpec, aux: np.ndarray | None = None
                    ) -> KernelCall:  # fmt: skip
    """The fused steps with a dense ``R^T`` ([H, G * H]); consts: the panels, then ``aux``: a
    GRU's ``rbh`` (zeros when None), an LSTM's peepholes (``_aux``)."""
    panels = pack_cell_panels(np.asarray(r_t, np.float32), spec)
    if spec.cell == "lstm":
        func = _lstm_dense_kernel(spec)
    else:
        func = _gru_dense_kernel(spec)
    consts = (panels, _aux(aux, spec))
    return KernelCall(
        func=_finish(func),
        name=f"{spec.cell}_dense_h{spec.hidden}_s{spec.steps}",
        consts=consts,
        out_shape=spec.states_shape,
        info=_info(spec, "dense", spec.roles * spec.hidden * spec.hidden),
    )


def csr_cell_call(vals: np.ndarray, words: np.ndarray, chunk_ptr: np.ndarray, per_word: int,
                  spec: CellSpec, aux: np.ndarray | None = None) -> KernelCall:  # fmt: skip
    """The fused steps on ``R`` packed by ``pack_cell_rows`` (or taken from the CSR row kernel
    the choice made for the step's product); consts: values, words, chunk pointers, then
    ``aux`` as ``dense_cell_call`` takes it."""
    nchunks = int(chunk_ptr[-1])
    if spec.cell == "lstm":
        func = _lstm_csr_kernel(spec, nchunks, per_word)
    else:
        func = _gru_csr_kernel(spec, nchunks, per_word)
    consts = (vals, words, chunk_ptr, _aux(aux, spec))
    return KernelCall(
        func=_finish(func),
        name=f"{spec.cell}_csr_h{spec.hidden}_s{spec.steps}",
        consts=consts,
        out_shape=spec.states_shape,
        info=_info(spec, "csr", nchunks * 8),
    )


def _aux(aux: np.ndarray | None, spec: CellSpec) -> np.ndarray:
    """The kernel's aux const: a GRU's rbh ([H], zeros for None); an LSTM's peepholes ([3, H]
    rows P_i, P_f, P_o) or one unused zero."""
    if spec.cell == "gru":
        if aux is None:
            return np.zeros(spec.hidden, np.float32)
        return np.ascontiguousarray(np.asarray(aux, np.float32).reshape(spec.hidden))
    if not spec.peepholes:
        return np.zeros(1, np.float32)
    return np.ascontiguousarray(np.asarray(aux, np.float32).reshape(3, spec.hidden))
