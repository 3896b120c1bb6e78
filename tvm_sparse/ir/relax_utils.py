"""Small helpers for walking Relax functions: bindings, use counts, constants, shapes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tvm
from tvm import relax


def iter_bindings(func: relax.Function) -> Iterator[relax.VarBinding]:
    """All VarBindings of a function body's blocks, in order."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return
    for block in body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                yield binding


def use_counts(func: relax.Function) -> Counter:
    """How many times each Var is used (the function's result counts as a use)."""
    counts: Counter = Counter()
    for binding in iter_bindings(func):
        for v in relax.analysis.free_vars(binding.value):
            counts[v] += 1
    if isinstance(func.body, relax.SeqExpr):
        for v in relax.analysis.free_vars(func.body.body):
            counts[v] += 1
    return counts


def binding_map(func: relax.Function) -> dict[relax.Var, relax.Expr]:
    return {b.var: b.value for b in iter_bindings(func)}


def const_array(expr: relax.Expr) -> np.ndarray | None:
    """The numpy value of a relax.Constant, else None."""
    if isinstance(expr, tvm.ir.Constant):
        return expr.value.numpy()
    return None


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor expression, or None when unknown or symbolic."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def dtype_of(expr: relax.Expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def op_name(expr: relax.Expr) -> str | None:
    """``relax.nn.conv2d`` etc. for an operator call, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def reshape_input(expr: relax.Expr, binding_of: Callable[[relax.Var], Any]) -> relax.Expr | None:
    """The input of the ``reshape`` bound to ``expr`` (the same values, row-major), else None.

    ``binding_of`` looks a var's value up (a bindings dict's ``get``, or a mutator's
    ``builder_.lookup_binding``); callers add their own conditions on the input's shape.
    """
    value = binding_of(expr) if isinstance(expr, relax.Var) else None
    return value.args[0] if op_name(value) == "relax.reshape" else None


def rebind(mutator, var: relax.Var, value: relax.Expr) -> None:
    """Emit ``value`` in place of ``var``'s binding (a dataflow var stays one, an output stays
    an output, the name is kept) and make later uses of ``var`` read the new var."""
    if isinstance(var, relax.DataflowVar):
        new_var = mutator.builder_.emit(value, var.name)
    else:
        new_var = mutator.builder_.emit_output(value, var.name)
    mutator.set_var_remap(var, new_var)


def rewrite_functions(
    mod: tvm.IRModule,
    rewriter_for: Callable[[relax.Function, tvm.IRModule], Any | None],
) -> tvm.IRModule:
    """Run ``rewriter_for(func, mod)`` (an ``PyExprMutator``, or None: nothing to do) over every
    Relax function of ``mod``; the replaced subgraphs are dead afterwards and removed."""
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


def llvm_target(target: tvm.target.Target | None) -> tvm.target.Target | None:
    """``target`` (else the current one) when it is an llvm (CPU) target, else None: the
    hand-written CPU kernel passes leave other targets alone."""
    target = target or tvm.target.Target.current(allow_none=True)
    if target is None or str(target.kind.name) != "llvm":
        return None
    return target
