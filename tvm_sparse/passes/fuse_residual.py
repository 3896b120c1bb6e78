"""Fuse a residual ``add`` (and the ReLU after it) into the tap-plane sparse conv before it.

Why: a ResNet block ends in ``relu(conv(x) + shortcut)``. Left alone, the conv writes its output,
and a separate elementwise kernel reads it back with the shortcut and writes the sum: two extra
passes over a tensor of up to 256x56x56 floats, ~10% of a pruned ResNet-50. The conv's epilogue
already holds each output tile in registers, so it adds the shortcut and applies the ReLU there.

Matched (after Sparsify, CPU only): ``add(a, b)`` where ``a`` or ``b`` is the output of a
``sparse_conv2d_planes`` kernel with no activation and no residual yet, read only by the add,
and both operands have the output's shape and dtype (no broadcasting); a ``relu`` that is the
add's only reader is taken in too. The kernel is rebuilt from the spec it carries
(``PlaneConvSpec``) with the shortcut as its residual input.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, op_name, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..schedules.sparse_conv_planes_x86 import SPEC_ATTR, PlaneConvSpec, plane_kernel
from .cpu_only import CpuRewrite

log = logging.getLogger("tvm_sparse")


def _planes_call(expr: relax.Expr, bindings: Bindings, mod: tvm.IRModule):
    """``(call, spec)`` when ``expr`` is a var bound to a fusable planes-kernel call_tir."""
    if not isinstance(expr, relax.Var) or bindings.uses[expr] != 1:
        return None
    call = bindings.var2val.get(expr)
    if op_name(call) != "relax.call_tir":
        return None
    gvar = call.args[0]
    func = mod[gvar] if isinstance(gvar, tvm.ir.GlobalVar) and gvar in mod.functions else None
    attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None else {}
    if SPEC_ATTR not in attrs:
        return None
    spec = PlaneConvSpec.from_json(str(attrs[SPEC_ATTR]))
    if spec.residual or spec.activation is not None:
        return None
    return call, spec


def _match(var: relax.Var, add: relax.Call, bindings: Bindings, mod: tvm.IRModule):
    """``(call, spec, shortcut, activation)`` for a fusable ``add`` bound to ``var``."""
    shape = static_shape(var)
    if shape is None or dtype_of(var) != "float32":
        return None
    a, b = add.args
    if any(static_shape(e) != shape or dtype_of(e) != "float32" for e in (a, b)):
        return None
    for conv, shortcut in ((a, b), (b, a)):
        found = _planes_call(conv, bindings, mod)
        if found is not None:
            return (*found, shortcut)
    return None


@mutator
class _ResidualRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(plan, mod)
        self.count = 0

    def replacement(self, var: relax.Var, entry: tuple) -> relax.Expr:
        call, func, shortcut = entry
        name = f"sparse_conv2d_planes_residual_{self.count}"
        self.count += 1
        gvar = self.builder_.add_func(func.with_attr("global_symbol", name), name)
        x, *consts = call.args[1].fields
        args = [self.visit_expr(x), *consts[:-1], self.visit_expr(shortcut)]
        out_type = relax.TensorType(static_shape(var), "float32")
        return relax.call_tir(gvar, args, out_type)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseResidual")
class FuseResidual(CpuRewrite):
    """Fuse ``relu(planes_conv(x) + shortcut)`` into the conv kernel (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _ResidualRewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        for var, value in bindings.var2val.items():
            if op_name(value) != "relax.add":
                continue
            found = _match(var, value, bindings, mod)
            if found is None:
                continue
            target_var, activation = var, None
            user = _single_reader(var, bindings)
            if user is not None and op_name(bindings.var2val[user]) == "relax.nn.relu":
                target_var, activation = user, "relu"
            call, spec, shortcut = found
            fused = _fused_kernel(spec, activation, call, target)
            if fused is not None:
                plan[target_var] = (call, fused, shortcut)
        return _ResidualRewriter(plan, mod) if plan else None


def _fused_kernel(spec: PlaneConvSpec, activation, call: relax.Call, target):
    """The conv kernel with the residual epilogue, or None when it does not compile (checked in
    the candidate worker, as every kernel the choice did not time itself: an LLVM abort there
    keeps the unfused conv and add instead of ending the compile)."""
    fields = {**spec.__dict__, "residual": True, "activation": activation}
    fused = plane_kernel(PlaneConvSpec(**fields))
    out_shape = (spec.x_shape[0], spec.o, *spec.out_hw)
    check = KernelCall(fused, "sparse_conv2d_planes_residual", (), out_shape)
    failure = compile_check(check.name, check, target)
    if failure is not None:
        log.warning("residual fusion skipped: the fused conv failed to compile (%s)", failure)
        return None
    return fused


def _single_reader(var: relax.Var, bindings: Bindings) -> relax.Var | None:
    """The var whose value is the only expression reading ``var`` (None if several read it)."""
    if bindings.uses[var] != 1:
        return None
    for other, value in bindings.var2val.items():
        if isinstance(value, relax.Call) and any(arg.same_as(var) for arg in value.args):
            return other
    return None
