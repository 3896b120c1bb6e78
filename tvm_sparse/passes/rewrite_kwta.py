"""Replace each k-WTA subgraph (TopK -> [k-1] -> GreaterOrEqual -> Where) by a linear-time kernel.

TVM lowers ``topk`` to a full sort per sample; ``schedules.kwta_x86`` selects the k-th largest
value by radix select instead. The subgraph's result ``where(x' >= kth, x, 0)`` (``[B, n]``)
becomes ``call_tir(kwta, [x], [B, n])`` on the unboosted ``x``, with the boost factor a constant
of the kernel; TopK and its plumbing are left dead and removed.

Runs after ``Sparsify``: that phase reads the k-WTA pattern to report the activation density of
the layers that follow. Only on llvm targets (the kernel is CPU TIR); other targets and
float64/float16 activations keep TVM's topk.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..schedules.kwta_x86 import kwta_kernel
from ._relax_utils import dtype_of, static_shape
from .activation_sparsity import KwtaMatch, find_kwta


def _rewritable(match: KwtaMatch) -> bool:
    shape = static_shape(match.out_var)
    return (
        shape is not None
        and len(shape) == 2
        and static_shape(match.x) == shape
        and dtype_of(match.x) == "float32"
        and dtype_of(match.out_var) == "float32"
    )


@mutator
class _KwtaRewriter(PyExprMutator):
    def __init__(self, plan: dict[relax.Var, KwtaMatch], mod: tvm.IRModule, target):
        super().__init__(mod)
        self.plan = plan
        self.target = target
        self.count = 0

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.plan.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        batch, n = static_shape(match.out_var)
        kernel = kwta_kernel(batch, n, match.k, match.boost, self.target)
        name = f"{kernel.name}_{self.count}"
        self.count += 1
        func = kernel.func.with_attr("global_symbol", name)
        gvar = self.builder_.add_func(func, name)
        args = [self.visit_expr(match.x)] + [
            relax.const(c, str(c.dtype)) for c in kernel.consts
        ]  # int64 stays int64
        out = relax.call_tir(gvar, args, relax.TensorType(kernel.out_shape, kernel.out_dtype))
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(out, binding.var.name)
        else:
            new_var = self.builder_.emit_output(out, binding.var.name)
        self.set_var_remap(binding.var, new_var)


def rewrite_kwta(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Rewrite the k-WTA subgraphs of every Relax function of ``mod`` (no target check)."""
    rewriter = None
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        plan = {m.out_var: m for m in find_kwta(func) if _rewritable(m)}
        if not plan:
            continue
        rewriter = _KwtaRewriter(plan, mod, target)
        new_func = rewriter.visit_expr(func)
        rewriter.builder_.update_func(gvar, new_func)
        mod = rewriter.builder_.get()
    if rewriter is None:
        return mod
    return relax.transform.DeadCodeElimination()(mod)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.RewriteKwta")
class RewriteKwta:
    """The pass form of ``rewrite_kwta``; ``target`` defaults to ``Target.current()``."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None or str(target.kind.name) != "llvm":
            return mod
        return rewrite_kwta(mod, target)


def rewrite_kwta_pass(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """The pass to put after ``Sparsify`` in the pipeline."""
    return RewriteKwta(target)
