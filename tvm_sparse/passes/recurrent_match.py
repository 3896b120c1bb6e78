"""Find the steps of unrolled LSTMs and GRUs in a Relax function (for ``FuseRecurrentCell``).

A step is matched after Sparsify (float32, batch 1 to what ``block_units`` fits in registers:
3 rows with two vectors a gate, up to 6 (LSTM) / 8 (GRU) with one), in any operand order and
any gate order, from the ops ``onnx_recurrent`` writes::

    LSTM  pre  = add(xt, mm)                        mm = h @ R^T: the step's product kernel
          s_q  = strided_slice(pre, axis 1, [q, q + H])   four slices, at {0, H, 2H, 3H}
          cell = add(multiply(sigmoid(s_f), c), multiply(sigmoid(s_i), tanh(s_g)))
          h'   = multiply(sigmoid(s_o), tanh(cell))
          (with peepholes, s_i + c * P_i, s_f + c * P_f and s_o + cell * P_o: all or none)

    GRU   hr   = h @ R^T                            (linear_before_reset = 1, PyTorch's GRU)
          z    = sigmoid(add(x_z, hr_z)),   r = sigmoid(add(x_r, hr_r))
          n    = tanh(add(x_n, multiply(r, hr_n [+ rbh])))
          h'   = add(n, multiply(z, subtract(h, n)))

    GRU   hzr  = h @ R_zr^T                         (linear_before_reset = 0, ONNX's default)
          z, r as above from hzr's two slices
          n    = tanh(add(x_n, multiply(r, h) @ R_n^T))
          h'   = add(n, multiply(z, subtract(h, n)))

``mm`` / ``hr`` (and a reset-before GRU's two products) is a dense_linear or CSR row kernel
without bias or activation, read only by the step; ``x_q`` / ``hr_q`` are strided slices of
``xt`` / ``hr`` at the same gate offsets;
``xt`` is ``reshape(strided_slice(xw, time axis, [t, t + 1]))`` of the sequence's input
projection (read in place by the fused kernel) or any ``[batch, G * H]`` tensor. Which gate is
which is read from the graph, so ONNX's gate orders and PyTorch's both match.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ir.relax_utils import (
    const_array,
    dtype_of,
    int_tuple,
    kernel_spec,
    op_name,
    static_shape,
)
from ..ir.rewrite import Bindings
from ..schedules.dense_x86 import SPEC_ATTR as DENSE_LINEAR_ATTR
from ..schedules.recurrent_cell_x86 import (
    MAX_BATCH,
    ROLES,
    CellSpec,
    block_units,
    csr_cell_call,
    dense_cell_call,
    gru0_csr_call,
    gru0_dense_call,
    pack_cell_rows,
)
from ..schedules.sparse_rows_x86 import SPEC_ATTR as CSR_ROWS_ATTR


@dataclass(frozen=True)
class Weights:
    """The recurrent weight as the step's product kernel holds it: dense ``R^T`` ([H, G * H]),
    or the CSR row kernel's packed ``R`` (values, index words, chunk pointers, indices a
    word); ``aux`` the GRU's recurrent bias of the n gate or the LSTM's peepholes (rows P_i,
    P_f, P_o), None for none."""

    dense: np.ndarray | None
    csr: tuple | None
    key: bytes  # a digest of the weights: the steps of one direction have equal ones
    aux: np.ndarray | None = None
    # a linear_before_reset = 0 GRU: these weights are R_zr's, ``second`` R_n's
    second: Weights | None = None

    def kernel(self, spec: CellSpec):
        if self.second is not None:
            if self.dense is not None and self.second.dense is not None:
                return gru0_dense_call(self.dense, self.second.dense, spec)
            return gru0_csr_call(self.packed(), self.second.packed(), spec)
        if self.dense is not None:
            return dense_cell_call(self.dense, spec, self.aux)
        return csr_cell_call(*self.csr, spec, self.aux)

    def packed(self) -> tuple:
        """The CSR row packing (a dense product's ``R^T`` packed now: where the choice made one
        of a GRU's two products dense and the other CSR, both run as CSR)."""
        return self.csr if self.csr is not None else pack_cell_rows(self.dense)

    def with_second(self, second: Weights) -> Weights:
        return Weights(self.dense, self.csr, self.key + second.key, self.aux, second)

    def with_aux(self, aux: np.ndarray | None) -> Weights:
        key = self.key + (aux.tobytes() if aux is not None else b"")
        return Weights(self.dense, self.csr, key, aux)


@dataclass(frozen=True)
class Step:
    """One matched step: what the fused call reads, and the vars it replaces (h', and the
    LSTM's cell state; None for a GRU)."""

    h_var: relax.Var
    cell_var: relax.Var | None
    h_prev: relax.Expr
    c_prev: relax.Expr | None
    xw: relax.Expr  # the projection of the sequence ("step") or the step's row ("row")
    t: int
    weights: Weights
    spec: CellSpec


def _call_of(expr: relax.Expr, bindings: Bindings, op: str) -> relax.Call | None:
    value = bindings.var2val.get(expr) if isinstance(expr, relax.Var) else None
    return value if op_name(value) == op else None


def _single_use(expr: relax.Expr, bindings: Bindings) -> bool:
    return isinstance(expr, relax.Var) and bindings.uses[expr] == 1


def _pairs(expr: relax.Expr, bindings: Bindings, op: str):
    """Both operand orders of the single-use ``op`` call bound to ``expr`` (empty if not)."""
    call = _call_of(expr, bindings, op)
    if call is None or not _single_use(expr, bindings):
        return ()
    a, b = call.args
    return ((a, b), (b, a))


def _ints(call: relax.Call):
    """``(axes, begin, end, strides)`` of a strided_slice, or None when not constant."""
    try:
        axes, begin, end = (int_tuple(a) for a in call.args[1:4])
        strides = int_tuple(call.args[4]) if len(call.args) > 4 else (1,)
    except (TypeError, ValueError, AttributeError):
        return None
    return axes, begin, end, strides


def _gate_slice(expr: relax.Expr, bindings: Bindings, hidden: int, width: int):
    """``(source, offset)`` when ``expr`` is a single-use unit-stride
    ``strided_slice(source, [1], [q], [q + H])`` of a ``[batch, width]`` tensor."""
    call = _call_of(expr, bindings, "relax.strided_slice")
    if call is None or not _single_use(expr, bindings):
        return None
    source, found = call.args[0], _ints(call)
    shape = static_shape(source)
    if found is None or shape is None or len(shape) != 2 or shape[1] != width:
        return None
    axes, begin, end, strides = found
    if axes not in ((1,), (-1,)) or strides != (1,) or end[0] - begin[0] != hidden:
        return None
    return source, begin[0]


def _activated_gate(expr: relax.Expr, bindings: Bindings, act: str, hidden: int, width: int):
    """``(source, offset)`` of a single-use ``act(strided_slice(source, ...))``."""
    call = _call_of(expr, bindings, act)
    if call is None or not _single_use(expr, bindings):
        return None
    return _gate_slice(call.args[0], bindings, hidden, width)


def _product(expr: relax.Expr, bindings: Bindings, mod: tvm.IRModule, batch: int, hidden: int,
             outputs: int, uses: int):  # fmt: skip
    """``(h_prev, Weights)`` when ``expr`` is a call of a dense_linear or CSR row kernel,
    without bias or activation, of ``h_prev`` ([batch, H]) to ``outputs`` outputs, read
    ``uses`` times."""
    call = _call_of(expr, bindings, "relax.call_tir")
    if call is None or bindings.uses[expr] != uses:
        return None
    found = kernel_spec(call, mod, (DENSE_LINEAR_ATTR, CSR_ROWS_ATTR))
    if found is None:
        return None
    attr, spec = found
    if (spec["m"], spec["k"], spec["n"]) != (batch, hidden, outputs):
        return None
    if spec["bias"] or spec["activation"] is not None:
        return None
    h_prev, *consts = call.args[1].fields
    arrays = [const_array(c) for c in consts]
    if static_shape(h_prev) != (batch, hidden) or any(a is None for a in arrays):
        return None
    digest = hashlib.sha1()
    for array in arrays:
        digest.update(array.tobytes())
    if attr == DENSE_LINEAR_ATTR:
        r_t = arrays[0].transpose(1, 0, 2).reshape(hidden, -1)[:, :outputs]
        return h_prev, Weights(np.ascontiguousarray(r_t, np.float32), None, digest.digest())
    vals, words, chunk_ptr = arrays[:3]
    return h_prev, Weights(None, (vals, words, chunk_ptr, spec["per_word"]), digest.digest())


def _step_row(xt: relax.Expr, bindings: Bindings, batch: int, width: int):
    """``(xw, mode, t, axis)``: where the step's pre-activation input comes from."""
    reshape = _call_of(xt, bindings, "relax.reshape")
    part = None if reshape is None else _call_of(reshape.args[0], bindings, "relax.strided_slice")
    if part is not None:
        xw, found = part.args[0], _ints(part)
        shape = static_shape(xw)
        if found is not None and shape is not None and len(shape) == 3:
            axes, begin, end, strides = found
            if (
                axes in ((0,), (1,))
                and strides == (1,)
                and shape[2] == width
                and shape[1 - axes[0]] == batch
                and end[0] == begin[0] + 1
                and 0 <= begin[0] < shape[axes[0]]
                and dtype_of(xw) == "float32"
            ):
                return xw, "step", begin[0], axes[0]
    return xt, "row", 0, 0


def _spec(cell: str, batch: int, hidden: int, gates: dict, xw, mode: str, axis: int, lanes: int):
    return CellSpec(
        cell=cell,
        hidden=hidden,
        batch=batch,
        units=block_units(hidden, lanes, batch, len(ROLES[cell])),
        gates=tuple(gates[role] for role in ROLES[cell]),
        x_mode=mode,
        x_shape=tuple(static_shape(xw)),
        time_axis=axis,
    )


def _state_dims(h_var: relax.Var) -> tuple[int, int] | None:
    shape = static_shape(h_var)
    if shape is None or len(shape) != 2 or dtype_of(h_var) != "float32":
        return None
    return shape if 1 <= shape[0] <= MAX_BATCH else None


def _per_unit(expr: relax.Expr, hidden: int) -> np.ndarray | None:
    """``expr`` as H float32 values when it is such a constant (shape [H], [1, H], ...)."""
    value = const_array(expr)
    if value is None or value.dtype != np.float32 or value.size != hidden:
        return None
    return value.reshape(hidden) if value.shape[-1] == hidden else None


def _peephole_gate(expr: relax.Expr, bindings: Bindings, hidden: int, state: relax.Expr):
    """``(source, offset, P)`` of a single-use ``sigmoid(slice)`` (P None) or
    ``sigmoid(slice + state * P)`` (an LSTM peephole: P a float32 constant of H values)."""
    plain = _activated_gate(expr, bindings, "relax.sigmoid", hidden, 4 * hidden)
    if plain is not None:
        return (*plain, None)
    call = _call_of(expr, bindings, "relax.sigmoid")
    if call is None or not _single_use(expr, bindings):
        return None
    for part, term in _pairs(call.args[0], bindings, "relax.add"):
        found = _gate_slice(part, bindings, hidden, 4 * hidden)
        if found is None:
            continue
        for seen, peep in _pairs(term, bindings, "relax.multiply"):
            value = _per_unit(peep, hidden)
            if seen.same_as(state) and value is not None:
                return (*found, value)
    return None


def _lstm_cell_terms(cell: relax.Call, bindings: Bindings, batch: int, hidden: int):
    """``(c_prev, gates)`` of ``add(sigmoid(f) * c, sigmoid(i) * tanh(g))`` (i and f may see c
    through peepholes); ``gates`` maps i, f, g to ``(pre, offset, P or None)``."""
    for forget, update in (cell.args, cell.args[::-1]):
        for sig_f, c_prev in _pairs(forget, bindings, "relax.multiply"):
            if static_shape(c_prev) != (batch, hidden):
                continue
            gf = _peephole_gate(sig_f, bindings, hidden, c_prev)
            if gf is None:
                continue
            for sig_i, tanh_g in _pairs(update, bindings, "relax.multiply"):
                gi = _peephole_gate(sig_i, bindings, hidden, c_prev)
                gg = _activated_gate(tanh_g, bindings, "relax.tanh", hidden, 4 * hidden)
                if gi is not None and gg is not None:
                    return c_prev, {"i": gi, "f": gf, "g": (*gg, None)}
    return None


def match_lstm_step(h_var, h_call, bindings: Bindings, mod: tvm.IRModule, lanes: int):
    """The LSTM ``Step`` whose new hidden state is ``h_var = multiply(...)``, or None."""
    dims = _state_dims(h_var)
    if dims is None or op_name(h_call) != "relax.multiply":
        return None
    batch, hidden = dims
    if block_units(hidden, lanes, batch, len(ROLES["lstm"])) is None:
        return None
    for sig_o, tanh_cell in (h_call.args, h_call.args[::-1]):
        tanh = _call_of(tanh_cell, bindings, "relax.tanh")
        if tanh is None or not _single_use(tanh_cell, bindings):
            continue
        cell_var = tanh.args[0]
        go = _peephole_gate(sig_o, bindings, hidden, cell_var)
        if go is None:
            continue
        cell = _call_of(cell_var, bindings, "relax.add")
        terms = _lstm_cell_terms(cell, bindings, batch, hidden) if cell is not None else None
        if terms is None:
            continue
        c_prev, gates = terms
        gates["o"] = go
        pres = {pre for pre, _, _ in gates.values()}
        offsets = sorted(offset for _, offset, _ in gates.values())
        if len(pres) != 1 or offsets != [0, hidden, 2 * hidden, 3 * hidden]:
            continue
        peeps = [gates[role][2] for role in ("i", "f", "o")]
        if any(p is None for p in peeps) and any(p is not None for p in peeps):
            continue  # some gates see the state and some not: not an ONNX LSTM
        pre = pres.pop()
        add = _call_of(pre, bindings, "relax.add")
        if add is None or bindings.uses[pre] != 4:
            continue
        for xt, mm in (add.args, add.args[::-1]):
            found = _product(mm, bindings, mod, batch, hidden, 4 * hidden, uses=1)
            if found is None or static_shape(xt) != (batch, 4 * hidden):
                continue
            h_prev, weights = found
            xw, mode, t, axis = _step_row(xt, bindings, batch, 4 * hidden)
            offsets = {role: offset for role, (_, offset, _) in gates.items()}
            spec = _spec("lstm", batch, hidden, offsets, xw, mode, axis, lanes)
            if peeps[0] is not None:
                spec = dataclasses.replace(spec, peepholes=True)
                weights = weights.with_aux(np.stack(peeps))
            return Step(h_var, cell_var, h_prev, c_prev, xw, t, weights, spec)
    return None


def _gru_gate(expr: relax.Expr, bindings: Bindings, hidden: int, h_width: int,
              same_offset: bool):  # fmt: skip
    """``(xt, q, hr, p)`` of a single-use ``add(slice(xt, q), slice(hr, p))`` (either order):
    a GRU's z or r pre-activation, ``xt`` its 3H columns of input, ``hr`` the recurrent
    product's ``h_width`` columns (3H at linear_before_reset = 1, where ``same_offset``: q ==
    p; 2H, z and r only, at linear_before_reset = 0)."""
    for a, b in _pairs(expr, bindings, "relax.add"):
        x_part = _gate_slice(a, bindings, hidden, 3 * hidden)
        h_part = _gate_slice(b, bindings, hidden, h_width)
        if x_part is None or h_part is None or (same_offset and x_part[1] != h_part[1]):
            continue
        if _call_of(h_part[0], bindings, "relax.call_tir") is not None:
            return x_part[0], x_part[1], h_part[0], h_part[1]
    return None


def _gru_recurrent_n(expr: relax.Expr, bindings: Bindings, hidden: int):
    """``(hr, offset, rbh)`` of the n gate's recurrent term: ``slice(hr, q)``, or
    ``add(slice(hr, q), rbh)`` with a constant ``rbh`` of H values (None: no bias)."""
    found = _gate_slice(expr, bindings, hidden, 3 * hidden)
    if found is not None:
        return (*found, None)
    for part, bias in _pairs(expr, bindings, "relax.add"):
        found = _gate_slice(part, bindings, hidden, 3 * hidden)
        rbh = _per_unit(bias, hidden)
        if found is not None and rbh is not None:
            return (*found, rbh)
    return None


def match_gru_step(h_var, h_call, bindings: Bindings, mod: tvm.IRModule, lanes: int):
    """The GRU ``Step`` whose new hidden state is ``h_var = add(n, z * (h - n))``, or None."""
    dims = _state_dims(h_var)
    if dims is None or op_name(h_call) != "relax.add":
        return None
    batch, hidden = dims
    if block_units(hidden, lanes, batch, len(ROLES["gru"])) is None:
        return None
    for n_var, zd in (h_call.args, h_call.args[::-1]):
        n_call = _call_of(n_var, bindings, "relax.tanh")
        if n_call is None or bindings.uses[n_var] != 2:
            continue
        for sig_z, diff in _pairs(zd, bindings, "relax.multiply"):
            sub = _call_of(diff, bindings, "relax.subtract")
            z_sig = _call_of(sig_z, bindings, "relax.sigmoid")
            if sub is None or z_sig is None or not _single_use(diff, bindings):
                continue
            if not sub.args[1].same_as(n_var) or not _single_use(sig_z, bindings):
                continue
            found = _gru_rest(n_call, z_sig, bindings, hidden)
            if found is None:
                step = _gru_reset_before(h_var, n_call, z_sig, sub, bindings, mod, lanes, batch)
                if step is not None:
                    return step
                continue
            xt, hr, offsets, rbh = found
            product = _product(hr, bindings, mod, batch, hidden, 3 * hidden, uses=3)
            if product is None or static_shape(xt) != (batch, 3 * hidden):
                continue
            h_prev, weights = product
            if not sub.args[0].same_as(h_prev):
                continue
            weights = weights.with_aux(rbh)
            xw, mode, t, axis = _step_row(xt, bindings, batch, 3 * hidden)
            spec = _spec("gru", batch, hidden, offsets, xw, mode, axis, lanes)
            return Step(h_var, None, h_prev, None, xw, t, weights, spec)
    return None


def _gru_rest(n_call: relax.Call, z_sig: relax.Call, bindings: Bindings, hidden: int):
    """``(xt, hr, {z, r, n: offset}, rbh)`` of a GRU step's gates, from its ``tanh`` (n) and
    its z ``sigmoid``, when all read one ``xt`` and one ``hr`` at matching offsets."""
    z = _gru_gate(z_sig.args[0], bindings, hidden, 3 * hidden, same_offset=True)
    if z is None:
        return None
    for x_n, rmul in _pairs(n_call.args[0], bindings, "relax.add"):
        x_part = _gate_slice(x_n, bindings, hidden, 3 * hidden)
        if x_part is None:
            continue
        for sig_r, rec in _pairs(rmul, bindings, "relax.multiply"):
            r_sig = _call_of(sig_r, bindings, "relax.sigmoid")
            if r_sig is None or not _single_use(sig_r, bindings):
                continue
            r = _gru_gate(r_sig.args[0], bindings, hidden, 3 * hidden, same_offset=True)
            n = _gru_recurrent_n(rec, bindings, hidden)
            if r is None or n is None or n[1] != x_part[1]:
                continue
            sources = {z[0], r[0], x_part[0]}, {z[2], r[2], n[0]}
            offsets = {"z": z[1], "r": r[1], "n": n[1]}
            if len(sources[0]) == 1 and len(sources[1]) == 1:
                if sorted(offsets.values()) == [0, hidden, 2 * hidden]:
                    return z[0], z[2], offsets, n[2]
    return None


def _gru_reset_before(h_var, n_call, z_sig, sub, bindings: Bindings, mod, lanes: int, batch: int):
    """The ``Step`` of a linear_before_reset = 0 GRU (ONNX's default):
    ``n = tanh(add(slice(xt, q_n), (sigmoid(r) * h) @ R_n^T))`` with ``r`` and ``z`` from one
    product ``h @ R_zr^T``; ``sub`` is the blend's ``h - n``. None when it is not one."""
    hidden = static_shape(h_var)[1]
    z = _gru_gate(z_sig.args[0], bindings, hidden, 2 * hidden, same_offset=False)
    if z is None:
        return None
    for x_n, reset in _pairs(n_call.args[0], bindings, "relax.add"):
        x_part = _gate_slice(x_n, bindings, hidden, 3 * hidden)
        second = _product(reset, bindings, mod, batch, hidden, hidden, uses=1)
        if x_part is None or second is None:
            continue
        rh, weights_n = second
        for sig_r, h_seen in _pairs(rh, bindings, "relax.multiply"):
            r_sig = _call_of(sig_r, bindings, "relax.sigmoid")
            if r_sig is None or not _single_use(sig_r, bindings):
                continue
            r = _gru_gate(r_sig.args[0], bindings, hidden, 2 * hidden, same_offset=False)
            if r is None or not r[2].same_as(z[2]) or len({z[0], r[0], x_part[0]}) != 1:
                continue
            first = _product(z[2], bindings, mod, batch, hidden, 2 * hidden, uses=2)
            if first is None:
                continue
            h_prev, weights_zr = first
            if not (h_seen.same_as(h_prev) and sub.args[0].same_as(h_prev)):
                continue
            offsets = {"z": z[1], "r": r[1], "n": x_part[1]}
            if sorted(offsets.values()) != [0, hidden, 2 * hidden]:
                continue
            if sorted((z[3], r[3])) != [0, hidden]:
                continue
            xt = z[0]
            if static_shape(xt) != (batch, 3 * hidden):
                continue
            xw, mode, t, axis = _step_row(xt, bindings, batch, 3 * hidden)
            spec = _spec("gru", batch, hidden, offsets, xw, mode, axis, lanes)
            spec = dataclasses.replace(spec, linear_before_reset=False, zr_offsets=(z[3], r[3]))
            weights = weights_zr.with_second(weights_n)
            return Step(h_var, None, h_prev, None, xw, t, weights, spec)
    return None
