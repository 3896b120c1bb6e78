"""Rewrite ``layer_norm(a + b)`` (the residual connection of a post-LN block) to one kernel.

Why: TVM's FuseOps keeps the add and the layer norm in separate kernels, so the sum is written
out and read back twice; ``schedules.layernorm_x86`` does both in one pass over each row (a
BERT encoder has two of these per layer). Matched: ``layer_norm`` over the last axis only, with
``center`` and ``scale``, float32, whose input is an ``add`` of two tensors of the input's own
shape (no broadcasting) that nothing else reads. A ``reshape`` feeding the add is looked through
(the kernel reads rows flat). Runs after ``Sparsify`` (the sublayer output is then a sparse
kernel's result), llvm targets only; anything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..ir.relax_utils import (
    binding_map,
    dtype_of,
    llvm_target,
    op_name,
    rebind,
    reshape_input,
    rewrite_functions,
    static_shape,
    use_counts,
)
from ..schedules.layernorm_x86 import add_layer_norm_kernel


def _flat(expr: relax.Expr, bindings: dict) -> relax.Expr:
    """The input of the reshape that produced ``expr`` (the same values row-major), else it."""
    src = reshape_input(expr, bindings.get)
    if src is not None and dtype_of(src) == "float32" and static_shape(src) is not None:
        return src
    return expr


def _match(value: relax.Expr, bindings: dict, uses) -> tuple | None:
    """``(a, b, gamma, beta, epsilon)`` when ``value`` is a fusable layer_norm(add(a, b))."""
    if op_name(value) != "relax.nn.layer_norm":
        return None
    x, gamma, beta = value.args
    shape, attrs = static_shape(x), value.attrs
    if shape is None or dtype_of(x) != "float32" or not isinstance(x, relax.Var):
        return None
    axes = [int(a) for a in attrs.axes]
    if axes not in ([-1], [len(shape) - 1]) or not (attrs.center and attrs.scale):
        return None
    if static_shape(gamma) != (shape[-1],) or static_shape(beta) != (shape[-1],):
        return None
    if dtype_of(gamma) != "float32" or dtype_of(beta) != "float32" or uses[x] != 1:
        return None
    add = bindings.get(x)
    if op_name(add) != "relax.add":
        return None
    a, b = add.args
    if static_shape(a) != shape or static_shape(b) != shape:
        return None
    if dtype_of(a) != "float32" or dtype_of(b) != "float32":
        return None
    return _flat(a, bindings), _flat(b, bindings), gamma, beta, float(attrs.epsilon)


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


def fuse_add_layer_norm(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite every matching ``layer_norm(add(a, b))`` of every Relax function of ``mod``."""

    def rewriter_for(func: relax.Function, current: tvm.IRModule):
        bindings, uses = binding_map(func), use_counts(func)
        plan = {}
        for var, value in bindings.items():
            match = _match(value, bindings, uses)
            if match is not None:
                plan[var] = match
        return _AddLayerNormRewriter(plan, current) if plan else None

    return rewrite_functions(mod, rewriter_for)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseAddLayerNorm")
class FuseAddLayerNorm:
    """The pass form of :func:`fuse_add_layer_norm`; a no-op on targets other than llvm."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return fuse_add_layer_norm(mod) if llvm_target(None) is not None else mod
