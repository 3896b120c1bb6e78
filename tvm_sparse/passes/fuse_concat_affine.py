"""A channel concat and the per-channel affine ops and ReLU after it -> one copy kernel.

Why: see ``schedules.concat_affine_x86`` (TVM's concat evaluates every input's branch for each
output vector; DenseNet-121 spends 12% of its time in concat + BatchNorm + ReLU at 0%).

Matched (CPU, after Sparsify): ``concat(xs, axis=1)`` of NCHW float32 tensors of static
shapes, then a chain, each step its predecessor's only reader, of ``add``, ``subtract``,
``multiply`` or ``divide`` with a constant that broadcasts per channel (shape ``()``, ``(1,)``,
``(C, 1, 1)``, ``(1, C, 1, 1)``; the value on the left for ``subtract`` and ``divide``), then
at most one ``relu``. The chain folds into ``x * scale + shift`` (float64, then float32: the
result may differ from the op-by-op one in the last bits). A constant that is not finite, a
zero divisor, or a scale or shift that overflows float32 keeps the ops as they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import const_array, dtype_of, op_name, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter, call_kernel
from ..schedules.concat_affine_x86 import concat_affine
from ..target import num_cores, vector_lanes
from .cpu_only import CpuRewrite

AFFINE_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _per_channel(expr: relax.Expr, channels: int) -> np.ndarray | None:
    """A constant broadcast to one float64 value per channel of an NCHW tensor, else None."""
    value = const_array(expr)
    if value is None or value.ndim > 4 or value.dtype != np.float32:
        return None
    shaped = value.reshape((1,) * (4 - value.ndim) + value.shape)
    if shaped.shape[0] != 1 or shaped.shape[2:] != (1, 1) or shaped.shape[1] not in (1, channels):
        return None
    per_channel = np.broadcast_to(shaped.astype(np.float64), (1, channels, 1, 1)).reshape(-1)
    return per_channel if np.all(np.isfinite(per_channel)) else None


def _fold(op: str, scale, shift, k: np.ndarray, value_on_left: bool):
    """``scale``, ``shift`` of ``op(x * scale + shift, k)`` (or ``op(k, ...)``), or None."""
    if op == "relax.add":
        return scale, shift + k
    if op == "relax.multiply":
        return scale * k, shift * k
    if op == "relax.subtract":
        return (scale, shift - k) if value_on_left else (-scale, k - shift)
    if op == "relax.divide" and value_on_left and np.all(k != 0):
        return scale / k, shift / k
    return None


def _plan_entry(var: relax.Var, value: relax.Expr, bindings: Bindings):
    """``(end var, [inputs], scale, shift, activation)`` for a concat this pass takes."""
    if op_name(value) != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return None
    shape = static_shape(var)
    if shape is None or len(shape) != 4 or dtype_of(var) != "float32":
        return None
    if int(value.attrs.axis) not in (1, -3):
        return None
    xs = list(value.args[0].fields)
    shapes = [static_shape(x) for x in xs]
    if any(s is None or len(s) != 4 or dtype_of(x) != "float32" for s, x in zip(shapes, xs)):
        return None
    channels = shape[1]
    scale, shift = np.ones(channels), np.zeros(channels)
    end, activation = var, None
    while True:
        reader = bindings.single_reader(end)
        if reader is None:
            break
        call = bindings.var2val[reader]
        name = op_name(call)
        if name == "relax.nn.relu":
            end, activation = reader, "relu"
            break
        if name not in AFFINE_OPS or static_shape(reader) != shape:
            break
        left = call.args[0].same_as(end)
        k = _per_channel(call.args[1] if left else call.args[0], channels)
        folded = None if k is None else _fold(name, scale, shift, k, left)
        if folded is None:
            break
        scale, shift = folded
        end = reader
    with np.errstate(over="ignore"):
        scale32, shift32 = scale.astype(np.float32), shift.astype(np.float32)
    if not (np.all(np.isfinite(scale32)) and np.all(np.isfinite(shift32))):
        return None
    return end, xs, [tuple(s) for s in shapes], scale32, shift32, activation


@mutator
class _Rewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.target = target
        self.count = 0

    def replacement(self, var: relax.Var, entry) -> relax.Expr:
        xs, shapes, scale, shift, activation = entry
        kernel = concat_affine(
            shapes, scale, shift, activation, vector_lanes(self.target), num_cores(self.target)
        )
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        args = [self.visit_expr(x) for x in xs] + [relax.const(c) for c in kernel.consts]
        return call_kernel(self.builder_, kernel.func, name, args, kernel.out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseConcatAffine")
class FuseConcatAffine(CpuRewrite):
    """``act(concat(xs) * scale + shift)`` over channels -> one copy kernel (CPU only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _Rewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        for var, value in bindings.var2val.items():
            found = _plan_entry(var, value, bindings)
            if found is not None:
                end, *entry = found
                plan[end] = tuple(entry)
        return _Rewriter(plan, mod, target) if plan else None
