"""How the passes rewrite Relax functions: find, plan, replace.

Each rewrite pass finds the bindings a ``relax.dpl`` pattern matches (``Bindings.matches``),
plans what replaces each, and hands the plan to a ``PlannedRewriter`` subclass that says only
what a planned binding becomes; ``rewrite_functions`` runs it over every Relax function.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern
from tvm.relax.expr_functor import PyExprMutator

from .relax_utils import binding_map, bound_vars, op_name, use_counts


@dataclass(frozen=True)
class Bindings:
    """One function's bindings as a pattern rewrite looks them up: each var's value
    (``var2val``), the var each bound call is bound to (``bound``: see ``bound_vars``), and how
    often each var is read (``uses``)."""

    var2val: Mapping[relax.Var, relax.Expr]
    bound: dict[relax.Expr, relax.Var]
    uses: Counter

    @staticmethod
    def of(func: relax.Function) -> Bindings:
        var2val = relax.analysis.get_var2val(func)
        return Bindings(var2val, bound_vars(var2val), use_counts(func))

    def single_reader(self, var: relax.Var) -> relax.Var | None:
        """The var whose value is the only expression reading ``var`` (None if not exactly one
        binding reads it)."""
        if self.uses[var] != 1:
            return None
        for other, value in self.var2val.items():
            if isinstance(value, relax.Call) and any(arg.same_as(var) for arg in value.args):
                return other
        return None

    def matches(self, pattern: DFPattern) -> Iterator[tuple[relax.Var, relax.Call, dict]]:
        """``(var, call, found)`` for each bound call that ``pattern`` matches, in binding
        order; ``found`` maps each sub-pattern to what it matched (values, not vars: dpl follows
        vars into their values, and ``bound`` gives the vars back)."""
        for var, value in self.var2val.items():
            if not isinstance(value, relax.Call):
                continue
            found = pattern.extract_matched_expr(value, self.var2val)
            if found is not None:
                yield var, value, found


def rebind(mutator, var: relax.Var, value: relax.Expr) -> None:
    """Emit ``value`` in place of ``var``'s binding (a dataflow var stays one, an output stays
    an output, the name is kept) and make later uses of ``var`` read the new var."""
    if isinstance(var, relax.DataflowVar):
        new_var = mutator.builder_.emit(value, var.name)
    else:
        new_var = mutator.builder_.emit_output(value, var.name)
    mutator.set_var_remap(var, new_var)


class PlannedRewriter(PyExprMutator):
    """Replaces the binding of each var in ``plan`` by ``self.replacement(var, plan[var])`` and
    keeps every other binding. Subclasses (decorated ``@mutator``) define ``replacement``, which
    may emit bindings of its own first and returns the var's new value."""

    def __init__(self, plan: Mapping[relax.Var, Any], mod: tvm.IRModule | None = None):
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        entry = self.plan.get(binding.var)
        if entry is None:
            super().visit_var_binding_(binding)
            return
        rebind(self, binding.var, self.replacement(binding.var, entry))


def rewrite_functions(
    mod: tvm.IRModule,
    rewriter_for: Callable[[relax.Function, tvm.IRModule], PyExprMutator | None],
) -> tvm.IRModule:
    """Run ``rewriter_for(func, mod)`` (a mutator, or None: nothing to do) over every Relax
    function of ``mod``; the replaced subgraphs are dead afterwards and removed."""
    rewriter = None
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        candidate = rewriter_for(func, mod)
        if candidate is None:
            continue
        rewriter = candidate
        rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()
    if rewriter is None:
        return mod
    return relax.transform.DeadCodeElimination()(mod)


def plan_bindings(
    func: relax.Function, plan_entry: Callable[[relax.Var, relax.Expr], Any]
) -> dict[relax.Var, Any]:
    """``{var: plan_entry(var, value)}`` over ``func``'s bindings, the None entries left out."""
    plan = {}
    for var, value in binding_map(func).items():
        entry = plan_entry(var, value)
        if entry is not None:
            plan[var] = entry
    return plan


def rewrite_bindings(
    mod: tvm.IRModule,
    plan_entry: Callable[[relax.Var, relax.Expr], Any],
    rewriter_cls: Callable[[dict, tvm.IRModule], PlannedRewriter],
) -> tvm.IRModule:
    """The common one-binding rewrite: ``plan_entry(var, value)`` for every binding of every
    Relax function (None: keep it), and ``rewriter_cls(plan, mod)`` replaces the planned ones."""

    def rewriter_for(func: relax.Function, module: tvm.IRModule):
        plan = plan_bindings(func, plan_entry)
        return rewriter_cls(plan, module) if plan else None

    return rewrite_functions(mod, rewriter_for)


OPAQUE = 8  # relax.OpPatternKind kOpaque


def keep_unfused(builder: relax.BlockBuilder, var: relax.Var) -> None:
    """Mark the PrimFunc that ``var``'s call_tir calls opaque, so FuseOps does not inline it
    into its consumer. For the first stage of a two-stage rewrite (separable resize, pooling):
    inlined, it would be recomputed for every output of the second stage."""
    gvar = builder.lookup_binding(var).args[0]
    builder.update_func(gvar, builder.get()[gvar].with_attr("op_pattern", OPAQUE))


def relu_after(bindings: Bindings, var: relax.Var) -> tuple[relax.Var, str | None]:
    """``(the var a fused kernel binds to, its activation)`` for an op bound to ``var``: the
    ReLU's var and ``"relu"`` when a ReLU is the op's only reader (taken into the kernel's
    epilogue), else ``var`` and None."""
    user = bindings.single_reader(var)
    if user is not None and op_name(bindings.var2val[user]) == "relax.nn.relu":
        return user, "relu"
    return var, None


def call_kernel(
    builder: relax.BlockBuilder, func: tvm.tirx.PrimFunc, name: str, args: list,
    out_shape, dtype: str = "float32",
) -> relax.Call:  # fmt: skip
    """A ``call_tir`` of the kernel ``func``, added to ``builder``'s module under ``name`` (its
    global symbol too): how a rewriting pass swaps ops for one of its kernels."""
    gvar = builder.add_func(func.with_attr("global_symbol", name), name)
    return relax.call_tir(gvar, args, relax.TensorType(tuple(out_shape), dtype))
