"""Keep one copy of each PrimFunc: layers of the same shape call the same compiled kernel.

Why: every layer gets its own kernel (named after the layer), and TVM's fusion gives every
fused group its own PrimFunc, so a network that repeats a block compiles the same code many
times: RegNetY-400MF's 111 PrimFuncs are 54 distinct ones, and LLVM time is most of its compile
time. The weights are arguments of the kernels, not part of them, so equal kernels are truly
interchangeable.

Two PrimFuncs are the same when they are structurally equal apart from their
``global_symbol`` (the name). Every call of a duplicate is pointed at the kept one (the first
by name), and the duplicates are dropped.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator


@mutator
class _Redirect(PyExprMutator):
    def __init__(self, canonical: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar], mod: tvm.IRModule):
        super().__init__(mod)
        self.canonical = canonical

    def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:
        return self.canonical.get(op, op)


def duplicates(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]:
    """Each duplicate PrimFunc's GlobalVar -> the GlobalVar of the copy that is kept."""
    canonical: dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar] = {}
    kept: dict[int, list[tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]]] = {}
    for gvar, func in sorted(mod.functions.items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        anonymous = func.without_attr("global_symbol")
        bucket = kept.setdefault(tvm_ffi.structural_hash(anonymous), [])
        twin = next((g for g, f in bucket if tvm_ffi.structural_equal(f, anonymous)), None)
        if twin is None:
            bucket.append((gvar, anonymous))
        else:
            canonical[gvar] = twin
    return canonical


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.DedupeKernels")
class DedupeKernels:
    """Point every call of a duplicate PrimFunc at its kept twin; drop the duplicates."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        canonical = duplicates(mod)
        if not canonical:
            return mod
        redirect = _Redirect(canonical, mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                redirect.builder_.update_func(gvar, redirect.visit_expr(func))
        out = redirect.builder_.get()
        # dropped here: DeadCodeElimination keeps a PrimFunc that has a global_symbol
        functions = {g: f for g, f in out.functions.items() if g not in canonical}
        return tvm.IRModule(functions, attrs=out.attrs, global_infos=out.global_infos)
