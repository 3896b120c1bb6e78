"""Rewrite ``layer_norm(a + b)`` (the residual connection of a post-LN block) to one kernel.

Why: TVM's FuseOps keeps the add and the layer norm in separate kernels, so the sum is written
out and read back twice; ``schedules.layernorm_x86`` does both in one pass over each row (a
BERT encoder has two of these per layer). Matched: ``layer_norm`` over the last axis only, with
``center`` and ``scale``, float32, whose input is an ``add`` of two tensors of the input's own
shape (no broadcasting) that nothing else reads. A ``reshape`` feeding the add is looked through
(the kernel reads rows flat). Runs after the Sparsify phase (the sublayer output is then a sparse
kernel's result), CPU targets only; anything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..ir.relax_utils import (
    dtype_of,
    rebind,
    rewrite_functions,
    static_shape,
    through_reshape,
    use_counts,
)
from ..schedules.layernorm_x86 import add_layer_norm_kernel
from .cpu_only import cpu_target

# layer_norm(add(a, b), gamma, beta): the conditions on shapes and attributes are _check's
_PATTERN = is_op("relax.nn.layer_norm")(
    is_op("relax.add")(wildcard(), wildcard()), wildcard(), wildcard()
)


def _float32(*exprs: relax.Expr) -> bool:
    return all(dtype_of(e) == "float32" for e in exprs)


def _check(value: relax.Call, var2val: dict, uses) -> tuple | None:
    """``(a, b, gamma, beta, epsilon)`` when the matched ``layer_norm(add(a, b))`` is fusable."""
    x, gamma, beta = value.args
    shape, attrs = static_shape(x), value.attrs
    if shape is None or not _float32(x, gamma, beta) or not isinstance(x, relax.Var):
        return None
    axes = [int(a) for a in attrs.axes]
    if axes not in ([-1], [len(shape) - 1]) or not (attrs.center and attrs.scale):
        return None
    if static_shape(gamma) != (shape[-1],) or static_shape(beta) != (shape[-1],) or uses[x] != 1:
        return None
    a, b = var2val[x].args
    if static_shape(a) != shape or static_shape(b) != shape or not _float32(a, b):
        return None
    flat = [
        through_reshape(e, var2val.get, lambda s: _float32(s) and static_shape(s) is not None)
        for e in (a, b)
    ]
    return *flat, gamma, beta, float(attrs.epsilon)


@mutator
class _AddLayerNormRewriter(PyExprMutator):
    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(mod)
        self.plan = plan
        self.count = 0

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.plan.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        a, b, gamma, beta, eps = match
        out_shape = static_shape(binding.var)
        kernel = add_layer_norm_kernel(static_shape(a), static_shape(b), out_shape, eps)
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        gvar = self.builder_.add_func(kernel.func.with_attr("global_symbol", name), name)
        args = [self.visit_expr(e) for e in (a, b, gamma, beta)]
        out = relax.call_tir(gvar, args, relax.TensorType(out_shape, "float32"))
        rebind(self, binding.var, out)


def _rewriter_for(func: relax.Function, mod: tvm.IRModule) -> _AddLayerNormRewriter | None:
    var2val, uses = relax.analysis.get_var2val(func), use_counts(func)
    plan = {}
    for var, value in var2val.items():
        if isinstance(value, relax.Call) and _PATTERN.match(value, var2val):
            match = _check(value, var2val, uses)
            if match is not None:
                plan[var] = match
    return _AddLayerNormRewriter(plan, mod) if plan else None


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseAddLayerNorm")
class FuseAddLayerNorm:
    """Rewrite every fusable ``layer_norm(add(a, b))`` of every Relax function; a no-op on
    targets other than CPU (``target`` defaults to the one in scope)."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if cpu_target(self.target) is None:
            return mod
        return rewrite_functions(mod, _rewriter_for)
