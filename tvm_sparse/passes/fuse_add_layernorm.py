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
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, static_shape, through_reshape
from ..ir.rewrite import Bindings, PlannedRewriter, call_kernel
from ..schedules.layernorm_x86 import add_layer_norm_kernel
from .cpu_only import CpuRewrite

# layer_norm(add(a, b), gamma, beta): the conditions on shapes and attributes are _check's
_PATTERN = is_op("relax.nn.layer_norm")(
    is_op("relax.add")(wildcard(), wildcard()), wildcard(), wildcard()
)


def _float32(*exprs: relax.Expr) -> bool:
    return all(dtype_of(e) == "float32" for e in exprs)


def _check(value: relax.Call, bindings: Bindings) -> tuple | None:
    """``(a, b, gamma, beta, epsilon)`` when the matched ``layer_norm(add(a, b))`` is fusable."""
    var2val, uses = bindings.var2val, bindings.uses
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
class _AddLayerNormRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.count = 0
        self.target = target

    def replacement(self, var: relax.Var, match: tuple) -> relax.Expr:
        a, b, gamma, beta, eps = match
        out_shape = static_shape(var)
        kernel = add_layer_norm_kernel(
            static_shape(a), static_shape(b), out_shape, eps, target=self.target
        )
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        args = [self.visit_expr(e) for e in (a, b, gamma, beta)]
        return call_kernel(self.builder_, kernel.func, name, args, out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseAddLayerNorm")
class FuseAddLayerNorm(CpuRewrite):
    """Rewrite every fusable ``layer_norm(add(a, b))`` of every Relax function (CPU targets
    only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _AddLayerNormRewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        for var, value, _found in bindings.matches(_PATTERN):
            match = _check(value, bindings)
            if match is not None:
                plan[var] = match
        return _AddLayerNormRewriter(plan, mod, target) if plan else None
