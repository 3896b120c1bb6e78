"""Fuse the exported erf-GELU subgraph back into ``relax.nn.gelu`` (and the tanh form into
``relax.nn.gelu_tanh``).

Why: ONNX (opset < 20) has no Gelu op, so exporters write ``x * 0.5 * (1 + erf(x / sqrt(2)))``
as five elementwise ops. Left that way, the FFN's first linear has five users downstream instead
of one activation, the layer matcher (``layers.py``) sees no epilogue, and the GELU costs four
extra passes over a [batch*seq, 4*hidden] tensor. As one ``nn.gelu`` it becomes the epilogue of
the (sparse or dense) kernel. The math is unchanged: gelu(x) = 0.5 x (1 + erf(x / sqrt(2))).

Matched forms (every association and operand order the PyTorch exporters write):
``z = x / sqrt(2)`` or ``z = x * (1/sqrt(2))``; ``a = erf(z) + 1`` (either order); and the product
of the three factors ``x``, ``a`` and ``0.5`` in any grouping, e.g. ``(x * a) * 0.5`` (TorchScript
exporter), ``(x * 0.5) * a`` or ``0.5 * (x * a)``. The three groupings are three ``relax.dpl``
patterns; dpl tries both operand orders of ``add`` and ``multiply`` itself. The tanh form
(``_GeluTanhPattern``) is the same product with ``a = 1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))``:
without it, a GPT-2 FFN's GELU was a separate pass over [seq, 4 * hidden], 17% of the model.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, scalar_const, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules._epilogue import GELU_TANH_CUBIC, SQRT_2_PI

_RTOL = 1e-6


class _GeluPattern:
    """``x * (1 + erf(x / sqrt(2))) * 0.5`` in each grouping of its three factors.

    Each grouping (and each spelling of ``x / sqrt(2)``) is built from its own pattern objects,
    so which one matched is read off the match and the constants are checked against it.
    """

    _GROUPINGS = ((("x", "a"), "half"), (("x", "half"), "a"), (("a", "half"), "x"))

    def __init__(self):
        self.groupings = [self._grouping(inner, last) for inner, last in self._GROUPINGS]
        self.pattern: DFPattern = self.groupings[0]["root"]
        for grouping in self.groupings[1:]:
            self.pattern = self.pattern | grouping["root"]

    @staticmethod
    def _grouping(inner: tuple[str, str], last: str) -> dict[str, DFPattern]:
        p = {"x": wildcard(), "one": is_const(), "half": is_const()}
        p["x_div"], p["sqrt2"] = wildcard(), is_const()
        p["x_mul"], p["rsqrt2"] = wildcard(), is_const()
        p["divided"] = is_op("relax.divide")(p["x_div"], p["sqrt2"])
        scaled = is_op("relax.multiply")(p["x_mul"], p["rsqrt2"])
        p["a"] = is_op("relax.add")(is_op("relax.erf")(p["divided"] | scaled), p["one"])
        p["inner"] = is_op("relax.multiply")(p[inner[0]], p[inner[1]])
        p["root"] = is_op("relax.multiply")(p["inner"], p[last])
        return p

    def read(self, found: dict, bound: dict) -> tuple | None:
        """``(x, inner)`` when ``found`` (a match of ``self.pattern``) is the erf-GELU of ``x``
        with the right constants; ``inner`` is the var of the inner product (the caller checks
        nothing else reads it). ``bound`` maps the values dpl reports back to their vars."""
        p = next(g for g in self.groupings if g["root"] in found)
        if p["divided"] in found:
            erf_x, scale = found[p["x_div"]], (p["sqrt2"], math.sqrt(2.0))
        else:
            erf_x, scale = found[p["x_mul"]], (p["rsqrt2"], math.sqrt(0.5))
        constants = (scale, (p["one"], 1.0), (p["half"], 0.5))
        if not found[p["x"]].same_as(erf_x) or not all(_close(found[c], v) for c, v in constants):
            return None
        return bound.get(erf_x, erf_x), bound[found[p["inner"]]]


class _GeluTanhPattern(_GeluPattern):
    """``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` (GPT-2's NewGELU, PyTorch's
    ``gelu(approximate="tanh")`` below opset 20) in each grouping of its three outer factors;
    ``x^3`` as ``(x * x) * x`` or ``x * (x * x)`` (``integer_powers`` writes ``Pow(x, 3)``
    so)."""

    @staticmethod
    def _grouping(inner: tuple[str, str], last: str) -> dict[str, DFPattern]:
        p = {name: wildcard() for name in ("x", "x_sum", "x_sq1", "x_sq2", "x_cube")}
        p.update({name: is_const() for name in ("one", "half", "scale", "cubic")})
        square = is_op("relax.multiply")(p["x_sq1"], p["x_sq2"])
        cube = is_op("relax.multiply")(square, p["x_cube"])  # dpl tries both operand orders
        poly = is_op("relax.add")(p["x_sum"], is_op("relax.multiply")(p["cubic"], cube))
        tanh = is_op("relax.tanh")(is_op("relax.multiply")(p["scale"], poly))
        p["a"] = is_op("relax.add")(tanh, p["one"])
        p["inner"] = is_op("relax.multiply")(p[inner[0]], p[inner[1]])
        p["root"] = is_op("relax.multiply")(p["inner"], p[last])
        return p

    def read(self, found: dict, bound: dict) -> tuple | None:
        """``(x, inner)`` as ``_GeluPattern.read`` gives them, for the tanh form."""
        p = next(g for g in self.groupings if g["root"] in found)
        x = found[p["x"]]
        if not all(found[p[n]].same_as(x) for n in ("x_sum", "x_sq1", "x_sq2", "x_cube")):
            return None
        constants = ((p["scale"], SQRT_2_PI), (p["cubic"], GELU_TANH_CUBIC), (p["one"], 1.0),
                     (p["half"], 0.5))  # fmt: skip
        if not all(_close(found[c], v) for c, v in constants):
            return None
        return bound.get(x, x), bound[found[p["inner"]]]


def _close(expr: relax.Expr, expected: float) -> bool:
    value = scalar_const(expr, None)  # any float dtype: the GELU's own dtype is checked apart
    return value is not None and math.isclose(value, expected, rel_tol=_RTOL)


def _same_type(out: relax.Var, x: relax.Expr) -> bool:
    """Same dtype and shape; a symbolic shape (a dynamic batch or sequence) the same dims."""
    if dtype_of(x) != dtype_of(out):
        return False
    shape = static_shape(x)
    if shape is not None:
        return shape == static_shape(out)
    x_shape, out_shape = getattr(x.ty, "shape", None), getattr(out.ty, "shape", None)
    return (
        x_shape is not None
        and out_shape is not None
        and tvm.ir.structural_equal(x_shape, out_shape)
    )


def _gelu_roots(func: relax.Function, patterns: dict) -> dict[relax.Var, tuple]:
    """The var of each GELU's last multiply -> ``(x, the GELU op that replaces it)``."""
    bindings = Bindings.of(func)
    roots = {}
    for make, pattern in patterns.items():
        for var, _value, found in bindings.matches(pattern.pattern):
            match = pattern.read(found, bindings.bound)
            if match is not None and bindings.uses[match[1]] == 1 and _same_type(var, match[0]):
                roots[var] = (match[0], make)
    return roots


@mutator
class _GeluRewriter(PlannedRewriter):
    """``plan``: the var of each GELU's last multiply -> ``(x, op)``."""

    def replacement(self, _var: relax.Var, entry: tuple) -> relax.Expr:
        x, make = entry
        return make(self.visit_expr(x))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseGelu")
class FuseGelu:
    """Rewrite every erf-GELU subgraph of every Relax function into ``nn.gelu``, every
    tanh-GELU one into ``nn.gelu_tanh``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        patterns = {relax.op.nn.gelu: _GeluPattern(), relax.op.nn.gelu_tanh: _GeluTanhPattern()}
        found = {
            gvar: _gelu_roots(func, patterns)
            for gvar, func in mod.functions.items()
            if isinstance(func, relax.Function)
        }
        roots = {var: x for per_func in found.values() for var, x in per_func.items()}
        if not roots:
            return mod
        rewriter = _GeluRewriter(roots, mod)
        for gvar, per_func in found.items():
            if per_func:
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(mod[gvar]))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())
