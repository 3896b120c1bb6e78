"""The canonical Relax forms of hard-sigmoid and hard-swish, and where a function holds them.

Canonical forms (what ``passes.fuse_hard_activations`` leaves; TVM's ONNX frontend writes ONNX
``HardSwish`` exactly so):

- hard-sigmoid: ``t = add(x, 3); c = clip(t, 0, 6); d = divide(c, 6)`` (torch's
  ``relu6(x + 3) / 6``), ``t`` and ``c`` read only by the next op;
- hard-swish: ``y = multiply(x, d)`` (either operand order), ``d`` a hard-sigmoid of the same
  ``x`` read only by ``y``.

All tensors float32 and of one static shape. The layer finder (``ir.layers``) takes either as a
conv's or linear's epilogue (``hardsigmoid`` / ``hardswish`` in ``schedules._epilogue``);
``FoldAffineIntoLayers`` leaves the ``add(x, 3)`` of one alone, so it is still there to match.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax

from .relax_utils import dtype_of, op_name, scalar_const, static_shape


def clip_bounds(value: relax.Expr) -> tuple[float, float] | None:
    """``(lo, hi)`` when ``value`` is ``clip(x, lo, hi)`` with numeric bounds, else None."""
    if op_name(value) != "relax.clip":
        return None
    bounds = []
    for arg in value.args[1:]:  # FloatImm, or a PrimValue holding one
        number = getattr(arg, "value", None)
        number = getattr(number, "value", number)
        if not isinstance(number, int | float):
            return None
        bounds.append(float(number))
    return bounds[0], bounds[1]


def const_operand(value: relax.Expr, op: str, commutative: bool) -> tuple[relax.Expr, float] | None:
    """``(x, c)`` when ``value`` is ``op(x, c)`` (or ``op(c, x)`` when ``commutative``) with
    ``c`` a float32 scalar constant, else None."""
    if op_name(value) != op:
        return None
    a, b = value.args[0], value.args[1]
    pairs = ((a, b), (b, a)) if commutative else ((a, b),)
    for x, c in pairs:
        number = scalar_const(c, "float32")
        if number is not None and not isinstance(x, tvm.ir.Constant):
            return x, number
    return None


@dataclass(frozen=True)
class HardActivation:
    """One canonical hard activation of ``x``: its ``kind`` (``hardsigmoid`` / ``hardswish``),
    its first binding's var (``head``: the ``add(x, 3)``) and its last (``tail``)."""

    kind: str
    x: relax.Expr
    head: relax.Var
    tail: relax.Var


def _same_tensor(*exprs: relax.Expr) -> bool:
    shape = static_shape(exprs[0])
    return shape is not None and all(
        static_shape(e) == shape and dtype_of(e) == "float32" for e in exprs
    )


def hard_sigmoid_of(var: relax.Var, var2val, uses) -> HardActivation | None:
    """The hard-sigmoid whose ``divide`` is bound to ``var``, else None."""
    div = const_operand(var2val.get(var), "relax.divide", commutative=False)
    if div is None or div[1] != 6.0 or not isinstance(div[0], relax.Var) or uses[div[0]] != 1:
        return None
    clipped = div[0]
    clip = var2val.get(clipped)
    if clip_bounds(clip) != (0.0, 6.0) or not isinstance(clip.args[0], relax.Var):
        return None
    head = clip.args[0]
    add = const_operand(var2val.get(head), "relax.add", commutative=True)
    if add is None or add[1] != 3.0 or uses[head] != 1:
        return None
    x = add[0]
    if not _same_tensor(x, head, clipped, var):
        return None
    return HardActivation("hardsigmoid", x, head, var)


def find_hard_activations(var2val, uses) -> list[HardActivation]:
    """Every canonical hard-sigmoid and hard-swish of ``func``; a hard-sigmoid that a hard-swish
    multiplies is listed as that hard-swish only."""
    sigmoids = {}
    for var in var2val:
        found = hard_sigmoid_of(var, var2val, uses)
        if found is not None:
            sigmoids[var] = found
    swishes = {}
    for var, value in var2val.items():
        if op_name(value) != "relax.multiply":
            continue
        for gate, x in (value.args, value.args[::-1]):
            sig = sigmoids.get(gate) if isinstance(gate, relax.Var) else None
            if sig is None or uses[gate] != 1 or not sig.x.same_as(x):
                continue
            if _same_tensor(x, var):
                swishes[gate] = HardActivation("hardswish", x, sig.head, var)
                break
    return [swishes.get(var, sig) for var, sig in sigmoids.items()]
