"""Rewrite ``conv1d`` as a ``conv2d`` of height 1, a layer the conv kernels take.

Why: TVM 0.27 legalizes ``nn.conv1d`` into a loop nest that no schedule here touches (scalar,
one thread): an M5-style raw-audio net (16,000 samples, Conv1d 80/4 stem, 128-512 channels)
ran in ~220 ms at 1 thread against onnxruntime's 3 ms, and its pruned convs were not layers of
the report at all. As ``conv2d`` on ``[n, c, 1, l]`` with an ``[o, i, 1, k]`` weight (strides,
padding and dilation on the width axis) each is a conv layer: dense, sparse, depthwise kernels
as for images; reshapes (free views) put the height axis in and take it out.

Matched: ``conv1d`` with a constant float32 weight, layouts NCW / OIW, static shapes.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import constant_weight_conv, dtype_of, int_tuple
from ..ir.rewrite import PlannedRewriter, rewrite_bindings


def _plan_entry(var: relax.Var, value: relax.Expr):
    found = constant_weight_conv(var, value, "relax.nn.conv1d", ("NCW", "OIW", "NCW"))
    if found is None:
        return None
    x, weight, x_shape, out_shape = found
    attrs = value.attrs
    if weight.ndim != 3 or attrs.out_dtype not in (None, "", "float32"):
        return None
    if len(x_shape) != 3 or dtype_of(x) != "float32":
        return None
    padding = int_tuple(attrs.padding)
    if len(padding) == 1:
        padding = padding * 2
    conv = {
        "strides": (1, *int_tuple(attrs.strides)),
        "padding": (0, padding[0], 0, padding[1]),
        "dilation": (1, *int_tuple(attrs.dilation)),
        "groups": int(attrs.groups),
    }
    n, c, length = x_shape
    return (x, (n, c, 1, length), weight[:, :, None, :].copy(), conv, out_shape)


@mutator
class _Rewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, entry) -> relax.Expr:
        x, x4, weight4, conv, out_shape = entry
        y = relax.op.reshape(self.visit_expr(x), x4)
        y = relax.op.nn.conv2d(y, relax.const(weight4), **conv)
        return relax.op.reshape(y, out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.RewriteConv1d")
class RewriteConv1d:
    """Every ``conv1d`` with a constant weight -> ``conv2d`` of height 1 between reshapes."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_bindings(mod, _plan_entry, _Rewriter)
