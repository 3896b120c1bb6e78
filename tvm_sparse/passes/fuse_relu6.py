"""Turn the imported ONNX ``Clip(x, 0, 6)`` (ReLU6) into one ``relax.clip`` a kernel can fuse.

Why: TVM's ONNX frontend writes ``Clip`` as two ``call_tir``s of its own ``maximum`` and
``minimum`` PrimFuncs, each a full pass over the tensor. MobileNet-style networks put a ReLU6
after every expansion and depthwise conv, so those passes (and the memory traffic of writing
the conv's output, reading it back and writing it again) cost a tenth of the network. As one
``clip(x, 0, 6)`` right after a conv, the layer finder (``ir.layers``) takes it as the kernel's
``relu6`` epilogue.

Matched: ``y = call_tir(maximum*, (x, c))`` read only by ``z = call_tir(minimum*, (y, d))``,
where ``c`` and ``d`` are scalar constants, ``c`` = 0 and ``d`` = 6 (any other bounds are left
alone: only ReLU6 is a fused activation), and all three tensors have one static shape and
float32. The PrimFuncs are recognized by the names the frontend gives them (``maximum``,
``minimum``, with a numeric suffix when there are several).
"""

from __future__ import annotations

import re

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, op_name, scalar_const, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter, rewrite_functions


def _named_call(value, prefix: str) -> tuple[relax.Expr, float] | None:
    """``(x, c)`` when ``value`` is ``call_tir(<prefix>[N], (x, scalar const c))``."""
    if op_name(value) != "relax.call_tir":
        return None
    gvar, args = value.args[0], value.args[1]
    if not isinstance(gvar, tvm.ir.GlobalVar) or not re.fullmatch(rf"{prefix}\d*", gvar.name_hint):
        return None
    fields = getattr(args, "fields", None)
    if fields is None or len(fields) != 2:
        return None
    bound = scalar_const(fields[1], None)
    return None if bound is None else (fields[0], bound)


def _relu6_plan(func: relax.Function) -> dict[relax.Var, relax.Expr]:
    """The var of each ReLU6's ``minimum`` -> the clipped x."""
    bindings = Bindings.of(func)
    plan = {}
    for var, value in bindings.var2val.items():
        upper = _named_call(value, "minimum")
        if upper is None or upper[1] != 6.0 or not isinstance(upper[0], relax.Var):
            continue
        inner = upper[0]
        lower = _named_call(bindings.var2val.get(inner), "maximum")
        if lower is None or lower[1] != 0.0 or bindings.uses[inner] != 1:
            continue
        x = lower[0]
        shape = static_shape(x)
        same = shape is not None and shape == static_shape(inner) == static_shape(var)
        if same and dtype_of(x) == dtype_of(var) == "float32":
            plan[var] = x
    return plan


@mutator
class _Relu6Rewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, x: relax.Expr) -> relax.Expr:
        return relax.op.clip(self.visit_expr(x), 0.0, 6.0)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseRelu6")
class FuseRelu6:
    """Rewrite every imported ``Clip(x, 0, 6)`` into ``relax.clip(x, 0, 6)``."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewriter_for(func: relax.Function, module: tvm.IRModule):
            plan = _relu6_plan(func)
            return _Relu6Rewriter(plan, module) if plan else None

        return rewrite_functions(mod, rewriter_for)
