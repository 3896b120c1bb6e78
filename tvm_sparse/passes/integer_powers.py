"""Rewrite ``power(x, 2)`` and ``power(x, 3)`` (a scalar constant exponent) as multiplies.

Why: TVM lowers ``power`` on x86 to one libm ``powf`` call per element, even in a vectorized
loop. GPT-2's tanh-GELU (``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, ``torch.pow(x,
3.0)`` in Hugging Face's NewGELU, exported as ONNX ``Pow``) then took 488 us a layer for a
64 x 1024 activation against 60 us as multiplies: 62% of a pruned GPT-2's time. The products
are what onnxruntime computes for these exponents (its Pow kernel special-cases 2 and 3), so
results match it bit for bit; other exponents keep ``power``.

Matched: ``relax.power(x, c)`` with ``c`` a one-element float constant equal to 2 or 3 and
``x`` of a float dtype; ``x`` may have any (also symbolic) shape.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, op_name, scalar_const
from ..ir.rewrite import PlannedRewriter, rewrite_bindings

_EXPONENTS = (2.0, 3.0)


def _exponent(_var: relax.Var, value: relax.Expr) -> tuple[relax.Expr, int] | None:
    """``(x, n)`` for ``power(x, n)`` with n in ``_EXPONENTS``."""
    if op_name(value) != "relax.power":
        return None
    x, exponent = value.args
    n = scalar_const(exponent, None)
    dtype = dtype_of(x) or ""
    if n not in _EXPONENTS or not dtype.startswith("float") or dtype_of(exponent) != dtype:
        return None
    return x, int(n)


@mutator
class _PowerRewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, entry: tuple[relax.Expr, int]) -> relax.Expr:
        x, n = entry
        x = self.visit_expr(x)
        square = relax.op.multiply(x, x)
        if n == 2:
            return square
        return relax.op.multiply(self.builder_.emit(square, "square"), x)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.IntegerPowers")
class IntegerPowers:
    """Rewrite every ``power(x, 2 or 3)`` as multiplies."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_bindings(mod, _exponent, _PowerRewriter)
