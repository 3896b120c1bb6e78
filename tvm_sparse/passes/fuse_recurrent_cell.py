"""Fuse the steps of each LSTM / GRU direction (recurrent product, gates, state update) into one
kernel.

Why: ``onnx_recurrent`` unrolls a recurrent node into one matrix-vector product a step plus the
gates' elementwise ops, which TVM fuses into two kernels. At batch 1 those calls, their
allocations and the VM's work between them cost as much as the product itself (LSTM-128: 2.3
us product, ~2.2 us for the rest of a step), and onnxruntime's kernels have none of that. One
call of ``schedules.recurrent_cell_x86`` runs a whole chain of steps, the state kept in cache.

Steps are found by ``recurrent_match`` (the forms it lists). Steps chain where one reads the
state of the one before, with the same weights and projection, one time index on. Each chain is
one ``call_tir`` whose outputs hold every step's h (and an LSTM's c) as rows; each step's state
becomes a slice of them (dead, and removed, where only the next step read it).

The fused product is the one the choice made for the step's product: dense (``R^T`` regrouped
by unit block) or CSR (the row kernel's packed weight, one dot product a pre-activation; an
LSTM of 256 units at 10%: 9.0 us a step against 12 dense, Zen 4). Not fused: other sparse
products (BSR, N:M), activations other than the defaults, a cell written out by hand with
``Split`` (its gates are not strided slices). A GRU with ``linear_before_reset = 0`` (two
products a step) fuses too: 0.60-0.68x onnxruntime unfused, 1.8-2.0x fused (hidden 64, 20
steps, batch 1, Zen 4). A fused sliced-ELLPACK product was tried and dropped: 14 us
a step with ``vgatherdps``, 16.5 with scalar loads (Zen 4, LSTM 256 units at 10%).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import constant, op_name
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..target import vector_lanes
from .cpu_only import CpuRewrite
from .recurrent_match import Step, match_gru_step, match_lstm_step

log = logging.getLogger("tvm_sparse")
# the op that computes a step's new h -> the matcher of that cell
_MATCHERS = {"relax.multiply": match_lstm_step, "relax.add": match_gru_step}


def _chains(steps: list[Step]) -> list[list[Step]]:
    """The matched steps as chains: a step follows another when it reads that step's state
    (h, and c for an LSTM), with the same weights and projection, one time index on (the
    same way along the chain)."""
    by_h = {step.h_var: step for step in steps}
    successor: dict[relax.Var, Step] = {}
    followed = set()
    for step in steps:
        prev = by_h.get(step.h_prev)
        if (
            prev is None
            or step.spec.cell != prev.spec.cell
            or (step.c_prev is not None and not step.c_prev.same_as(prev.cell_var))
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

    steps: tuple[Step, ...]
    name: str
    kernel: KernelCall


@mutator
class _ChainRewriter(PlannedRewriter):
    """``plan``: each step's h (and LSTM cell) var -> ``(chain, position)``. The chain's call
    is emitted at the first of its vars; every step's state is a row of its outputs."""

    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(plan, mod)
        self.outputs: dict[str, tuple] = {}  # chain name -> (hs, cs or None)
        self.consts: dict[bytes, list] = {}  # one Relax constant of each packed weight set

    def _emit_chain(self, chain: _Chain) -> tuple[relax.Var, relax.Var]:
        first, kernel = chain.steps[0], chain.kernel
        gvar = self.builder_.add_func(kernel.func.with_attr("global_symbol", chain.name),
                                      chain.name)  # fmt: skip
        digest = hashlib.sha1()
        for array in kernel.consts:
            digest.update(array.tobytes())
        consts = self.consts.setdefault(digest.digest(), [constant(c) for c in kernel.consts])
        rows = relax.TensorType(kernel.out_shape, "float32")
        if first.spec.cell == "gru":
            args = [self.visit_expr(first.h_prev), self.visit_expr(first.xw)]
            hs = self.builder_.emit(relax.call_tir(gvar, [*args, *consts], rows), "gru_h")
            return hs, None
        args = [self.visit_expr(e) for e in (first.h_prev, first.c_prev, first.xw)]
        states = self.builder_.emit(relax.call_tir(gvar, [*args, *consts], [rows, rows]), "lstm")
        hs = self.builder_.emit(relax.TupleGetItem(states, 0), "lstm_h")
        cs = self.builder_.emit(relax.TupleGetItem(states, 1), "lstm_c")
        return hs, cs

    def replacement(self, var: relax.Var, entry: tuple) -> relax.Expr:
        chain, position = entry
        if chain.name not in self.outputs:
            self.outputs[chain.name] = self._emit_chain(chain)
        hs, cs = self.outputs[chain.name]
        cell_var = chain.steps[position].cell_var
        states = cs if cell_var is not None and var.same_as(cell_var) else hs
        batch = chain.steps[0].spec.batch
        begin = (position + 1) * batch
        return relax.op.strided_slice(states, [0], [begin], [begin + batch])


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseRecurrentCell")
class FuseRecurrentCell(CpuRewrite):
    """Fuse every matched chain of LSTM / GRU steps into one kernel call (CPU targets)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _ChainRewriter | None:
        bindings = Bindings.of(func)
        lanes = vector_lanes(target)
        steps = []
        for var, value in bindings.var2val.items():
            match = _MATCHERS.get(op_name(value))
            step = match(var, value, bindings, mod, lanes) if match is not None else None
            if step is not None:
                steps.append(step)
        plan, names, fused = {}, [], 0
        for chain_steps in _chains(steps):
            chain = _fused_chain(chain_steps, len(names), target)
            if chain is None:
                continue
            names.append(chain.name)
            fused += len(chain_steps)
            for position, step in enumerate(chain_steps):
                plan[step.h_var] = (chain, position)
                if step.cell_var is not None:
                    plan[step.cell_var] = (chain, position)
        if not plan:
            return None
        log.info("recurrent: %d steps fused into %d kernels (%s)", fused, len(names),
                 ", ".join(names))  # fmt: skip
        return _ChainRewriter(plan, mod)


def _fused_chain(steps: list[Step], index: int, target: tvm.target.Target) -> _Chain | None:
    """The chain's fused kernel, or None when it does not compile (checked in the candidate
    worker: an LLVM abort there keeps the unfused steps)."""
    first = steps[0]
    stride = steps[1].t - first.t if len(steps) > 1 else 1
    spec = dataclasses.replace(first.spec, first=first.t, steps=len(steps), stride=stride)
    kernel = first.weights.kernel(spec)
    name = f"{kernel.name}_{index}"
    failure = compile_check(name, kernel, target)
    if failure is not None:
        log.warning("recurrent fusion skipped: the fused kernel failed to compile (%s)", failure)
        return None
    return _Chain(tuple(steps), name, kernel)
