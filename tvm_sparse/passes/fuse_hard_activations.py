"""Write the exported hard-sigmoid and hand-written hard-swish in their canonical Relax forms.

Why: MobileNetV3 puts a hard-swish after most convs and a hard-sigmoid gate in every
squeeze-excitation block. Left as TVM's add / clip / divide / multiply they are a separate
elementwise kernel after each conv, a full pass over its output. In the canonical forms of
``ir.hard_activations`` the layer finder (``ir.layers``) takes them as the conv's ``hardswish``
/ ``hardsigmoid`` epilogue, computed while the outputs are in registers.

Rewritten (each intermediate read only by the next op, one static float32 shape throughout):

- ONNX ``HardSigmoid`` as TVM's frontend imports it, ``clip(add(multiply(alpha, x), beta), 0, 1)``
  (operands in either order), with torch's ``alpha = 1/6`` (as float32) and ``beta = 0.5``, into
  ``divide(clip(add(x, 3), 0, 6), 6)``. Other alpha / beta (ONNX's default 0.2) are left
  alone: ``FoldAffineIntoLayers`` folds their scale and shift into a preceding layer and the
  ``clip(., 0, 1)`` stays a separate op.
- the hand-written ``x * relu6(x + 3) / 6``, ``divide(multiply(x, clip(add(x, 3), 0, 6)), 6)``,
  into ``multiply(x, divide(clip(add(x, 3), 0, 6), 6))``, the form the frontend gives ONNX
  ``HardSwish`` (one rounding apart: x * (c / 6) against (x * c) / 6).

The frontend's ONNX ``HardSwish`` is already canonical. A ``clip`` with other bounds, or a divide
by anything but 6, is not a hard activation and is left alone.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.hard_activations import clip_bounds, const_operand
from ..ir.relax_utils import dtype_of, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter, rewrite_functions

_ONE_SIXTH = float(np.float32(1.0 / 6.0))


def _private(var, bindings: Bindings):
    """``var``'s value when ``var`` is a Var read only once, else None."""
    if not isinstance(var, relax.Var) or bindings.uses[var] != 1:
        return None
    return bindings.var2val.get(var)


def _same_tensor(*exprs) -> bool:
    shape = static_shape(exprs[0])
    return shape is not None and all(
        static_shape(e) == shape and dtype_of(e) == "float32" for e in exprs
    )


def _onnx_hard_sigmoid(var, value, bindings: Bindings):
    """``("hardsigmoid", x)`` for ``clip(add(multiply(1/6, x), 0.5), 0, 1)`` bound to ``var``."""
    if clip_bounds(value) != (0.0, 1.0):
        return None
    shifted = value.args[0]
    add = const_operand(_private(shifted, bindings), "relax.add", commutative=True)
    if add is None or add[1] != 0.5:
        return None
    mul = const_operand(_private(add[0], bindings), "relax.multiply", commutative=True)
    if mul is None or mul[1] != _ONE_SIXTH:
        return None
    x = mul[0]
    return ("hardsigmoid", x) if _same_tensor(x, add[0], shifted, var) else None


def _relu6_of_x_plus_3(c, bindings: Bindings):
    """``x`` when ``c`` is a private ``clip(add(x, 3), 0, 6)``, else None."""
    clip = _private(c, bindings)
    if clip is None or clip_bounds(clip) != (0.0, 6.0):
        return None
    add = const_operand(_private(clip.args[0], bindings), "relax.add", commutative=True)
    return add[0] if add is not None and add[1] == 3.0 else None


def _hand_hard_swish(var, value, bindings: Bindings):
    """``("hardswish", x)`` for ``divide(multiply(x, clip(add(x, 3), 0, 6)), 6)`` at ``var``."""
    div = const_operand(value, "relax.divide", commutative=False)
    if div is None or div[1] != 6.0:
        return None
    product = _private(div[0], bindings)
    if product is None or getattr(product, "op", None) != tvm.ir.Op.get("relax.multiply"):
        return None
    for x, c in (product.args, product.args[::-1]):
        inner = _relu6_of_x_plus_3(c, bindings)
        if inner is not None and inner.same_as(x) and _same_tensor(x, div[0], var):
            return "hardswish", x
    return None


def _plan(func: relax.Function) -> dict[relax.Var, tuple[str, relax.Expr]]:
    bindings = Bindings.of(func)
    plan = {}
    for var, value in bindings.var2val.items():
        if not isinstance(value, relax.Call):
            continue
        found = _onnx_hard_sigmoid(var, value, bindings) or _hand_hard_swish(var, value, bindings)
        if found is not None:
            plan[var] = found
    return plan


@mutator
class _HardRewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, entry: tuple[str, relax.Expr]) -> relax.Expr:
        kind, x = entry
        x = self.visit_expr(x)
        f32 = "float32"
        t = self.builder_.emit(relax.op.add(x, relax.const(3.0, f32)))
        c = self.builder_.emit(relax.op.clip(t, 0.0, 6.0))
        gate = relax.op.divide(c, relax.const(6.0, f32))
        if kind == "hardsigmoid":
            return gate
        return relax.op.multiply(x, self.builder_.emit(gate))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseHardActivations")
class FuseHardActivations:
    """Rewrite ONNX's HardSigmoid(1/6, 0.5) and a hand-written hard-swish into the canonical
    forms of ``ir.hard_activations``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewriter_for(func: relax.Function, module: tvm.IRModule):
            plan = _plan(func)
            return _HardRewriter(plan, module) if plan else None

        return rewrite_functions(mod, rewriter_for)
