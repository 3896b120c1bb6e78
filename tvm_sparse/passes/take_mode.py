"""Gathers with bounds-checked indexing: ``take(mode="fast")`` becomes ``mode="clip"``.

Why: TVM's ONNX frontend writes Gather as ``take(..., mode="fast")``, which reads whatever an
out-of-range index points at (a segfault, TVM warns: "Fast mode segfaults when there are
out-of-bounds indices", printed on every compile, several times a model). With in-range
indices ``clip`` gives the same values, and an index from a bad input is clamped instead of
taking the process down; the cost is a min and a max per index. ``CheckTakeIndices`` (Legalize
phase) then makes such an index an error at run time, as onnxruntime does. Applied first, so
constant folding never legalizes (and warns about) a fast-mode gather either.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..ir.relax_utils import op_name


@mutator
class _TakeMode(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if op_name(call) != "relax.take" or str(call.attrs.mode) != "fast":
            return call
        x, indices = call.args
        axis = call.attrs.axis
        return relax.op.take(x, indices, None if axis is None else int(axis), mode="clip")


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.ClipTakeMode")
class ClipTakeMode:
    """Every ``take(mode="fast")`` of the module's Relax functions -> ``mode="clip"``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter = _TakeMode(mod)
                mod[gvar] = rewriter.visit_expr(func)
        return mod
