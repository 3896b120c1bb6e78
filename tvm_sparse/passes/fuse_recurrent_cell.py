"""Fuse the steps of each LSTM direction (recurrent product, gates, state update) into one kernel.

Why: ``onnx_recurrent`` unrolls an LSTM into one matrix-vector product a step plus the gates'
elementwise ops, which TVM fuses into two kernels. At batch 1 those calls, their allocations and
the VM's work between them cost as much as the product itself (LSTM-128: 2.3 us product, ~2.2
us for the rest of a step), and onnxruntime's LSTM kernel has none of that. One call of
``schedules.recurrent_cell_x86`` runs a whole chain of steps, the state kept in cache.

A step is matched (after Sparsify, CPU only, float32, batch 1 to ``MAX_BATCH``), in any operand
order and any gate order::

    pre  = add(xt, mm)          mm: the recurrent product's kernel, dense_linear or CSR rows
                                    (no bias, no activation), read only here
    s_q  = strided_slice(pre, axis 1, [q, q + H])     four slices, at {0, H, 2H, 3H}
    cell = add(multiply(sigmoid(s_f), c), multiply(sigmoid(s_i), tanh(s_g)))
    h    = multiply(sigmoid(s_o), tanh(cell))

where ``xt`` is ``reshape(strided_slice(xw, time axis, [t, t + 1]))`` of the sequence's input
projection (read in place) or any ``[batch, 4H]`` tensor. Which pre-activations a step reads is
found from the graph, so ONNX's i o f c order and PyTorch's i f g o both match. Steps chain
where one reads the h and c of the one before, with the same weight and projection, one time
index on. Each chain is one ``call_tir`` whose outputs hold every step's h and c as rows; each
step's h and c become a slice of them (dead, and removed, where only the next step read them).

The fused product is the one the choice made for the step's product: dense (``R^T`` regrouped
by unit block) or CSR (the row kernel's packed weight, one dot product a pre-activation; 256
units at 10%: 9.0 us a step against 12 dense, Zen 4). Not fused: other sparse products (BSR,
N:M), peepholes, activations other than the defaults, an LSTM written out by hand with
``Split`` (its gates are not strided slices). A fused sliced-ELLPACK product was tried and
dropped: 14 us a step with ``vgatherdps``, 16.5 with scalar loads (Zen 4, 256 units at 10%).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import const_array, constant, dtype_of, int_tuple, op_name, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules.dense_x86 import SPEC_ATTR as DENSE_LINEAR_ATTR
from ..schedules.isolation import compile_check
from ..schedules.recurrent_cell_x86 import (
    MAX_BATCH,
    LstmCellSpec,
    block_units,
    csr_cell_call,
    dense_cell_call,
)
from ..schedules.sparse_rows_x86 import SPEC_ATTR as CSR_ROWS_ATTR
from ..target import vector_lanes
from .cpu_only import CpuRewrite

log = logging.getLogger("tvm_sparse")


@dataclass(frozen=True)
class _Weights:
    """The recurrent weight as the step's product kernel holds it: dense ``R^T`` ([H, 4H]), or
    the CSR row kernel's packed ``R`` (values, index words, chunk pointers, indices a word)."""

    dense: np.ndarray | None
    csr: tuple | None
    key: bytes  # a digest: the steps of one direction have equal weights

    def kernel(self, spec: LstmCellSpec):
        if self.dense is not None:
            return dense_cell_call(self.dense, spec)
        return csr_cell_call(*self.csr, spec)


@dataclass(frozen=True)
class _Step:
    """One matched LSTM step: what the fused call reads, and the two vars it replaces."""

    cell_var: relax.Var
    h_var: relax.Var
    h_prev: relax.Expr
    c_prev: relax.Expr
    xw: relax.Expr  # the projection of the sequence ("step") or the step's [1, 4H] row ("row")
    t: int
    weights: _Weights
    spec: LstmCellSpec


def _call_of(expr: relax.Expr, bindings: Bindings, op: str) -> relax.Call | None:
    value = bindings.var2val.get(expr) if isinstance(expr, relax.Var) else None
    return value if op_name(value) == op else None


def _single_use(expr: relax.Expr, bindings: Bindings) -> bool:
    return isinstance(expr, relax.Var) and bindings.uses[expr] == 1


def _gate_slice(expr: relax.Expr, bindings: Bindings, hidden: int):
    """``(pre, offset)`` when ``expr`` is a single-use ``strided_slice(pre, [1], [q], [q + H])``
    of a ``[batch, 4H]`` tensor, unit stride."""
    call = _call_of(expr, bindings, "relax.strided_slice")
    if call is None or not _single_use(expr, bindings):
        return None
    pre = call.args[0]
    shape = static_shape(pre)
    if shape is None or len(shape) != 2 or shape[1] != 4 * hidden:
        return None
    try:
        axes, begin, end = (int_tuple(a) for a in call.args[1:4])
        strides = int_tuple(call.args[4]) if len(call.args) > 4 else (1,)
    except (TypeError, ValueError, AttributeError):
        return None
    if axes not in ((1,), (-1,)) or strides != (1,) or end[0] - begin[0] != hidden:
        return None
    return pre, begin[0]


def _activated_gate(expr: relax.Expr, bindings: Bindings, act: str, hidden: int):
    """``(pre, offset)`` of ``act(strided_slice(pre, ...))``, both single-use."""
    call = _call_of(expr, bindings, act)
    if call is None or not _single_use(expr, bindings):
        return None
    return _gate_slice(call.args[0], bindings, hidden)


def _product_pairs(expr: relax.Expr, bindings: Bindings):
    """Both operand orders of the single-use ``multiply`` bound to ``expr`` (empty if not)."""
    call = _call_of(expr, bindings, "relax.multiply")
    if call is None or not _single_use(expr, bindings):
        return ()
    a, b = call.args
    return ((a, b), (b, a))


def _cell_terms(cell: relax.Call, bindings: Bindings, batch: int, hidden: int):
    """``(c_prev, gates)`` of ``add(sigmoid(f) * c, sigmoid(i) * tanh(g))``; ``gates`` maps
    i, f, g to ``(pre, offset)``."""
    for forget, update in (cell.args, cell.args[::-1]):
        for sig_i, tanh_g in _product_pairs(update, bindings):
            gi = _activated_gate(sig_i, bindings, "relax.sigmoid", hidden)
            gg = _activated_gate(tanh_g, bindings, "relax.tanh", hidden)
            if gi is None or gg is None:
                continue
            for sig_f, c_prev in _product_pairs(forget, bindings):
                gf = _activated_gate(sig_f, bindings, "relax.sigmoid", hidden)
                if gf is not None and static_shape(c_prev) == (batch, hidden):
                    return c_prev, {"i": gi, "f": gf, "g": gg}
    return None


def _kernel_spec(call: relax.Call, mod: tvm.IRModule) -> tuple[str, dict] | None:
    """``(attribute, spec)`` of the dense_linear or CSR row kernel ``call`` calls."""
    gvar = call.args[0]
    func = mod[gvar] if isinstance(gvar, tvm.ir.GlobalVar) and gvar in mod.functions else None
    attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None else {}
    for attr in (DENSE_LINEAR_ATTR, CSR_ROWS_ATTR):
        if attr in attrs:
            return attr, json.loads(str(attrs[attr]))
    return None


def _product(expr: relax.Expr, bindings: Bindings, mod: tvm.IRModule, batch: int, hidden: int):
    """``(h_prev, _Weights)`` when ``expr`` is a single-use call of a dense_linear or CSR row
    kernel, without bias or activation, of ``h_prev`` ([batch, H]) to ``4H`` outputs."""
    call = _call_of(expr, bindings, "relax.call_tir")
    if call is None or not _single_use(expr, bindings):
        return None
    found = _kernel_spec(call, mod)
    if found is None:
        return None
    attr, spec = found
    if (spec["m"], spec["k"], spec["n"]) != (batch, hidden, 4 * hidden):
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
        r_t = arrays[0].transpose(1, 0, 2).reshape(hidden, -1)[:, : 4 * hidden]
        weights = _Weights(np.ascontiguousarray(r_t, np.float32), None, digest.digest())
    else:
        vals, words, chunk_ptr = arrays[:3]
        weights = _Weights(None, (vals, words, chunk_ptr, spec["per_word"]), digest.digest())
    return h_prev, weights


def _step_row(xt: relax.Expr, bindings: Bindings, batch: int, hidden: int):
    """``(xw, mode, t, axis)``: where the step's pre-activation input comes from."""
    reshape = _call_of(xt, bindings, "relax.reshape")
    part = None if reshape is None else _call_of(reshape.args[0], bindings, "relax.strided_slice")
    if part is not None:
        xw = part.args[0]
        shape = static_shape(xw)
        try:
            axes, begin, end = (int_tuple(a) for a in part.args[1:4])
            strides = int_tuple(part.args[4]) if len(part.args) > 4 else (1,)
        except (TypeError, ValueError, AttributeError):
            axes = None
        if (
            axes in ((0,), (1,))
            and strides == (1,)
            and shape is not None
            and len(shape) == 3
            and shape[2] == 4 * hidden
            and shape[1 - axes[0]] == batch
            and end[0] == begin[0] + 1
            and 0 <= begin[0] < shape[axes[0]]
            and dtype_of(xw) == "float32"
        ):
            return xw, "step", begin[0], axes[0]
    return xt, "row", 0, 0


def _match_step(h_var, h_call, bindings: Bindings, mod: tvm.IRModule, lanes: int):
    """The ``_Step`` whose hidden state is ``h_var = multiply(...)``, or None."""
    shape = static_shape(h_var)
    if shape is None or len(shape) != 2 or dtype_of(h_var) != "float32":
        return None
    batch, hidden = shape
    if not 1 <= batch <= MAX_BATCH:
        return None
    for sig_o, tanh_cell in (h_call.args, h_call.args[::-1]):
        go = _activated_gate(sig_o, bindings, "relax.sigmoid", hidden)
        tanh = _call_of(tanh_cell, bindings, "relax.tanh")
        if go is None or tanh is None or not _single_use(tanh_cell, bindings):
            continue
        cell_var = tanh.args[0]
        cell = _call_of(cell_var, bindings, "relax.add")
        terms = _cell_terms(cell, bindings, batch, hidden) if cell is not None else None
        if terms is None:
            continue
        c_prev, gates = terms
        gates["o"] = go
        pres = {pre for pre, _ in gates.values()}
        offsets = sorted(offset for _, offset in gates.values())
        if len(pres) != 1 or offsets != [0, hidden, 2 * hidden, 3 * hidden]:
            continue
        pre = pres.pop()
        add = _call_of(pre, bindings, "relax.add")
        if add is None or bindings.uses[pre] != 4:
            continue
        for xt, mm in (add.args, add.args[::-1]):
            product = _product(mm, bindings, mod, batch, hidden)
            if product is None or static_shape(xt) != (batch, 4 * hidden):
                continue
            h_prev, weights = product
            xw, mode, t, axis = _step_row(xt, bindings, batch, hidden)
            spec = LstmCellSpec(
                hidden=hidden,
                batch=batch,
                units=block_units(hidden, lanes),
                gates=tuple(gates[role][1] for role in ("i", "f", "g", "o")),
                x_mode=mode,
                x_shape=tuple(static_shape(xw)),
                time_axis=axis,
            )
            return _Step(cell_var, h_var, h_prev, c_prev, xw, t, weights, spec)
    return None


def _chains(steps: list[_Step]) -> list[list[_Step]]:
    """The matched steps as chains: a step follows another when it reads that step's h and c,
    with the same weight and projection, one time index on (the same way along the chain)."""
    by_h = {step.h_var: step for step in steps}
    successor: dict[relax.Var, _Step] = {}
    followed = set()
    for step in steps:
        prev = by_h.get(step.h_prev)
        if (
            prev is None
            or not step.c_prev.same_as(prev.cell_var)
            or step.spec.x_mode != "step"
            or prev.spec.x_mode != "step"
            or not step.xw.same_as(prev.xw)
            or step.weights.key != prev.weights.key
            or abs(step.t - prev.t) != 1
            or prev.h_var in successor
        ):
            continue
        successor[prev.h_var] = step
        followed.add(step.h_var)
    chains = []
    for step in steps:
        if step.h_var in followed:
            continue
        chain = [step]
        while chain[-1].h_var in successor:
            nxt = successor[chain[-1].h_var]
            if len(chain) > 1 and nxt.t - chain[-1].t != chain[-1].t - chain[-2].t:
                chains.append(chain)  # a turn (no exporter writes one): a new chain there
                chain = []
            chain.append(nxt)
        chains.append(chain)
    return chains


@dataclass(frozen=True)
class _Chain:
    """A chain of steps fused into one call: its kernel and the position of each step."""

    steps: tuple[_Step, ...]
    name: str
    kernel: object  # KernelCall


@mutator
class _ChainRewriter(PlannedRewriter):
    """``plan``: each step's cell and h var -> ``(chain, position)``. The chain's call is
    emitted at its first step's cell var; every step's state is a row of its outputs."""

    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(plan, mod)
        self.outputs: dict[str, tuple[relax.Var, relax.Var]] = {}  # chain name -> (hs, cs)
        self.consts: dict[bytes, list[relax.Constant]] = {}  # one copy of each packed weight

    def _emit_chain(self, chain: _Chain) -> tuple[relax.Var, relax.Var]:
        first, kernel = chain.steps[0], chain.kernel
        gvar = self.builder_.add_func(kernel.func.with_attr("global_symbol", chain.name),
                                      chain.name)  # fmt: skip
        key = first.weights.key
        consts = self.consts.setdefault(key, [constant(c) for c in kernel.consts])
        args = [self.visit_expr(e) for e in (first.h_prev, first.c_prev, first.xw)]
        spec = first.spec
        rows = relax.TensorType(((len(chain.steps) + 1) * spec.batch, spec.hidden), "float32")
        states = self.builder_.emit(relax.call_tir(gvar, [*args, *consts], [rows, rows]), "lstm")
        hs = self.builder_.emit(relax.TupleGetItem(states, 0), "lstm_h")
        cs = self.builder_.emit(relax.TupleGetItem(states, 1), "lstm_c")
        return hs, cs

    def replacement(self, var: relax.Var, entry: tuple) -> relax.Expr:
        chain, position = entry
        if chain.name not in self.outputs:
            self.outputs[chain.name] = self._emit_chain(chain)
        hs, cs = self.outputs[chain.name]
        states = cs if var.same_as(chain.steps[position].cell_var) else hs
        batch = chain.steps[0].spec.batch
        begin = (position + 1) * batch
        return relax.op.strided_slice(states, [0], [begin], [begin + batch])


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseRecurrentCell")
class FuseRecurrentCell(CpuRewrite):
    """Fuse every matched chain of LSTM steps into one kernel call (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _ChainRewriter | None:
        bindings = Bindings.of(func)
        lanes = vector_lanes(target)
        steps = []
        for var, value in bindings.var2val.items():
            if op_name(value) == "relax.multiply":
                step = _match_step(var, value, bindings, mod, lanes)
                if step is not None:
                    steps.append(step)
        plan, names = {}, []
        for chain_steps in _chains(steps):
            chain = _fused_chain(chain_steps, len(names), target)
            if chain is None:
                continue
            names.append(chain.name)
            for position, step in enumerate(chain_steps):
                plan[step.cell_var] = plan[step.h_var] = (chain, position)
        if not plan:
            return None
        log.info("LSTM: %d steps fused into %d kernels (%s)", len(plan) // 2, len(names),
                 ", ".join(names))  # fmt: skip
        return _ChainRewriter(plan, mod)


def _fused_chain(steps: list[_Step], index: int, target: tvm.target.Target) -> _Chain | None:
    """The chain's fused kernel, or None when it does not compile (checked in the candidate
    worker: an LLVM abort there keeps the unfused steps)."""
    first = steps[0]
    stride = steps[1].t - first.t if len(steps) > 1 else 1
    spec = dataclasses.replace(first.spec, first=first.t, steps=len(steps), stride=stride)
    kernel = first.weights.kernel(spec)
    name = f"{kernel.name}_{index}"
    failure = compile_check(name, kernel, target)
    if failure is not None:
        log.warning("LSTM fusion skipped: the fused kernel failed to compile (%s)", failure)
        return None
    return _Chain(tuple(steps), name, kernel)
