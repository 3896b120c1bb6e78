"""LayerNorm kernels for two forms TVM schedules badly (CPU targets only).

1. ``permute(x, [0, 2, .., 1]) -> layer_norm(last axis) -> permute(back)``: a LayerNorm over
   the channels of an NCHW tensor written through permutes (torchvision's ``LayerNorm2d``;
   ConvNeXt's stem and downsampling norms). TVM runs two transpose kernels and the norm; this
   pass calls ``schedules.layernorm_x86.channels_first_layer_norm_kernel`` on ``x`` itself,
   which reduces over axis 1 with the pixels in the vector lanes and writes NCHW directly.
   Matched: float32, static shape of rank >= 3, ``center`` and ``scale``, gamma and beta of
   shape ``(C,)``, the first permute and the norm each read only by the next op.
2. ``layer_norm`` over the last axis of a tensor with a single row (``[1, C]``: the pooled
   feature vector before a classifier head): TVM's schedule recomputes the row's mean for each
   element (about 1 ms for C = 768 at 1 thread); ``layer_norm_kernel`` takes microseconds.
   Norms over more rows keep TVM's kernel (it is fast there).

Runs after FuseAddLayerNorm (``layer_norm(a + b)`` keeps its own fused kernel). Values are
those of the unfused ops up to float rounding (two-pass mean and variance in float32).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter, call_kernel
from ..schedules.layernorm_x86 import channels_first_layer_norm_kernel, layer_norm_kernel
from .cpu_only import CpuRewrite

_LN = is_op("relax.nn.layer_norm")(wildcard(), wildcard(), wildcard())
_OUTER = is_op("relax.permute_dims")(wildcard())


def _ln_ok(ln: relax.Call, shape: tuple) -> bool:
    """A float32 norm over the last axis with center and scale, gamma / beta of ``(C,)``."""
    x, gamma, beta = ln.args
    attrs = ln.attrs
    axes = [int(a) for a in attrs.axes]
    if axes not in ([-1], [len(shape) - 1]) or not (attrs.center and attrs.scale):
        return False
    if any(dtype_of(e) != "float32" for e in (x, gamma, beta)):
        return False
    return static_shape(gamma) == (shape[-1],) and static_shape(beta) == (shape[-1],)


def _axes(call: relax.Call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def _channels_first(value: relax.Call, bindings: Bindings) -> tuple | None:
    """``(x, gamma, beta, eps)`` when ``value = permute(layer_norm(permute(x)))`` is a
    channels-first norm of ``x``."""
    var2val, uses = bindings.var2val, bindings.uses
    ln_var = value.args[0]
    ln = var2val.get(ln_var) if isinstance(ln_var, relax.Var) else None
    if not isinstance(ln, relax.Call) or ln.op != tvm.ir.Op.get("relax.nn.layer_norm"):
        return None
    inner_var = ln.args[0]
    inner = var2val.get(inner_var) if isinstance(inner_var, relax.Var) else None
    if not isinstance(inner, relax.Call) or inner.op != tvm.ir.Op.get("relax.permute_dims"):
        return None
    x = inner.args[0]
    shape = static_shape(x)
    if shape is None or len(shape) < 3 or dtype_of(x) != "float32":
        return None
    rank = len(shape)
    if _axes(inner) != [0, *range(2, rank), 1] or _axes(value) != [
        0,
        rank - 1,
        *range(1, rank - 1),
    ]:
        return None
    if uses[inner_var] != 1 or uses[ln_var] != 1 or not _ln_ok(ln, static_shape(inner_var)):
        return None
    return "channels_first", x, ln.args[1], ln.args[2], float(ln.attrs.epsilon)


def _single_row(value: relax.Call) -> tuple | None:
    x = value.args[0]
    shape = static_shape(x)
    if shape is None or not _ln_ok(value, shape):
        return None
    rows = 1
    for s in shape[:-1]:
        rows *= int(s)
    if rows != 1:
        return None
    return "rows", x, value.args[1], value.args[2], float(value.attrs.epsilon)


@mutator
class _LayerNormRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.count = 0
        self.target = target

    def replacement(self, var: relax.Var, match: tuple) -> relax.Expr:
        form, x, gamma, beta, eps = match
        shape = static_shape(x)
        make = channels_first_layer_norm_kernel if form == "channels_first" else layer_norm_kernel
        kernel = make(shape, eps, target=self.target)
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        args = [self.visit_expr(e) for e in (x, gamma, beta)]
        return call_kernel(self.builder_, kernel.func, name, args, shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseChannelLayerNorm")
class FuseChannelLayerNorm(CpuRewrite):
    """Rewrite every channels-first (permuted) layer norm and every single-row layer norm of
    every Relax function (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _LayerNormRewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        for var, value, _found in bindings.matches(_OUTER):
            match = _channels_first(value, bindings)
            if match is not None:
                plan[var] = match
        for var, value, _found in bindings.matches(_LN):
            match = _single_row(value)
            if match is not None:
                plan[var] = match
        return _LayerNormRewriter(plan, mod, target) if plan else None
