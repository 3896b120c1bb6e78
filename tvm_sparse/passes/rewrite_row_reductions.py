"""Rewrite ``mean`` / ``sum`` over a tensor's trailing axes (global average pooling) to the
vector row-reduction kernel (``schedules.row_reduce_x86``).

Why: TVM's legalized reduction is a scalar add chain per output; EfficientNet's
squeeze-excitation pooling ran 4x slower than onnxruntime's. Matched: ``relax.mean`` or
``relax.sum`` of a float32 tensor with a static shape, over its last axes only (any
``keepdims``). CPU targets only; anything else is left as it is.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, iter_bindings, op_name, static_shape
from ..ir.rewrite import PlannedRewriter, call_kernel
from ..schedules.row_reduce_x86 import row_reduce
from .cpu_only import CpuRewrite

_OPS = {"relax.mean": True, "relax.sum": False}  # op -> whether it is a mean
_MIN_ROW = 8  # a row shorter than this gains nothing from vectors


def _trailing_axes(value: relax.Call) -> int | None:
    """How many trailing axes ``value`` (a mean / sum) reduces, when it reduces only those."""
    shape = static_shape(value.args[0])
    if shape is None or dtype_of(value.args[0]) != "float32" or value.attrs.axis is None:
        return None
    ndim = len(shape)
    axes = sorted(int(a) % ndim for a in value.attrs.axis)
    if not axes or axes != list(range(ndim - len(axes), ndim)):
        return None
    row = 1
    for d in shape[ndim - len(axes) :]:
        row *= d
    return len(axes) if row >= _MIN_ROW else None


@mutator
class _RowReduceRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.target = target

    def replacement(self, var: relax.Var, match: tuple) -> relax.Expr:
        x, axes, mean = match
        out_shape = static_shape(var)
        kernel = row_reduce(static_shape(x), out_shape, axes, mean, target=self.target)
        args = [self.visit_expr(x), *(relax.const(c) for c in kernel.consts)]
        return call_kernel(self.builder_, kernel.func, kernel.name, args, out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.RewriteRowReductions")
class RewriteRowReductions(CpuRewrite):
    """Rewrite every trailing-axes ``mean`` / ``sum`` of every Relax function (CPU only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _RowReduceRewriter | None:
        plan = {}
        for binding in iter_bindings(func):
            value = binding.value
            if op_name(value) not in _OPS or static_shape(binding.var) is None:
                continue
            axes = _trailing_axes(value)
            if axes is not None:
                plan[binding.var] = (value.args[0], axes, _OPS[op_name(value)])
        return _RowReduceRewriter(plan, mod, target) if plan else None
