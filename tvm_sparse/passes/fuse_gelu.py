"""Fuse the exported erf-GELU subgraph back into ``relax.nn.gelu``.

Why: ONNX (opset < 20) has no Gelu op, so exporters write ``x * 0.5 * (1 + erf(x / sqrt(2)))``
as five elementwise ops. Left that way, the FFN's first linear has five users downstream instead
of one activation, the layer matcher (``layers.py``) sees no epilogue, and the GELU costs four
extra passes over a [batch*seq, 4*hidden] tensor. As one ``nn.gelu`` it becomes the epilogue of
the (sparse or dense) kernel. The math is unchanged: gelu(x) = 0.5 x (1 + erf(x / sqrt(2))).

Matched forms (every association and operand order the PyTorch exporters write):
``z = x / sqrt(2)`` or ``z = x * (1/sqrt(2))``; ``a = erf(z) + 1`` (either order); and the product
of the three factors ``x``, ``a`` and ``0.5`` in any grouping, e.g. ``(x * a) * 0.5`` (TorchScript
exporter), ``(x * 0.5) * a`` or ``0.5 * (x * a)``.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..ir.relax_utils import (
    const_array,
    dtype_of,
    iter_bindings,
    op_name,
    rebind,
    static_shape,
    use_counts,
)

_RTOL = 1e-6


def _scalar(expr: relax.Expr) -> float | None:
    """The value of a one-element float constant, else None."""
    value = const_array(expr)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _close(value: float | None, expected: float) -> bool:
    return value is not None and math.isclose(value, expected, rel_tol=_RTOL)


def _erf_argument(value: relax.Expr) -> relax.Expr | None:
    """x when ``value`` is ``x / sqrt(2)`` or ``x * (1/sqrt(2))``."""
    name = op_name(value)
    if name == "relax.divide":
        x, c = value.args
        return x if _close(_scalar(c), math.sqrt(2.0)) else None
    if name == "relax.multiply":
        a, b = value.args
        if _close(_scalar(b), math.sqrt(0.5)):
            return a
        if _close(_scalar(a), math.sqrt(0.5)):
            return b
    return None


class _Matcher:
    """Finds GELU roots in one function: the var of the last multiply -> x."""

    def __init__(self, func: relax.Function):
        self.values = {b.var: b.value for b in iter_bindings(func)}
        self.counts = use_counts(func)

    def one_plus_erf(self) -> dict[relax.Var, relax.Expr]:
        """Vars bound to ``1 + erf(x / sqrt(2))`` -> x."""
        found = {}
        for var, value in self.values.items():
            if op_name(value) != "relax.add":
                continue
            a, b = value.args
            erf_var = a if _close(_scalar(b), 1.0) else b if _close(_scalar(a), 1.0) else None
            erf = self.values.get(erf_var) if isinstance(erf_var, relax.Var) else None
            if erf is None or op_name(erf) != "relax.erf":
                continue
            arg = erf.args[0]
            inner = self.values.get(arg) if isinstance(arg, relax.Var) else None
            x = _erf_argument(inner) if inner is not None else None
            if x is not None:
                found[var] = x
        return found

    def factors(self, expr: relax.Expr, depth: int = 0) -> list[relax.Expr]:
        """Leaves of a multiply tree; inner multiplies are expanded only when used once."""
        value = self.values.get(expr) if isinstance(expr, relax.Var) else None
        if depth > 0 and (value is None or self.counts[expr] != 1):
            return [expr]
        if value is None or op_name(value) != "relax.multiply" or depth > 2:
            return [expr]
        a, b = value.args
        return self.factors(a, depth + 1) + self.factors(b, depth + 1)

    def roots(self) -> dict[relax.Var, relax.Expr]:
        ones = self.one_plus_erf()
        roots: dict[relax.Var, relax.Expr] = {}
        if not ones:
            return roots
        for var, value in self.values.items():
            if op_name(value) != "relax.multiply":
                continue
            leaves = self.factors(var)
            if len(leaves) != 3:
                continue
            half = [leaf for leaf in leaves if _close(_scalar(leaf), 0.5)]
            ones_here = [leaf for leaf in leaves if isinstance(leaf, relax.Var) and leaf in ones]
            if len(half) != 1 or len(ones_here) != 1:
                continue
            x = ones[ones_here[0]]
            rest = [leaf for leaf in leaves if leaf is not half[0] and leaf is not ones_here[0]]
            if len(rest) == 1 and rest[0].same_as(x) and self._same_type(var, x):
                roots[var] = x
        return roots

    @staticmethod
    def _same_type(out: relax.Var, x: relax.Expr) -> bool:
        shape = static_shape(x)
        return shape is not None and shape == static_shape(out) and dtype_of(x) == dtype_of(out)


@mutator
class _GeluRewriter(PyExprMutator):
    def __init__(self, roots: dict[relax.Var, relax.Expr], mod: tvm.IRModule):
        super().__init__(mod)
        self.roots = roots

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        x = self.roots.get(binding.var)
        if x is None:
            super().visit_var_binding_(binding)
            return
        out = relax.op.nn.gelu(self.visit_expr(x))
        rebind(self, binding.var, out)


def fuse_gelu(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite every erf-GELU subgraph of every Relax function into ``nn.gelu``."""
    found = {
        gvar: _Matcher(func).roots()
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


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseGelu")
class FuseGelu:
    """Module pass form of :func:`fuse_gelu` (for ``canonicalize_passes()``)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return fuse_gelu(mod)
