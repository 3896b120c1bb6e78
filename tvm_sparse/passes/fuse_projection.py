"""Fuse a ResNet block's projection shortcut into its last conv: one sparse 1x1 conv over both
inputs.

Why: a downsampling block ends in ``relu(conv3(x2) + downsample(x0))``, both 1x1 convs onto
the same output grid. Left as two kernels (the add fused into conv3, ``fuse_residual``), the
shortcut conv writes a whole output-sized tensor and conv3 reads it back: in ResNet-50's first
stage 3 MiB each way, past L2, on a machine whose L3 moves ~10-20 GB/s to one core. Summed
in one kernel, ``conv3(x2) + downsample(x0) = conv(concat(x2, x0[::s, ::s]), [W3 | Wd])``:
the panel kernel copies both inputs into its scratch (x0 strided) and runs the weights of both
as one sparse matrix, so the shortcut never exists as a tensor.

Matched (after Sparsify, CPU only): ``add(a, b)`` where ``a`` and ``b`` are both sparse 1x1
panel convs (``sparse_conv2d_panel``: unpadded, no activation, no residual, no second input
yet), each read only by the add, with the same output shape; a ``relu`` that is the add's only
reader is taken in too. Runs before ``FuseResidual``, which would otherwise take the shortcut as
conv3's residual. The weights come back from the kernels' packed records (``panel_weights``).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import (
    const_array,
    constant,
    dtype_of,
    kernel_spec,
    op_name,
    static_shape,
)
from ..ir.rewrite import Bindings, PlannedRewriter, call_kernel, relu_after
from ..schedules._conv_dims import ConvAttrs
from ..schedules.isolation import compile_check
from ..schedules.sparse_conv_panel_x86 import SPEC_ATTR as PANEL_ATTR
from ..schedules.sparse_conv_panel_x86 import PanelConvSpec, sparse_conv2d_panel
from .cpu_only import CpuRewrite

log = logging.getLogger("tvm_sparse")


def panel_weights(
    spec: PanelConvSpec, consts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The dense ``(O, C, 1, 1)`` weight and the bias (None without one) a 1x1 panel conv was
    built from, read back from its constants ``(records, seg, slot_rows, bias)``: each record
    holds a value (low 32 bits) and its column's offset ``c * x_stride`` (high 32 bits), slot
    ``s`` is row ``slot_rows[s]``'s records ``seg[s] .. seg[s + 1]``."""
    recs, seg, slot_rows, bias = consts
    counts = np.diff(seg.astype(np.int64))
    nnz = int(counts.sum())
    rows = np.repeat(slot_rows.astype(np.int64), counts)
    values = (recs[:nnz] & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
    cols = (recs[:nnz] >> 32) // spec.x_stride
    weight = np.zeros((spec.o, spec.channels), np.float32)
    weight[rows, cols] = values
    return weight.reshape(spec.o, spec.channels, 1, 1), (bias if spec.has_bias else None)


def _panel_1x1(expr: relax.Expr, bindings: Bindings, mod: tvm.IRModule):
    """``(call, spec)`` when ``expr`` is a var read only once and bound to a plain 1x1 panel
    conv (no padding, activation, residual or second input) with constant weights."""
    if not isinstance(expr, relax.Var) or bindings.uses[expr] != 1:
        return None
    call = bindings.var2val.get(expr)
    if op_name(call) != "relax.call_tir" or not isinstance(call.args[1], relax.Tuple):
        return None
    found = kernel_spec(call, mod, [PANEL_ATTR])
    if found is None:
        return None
    spec = PanelConvSpec.from_dict(found[1])
    plain = not (spec.residual or spec.activation or spec.x2_shape or spec.inplace)
    if not plain or spec.on_planes:
        return None
    x, *consts = call.args[1].fields
    if len(consts) != 4 or not all(isinstance(c, tvm.ir.Constant) for c in consts):
        return None
    return call, spec


def _pair(var: relax.Var, add: relax.Call, bindings: Bindings, mod: tvm.IRModule):
    """The two panel convs of a fusable ``add`` bound to ``var``, the stride-1 one first."""
    shape = static_shape(var)
    if shape is None or dtype_of(var) != "float32":
        return None
    found = [_panel_1x1(e, bindings, mod) for e in add.args]
    if any(f is None for f in found):
        return None
    (call_a, a), (call_b, b) = sorted(found, key=lambda f: f[1].strides != (1, 1))
    if (a.o, a.out_hw, a.x_shape[0]) != (b.o, b.out_hw, b.x_shape[0]) or a.x_shape[0] != shape[0]:
        return None
    return (call_a, a), (call_b, b)


def fused_projection(pair, activation: str | None, target: tvm.target.Target):
    """The one kernel of ``act(conv_a(x_a) + conv_b(x_b))`` (a KernelCall, arguments ``x_a,
    x_b, consts...``), or None when it does not compile."""
    (call_a, a), (call_b, b) = pair
    wa, bias_a = panel_weights(a, [const_array(c) for c in call_a.args[1].fields[1:]])
    wb, bias_b = panel_weights(b, [const_array(c) for c in call_b.args[1].fields[1:]])
    biases = [v for v in (bias_a, bias_b) if v is not None]
    bias = np.sum(biases, axis=0).astype(np.float32) if biases else None
    kernel = sparse_conv2d_panel(
        a.x_shape, np.concatenate([wa, wb], axis=1), bias, ConvAttrs(strides=a.strides),
        activation, target, parallel=a.parallel, second_input=(b.x_shape, b.strides),
    )  # fmt: skip
    failure = compile_check("sparse_conv2d_projection", kernel, target)
    if failure is not None:
        log.warning("projection fusion skipped: the fused conv failed to compile (%s)", failure)
        return None
    return kernel


@mutator
class _ProjectionRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(plan, mod)
        self.count = 0

    def replacement(self, var: relax.Var, entry: tuple) -> relax.Expr:
        (call_a, call_b), kernel = entry
        name = f"sparse_conv2d_projection_{self.count}"
        self.count += 1
        inputs = [self.visit_expr(c.args[1].fields[0]) for c in (call_a, call_b)]
        consts = [constant(c) for c in kernel.consts]
        return call_kernel(self.builder_, kernel.func, name, [*inputs, *consts], static_shape(var))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseProjection")
class FuseProjection(CpuRewrite):
    """Fuse ``relu(panel_1x1(x2) + panel_1x1(x0))`` into one two-input panel conv (CPU only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _ProjectionRewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        for var, value in bindings.var2val.items():
            if op_name(value) != "relax.add":
                continue
            pair = _pair(var, value, bindings, mod)
            if pair is None:
                continue
            target_var, activation = relu_after(bindings, var)
            kernel = fused_projection(pair, activation, target)
            if kernel is not None:
                plan[target_var] = ((pair[0][0], pair[1][0]), kernel)
        return _ProjectionRewriter(plan, mod) if plan else None
