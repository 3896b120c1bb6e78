"""Fuse a residual ``add`` (and the ReLU after it) into the conv kernel before it.

Why: a ResNet block ends in ``relu(conv(x) + shortcut)``. Left alone, the conv writes its output,
and a separate elementwise kernel reads it back with the shortcut and writes the sum: two extra
passes over a tensor of up to 256x56x56 floats, ~10% of a pruned ResNet-50. The conv's epilogue
already holds each output tile in registers, so it adds the shortcut and applies the ReLU there.

Matched (after Sparsify, CPU only): ``add(a, b)`` where ``a`` or ``b`` is the output of a
kernel in ``FUSABLE`` (the tap-plane and 1x1 panel sparse convs, the dense Winograd and 1x1
pointwise convs) with no activation and no residual yet, read only by the add, and both
operands have the output's shape and dtype (no broadcasting); a ``relu`` that is the add's only
reader is taken in too. The kernel is rebuilt from the spec it carries with the
shortcut as its residual input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, kernel_spec, op_name, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..schedules.pointwise_conv_x86 import SPEC_ATTR as POINTWISE_ATTR
from ..schedules.pointwise_conv_x86 import pointwise_kernel
from ..schedules.sparse_conv_panel_x86 import SPEC_ATTR as PANEL_ATTR
from ..schedules.sparse_conv_panel_x86 import PanelConvSpec, panel_conv_kernel
from ..schedules.sparse_conv_planes_x86 import SPEC_ATTR as PLANES_ATTR
from ..schedules.sparse_conv_planes_x86 import PlaneConvSpec, plane_kernel
from ..schedules.winograd_conv_x86 import SPEC_ATTR as WINOGRAD_ATTR
from ..schedules.winograd_conv_x86 import winograd_kernel
from .cpu_only import CpuRewrite

log = logging.getLogger("tvm_sparse")


@dataclass(frozen=True)
class _Fusable:
    """A kernel kind that can take the shortcut in its epilogue: the PrimFunc attribute with
    its spec, how to rebuild it with a residual and an activation, and whether its last
    constant is a residual placeholder (replaced) or the shortcut is a new last argument."""

    kind: str
    attr: str
    rebuild: Callable[[dict, str | None], tvm.tirx.PrimFunc]
    placeholder: bool


def _with_residual(spec: dict, activation: str | None) -> dict:
    """A kernel's JSON spec as keyword arguments (lists back to tuples), with the residual
    epilogue and ``activation``."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return {**fields, "residual": True, "activation": activation}


def _rebuild_planes(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return plane_kernel(PlaneConvSpec(**_with_residual(spec, activation)))


def _rebuild_panel(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return panel_conv_kernel(PanelConvSpec(**_with_residual(spec, activation)))


def _rebuild_winograd(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return winograd_kernel(**_with_residual(spec, activation))


def _rebuild_pointwise(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return pointwise_kernel({**spec, "residual": True, "activation": activation})


FUSABLE = (
    _Fusable("sparse_conv2d_planes", PLANES_ATTR, _rebuild_planes, placeholder=True),
    _Fusable("sparse_conv2d_panel", PANEL_ATTR, _rebuild_panel, placeholder=False),
    _Fusable("dense_conv2d_winograd", WINOGRAD_ATTR, _rebuild_winograd, placeholder=True),
    _Fusable("dense_conv2d_pointwise", POINTWISE_ATTR, _rebuild_pointwise, placeholder=False),
)


def _fusable_call(expr: relax.Expr, bindings: Bindings, mod: tvm.IRModule):
    """``(call, fusable, spec)`` when ``expr`` is a var bound to a call_tir of a kernel that
    can take a residual, read only here, with no activation and no residual yet."""
    if not isinstance(expr, relax.Var) or bindings.uses[expr] != 1:
        return None
    call = bindings.var2val.get(expr)
    if op_name(call) != "relax.call_tir":
        return None
    found = kernel_spec(call, mod, (fusable.attr for fusable in FUSABLE))
    if found is None:
        return None
    attr, spec = found
    if spec.get("residual") or spec.get("activation") is not None:
        return None
    return call, next(f for f in FUSABLE if f.attr == attr), spec


def _match(var: relax.Var, add: relax.Call, bindings: Bindings, mod: tvm.IRModule):
    """``(call, spec, shortcut, activation)`` for a fusable ``add`` bound to ``var``."""
    shape = static_shape(var)
    if shape is None or dtype_of(var) != "float32":
        return None
    a, b = add.args
    if any(static_shape(e) != shape or dtype_of(e) != "float32" for e in (a, b)):
        return None
    for conv, shortcut in ((a, b), (b, a)):
        found = _fusable_call(conv, bindings, mod)
        if found is not None:
            return (*found, shortcut)
    return None


@mutator
class _ResidualRewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule):
        super().__init__(plan, mod)
        self.count = 0

    def replacement(self, var: relax.Var, entry: tuple) -> relax.Expr:
        call, fusable, func, shortcut = entry
        name = f"{fusable.kind}_residual_{self.count}"
        self.count += 1
        gvar = self.builder_.add_func(func.with_attr("global_symbol", name), name)
        x, *consts = call.args[1].fields
        if fusable.placeholder:
            consts = consts[:-1]
        args = [self.visit_expr(x), *consts, self.visit_expr(shortcut)]
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
            call, fusable, spec, shortcut = found
            fused = _fused_kernel(fusable, spec, activation, static_shape(var), target)
            if fused is not None:
                plan[target_var] = (call, fusable, fused, shortcut)
        return _ResidualRewriter(plan, mod) if plan else None


def _fused_kernel(fusable: _Fusable, spec: dict, activation, out_shape, target):
    """The conv kernel with the residual epilogue, or None when it does not compile (checked in
    the candidate worker, as every kernel the choice did not time itself: an LLVM abort there
    keeps the unfused conv and add instead of ending the compile)."""
    fused = fusable.rebuild(spec, activation)
    check = KernelCall(fused, f"{fusable.kind}_residual", (), tuple(out_shape))
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
