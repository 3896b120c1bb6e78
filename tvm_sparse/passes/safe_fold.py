"""``FoldConstant`` that never leaves a module calling a function it does not define.

TVM 0.27's ``relax.transform.FoldConstant``, run before ``LegalizeOps`` (where canonicalization
must run it: constant weight transposes and BatchNorm statistics fold there), legalizes some
dynamic-shape ops to try them and keeps the ``call_tir`` of a ``shape_func`` it never adds to the
module (``R.dynamic_strided_slice``: ONNX Slice with starts/ends as inputs). The build then fails
with "There is no definition of I.GlobalVar("shape_func")". Plain TVM folds only after
legalization, so it never sees this. Here: fold, and when the result calls an undefined function,
keep the module unfolded (correct, only less folded).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

log = logging.getLogger("tvm_sparse")


def undefined_callees(mod: tvm.IRModule) -> list[str]:
    """Names of global functions that ``mod``'s Relax functions reference but it lacks."""
    defined = {gv.name_hint for gv in mod.get_global_vars()}
    missing: set[str] = set()
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            missing |= {gv.name_hint for gv in relax.analysis.all_global_vars(func)} - defined
    return sorted(missing)


# TVM 0.27 folds Relax's Constant, PrimValue, StringImm and DataTypeImm into tvm.ir.Constant
_CONSTANT_LEAVES = (tvm.ir.Constant, relax.ShapeExpr, tvm.ir.GlobalVar, relax.ExternFunc)


def _constant_like(expr: relax.Expr, constant_vars: set) -> bool:
    if isinstance(expr, _CONSTANT_LEAVES):
        return True
    if isinstance(expr, relax.Var):
        return expr in constant_vars
    if isinstance(expr, relax.Tuple):
        return all(_constant_like(e, constant_vars) for e in expr.fields)
    if isinstance(expr, relax.TupleGetItem):
        return _constant_like(expr.tuple_value, constant_vars)
    return False


def nothing_to_fold(mod: tvm.IRModule) -> bool:
    """True when no call in ``mod`` has only constant arguments, so ``FoldConstant`` would
    change nothing (it still costs ~90 ms on a CNN: skipped). Conservative: a function with
    control flow or nested functions, or a call without arguments, counts as foldable."""
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        if not isinstance(func.body, relax.SeqExpr):
            return False
        constant_vars: set[relax.Var] = set()
        for block in func.body.blocks:
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    return False
                value = binding.value
                if _constant_like(value, constant_vars):
                    constant_vars.add(binding.var)
                elif isinstance(value, relax.Call):
                    if all(_constant_like(a, constant_vars) for a in value.args):
                        return False
                elif not isinstance(value, relax.Var | relax.Tuple | relax.TupleGetItem):
                    return False  # If, a nested function, ...
    return True


def SafeFoldConstant() -> tvm.transform.Pass:  # noqa: N802 - named like TVM's passes
    """``FoldConstant``, or the module unchanged where folding would drop a callee."""

    @tvm.transform.module_pass(opt_level=0, name="tvm_sparse.SafeFoldConstant")
    def fold(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if nothing_to_fold(mod):
            return mod
        folded = relax.transform.FoldConstant()(mod)
        missing = undefined_callees(folded)
        if missing:
            log.debug("FoldConstant dropped %s: kept the module unfolded", ", ".join(missing))
            return mod
        return folded

    return fold
