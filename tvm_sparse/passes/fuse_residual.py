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

Where nothing reads the shortcut after the conv (``_overwritable``), the conv writes its output
over it (``call_tir_inplace``, kernels with an ``inplace`` variant): in ResNet-50's 56x56
stage the output and the shortcut are 3 MiB each, past L2, and a fresh output costs a read for
ownership of every line it stores. Intel Xeon, 90% weights, 1 thread, 64 -> 256 at 56x56 with
the shortcut: 330 -> 200 us with the caches warm, 627 -> 264 us cold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import (
    called_prim_func,
    dtype_of,
    iter_bindings,
    kernel_spec,
    op_name,
    static_shape,
)
from ..ir.rewrite import Bindings, PlannedRewriter, relu_after
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..schedules.pointwise_conv_x86 import SPEC_ATTR as POINTWISE_ATTR
from ..schedules.pointwise_conv_x86 import can_write_over_residual, pointwise_kernel
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
    # the kernel that writes its output over the shortcut (its last argument), if any (it
    # returns None for a spec it cannot write over)
    rebuild_inplace: Callable[[dict, str | None], tvm.tirx.PrimFunc | None] | None = None


def _with_residual(spec: dict, activation: str | None) -> dict:
    """A kernel's JSON spec as keyword arguments (lists back to tuples), with the residual
    epilogue and ``activation``."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return {**fields, "residual": True, "activation": activation}


def _rebuild_planes(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return plane_kernel(PlaneConvSpec(**_with_residual(spec, activation)))


def _rebuild_planes_inplace(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return plane_kernel(PlaneConvSpec(**{**_with_residual(spec, activation), "inplace": True}))


def _rebuild_panel(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return panel_conv_kernel(PanelConvSpec(**_with_residual(spec, activation)))


def _rebuild_panel_inplace(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return panel_conv_kernel(PanelConvSpec(**{**_with_residual(spec, activation), "inplace": True}))


def _rebuild_winograd(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return winograd_kernel(**_with_residual(spec, activation))


def _rebuild_pointwise(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc:
    return pointwise_kernel({**spec, "residual": True, "activation": activation})


def _rebuild_pointwise_inplace(spec: dict, activation: str | None) -> tvm.tirx.PrimFunc | None:
    if not can_write_over_residual(spec):
        return None
    return pointwise_kernel({**spec, "residual": True, "activation": activation, "inplace": True})


FUSABLE = (
    _Fusable(
        "sparse_conv2d_planes",
        PLANES_ATTR,
        _rebuild_planes,
        placeholder=True,
        rebuild_inplace=_rebuild_planes_inplace,
    ),
    _Fusable(
        "sparse_conv2d_panel",
        PANEL_ATTR,
        _rebuild_panel,
        placeholder=False,
        rebuild_inplace=_rebuild_panel_inplace,
    ),
    _Fusable("dense_conv2d_winograd", WINOGRAD_ATTR, _rebuild_winograd, placeholder=True),
    _Fusable(
        "dense_conv2d_pointwise",
        POINTWISE_ATTR,
        _rebuild_pointwise,
        placeholder=False,
        rebuild_inplace=_rebuild_pointwise_inplace,
    ),
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
        call, fusable, func, shortcut, inplace = entry
        name = f"{fusable.kind}_residual_{self.count}"
        self.count += 1
        gvar = self.builder_.add_func(func.with_attr("global_symbol", name), name)
        x, *consts = call.args[1].fields
        if fusable.placeholder:
            consts = consts[:-1]
        args = [self.visit_expr(x), *consts, self.visit_expr(shortcut)]
        out_type = relax.TensorType(static_shape(var), "float32")
        if inplace:
            return relax.call_tir_inplace(gvar, args, len(args) - 1, out_type)
        return relax.call_tir(gvar, args, out_type)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseResidual")
class FuseResidual(CpuRewrite):
    """Fuse ``relu(planes_conv(x) + shortcut)`` into the conv kernel (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _ResidualRewriter | None:
        bindings = Bindings.of(func)
        matches = []
        for var, value in bindings.var2val.items():
            if op_name(value) != "relax.add":
                continue
            found = _match(var, value, bindings, mod)
            if found is None:
                continue
            target_var, activation = relu_after(bindings, var)
            call, fusable, spec, shortcut = found
            a, b = value.args
            conv_var = b if shortcut.same_as(a) else a
            matches.append(
                _Residual(var, target_var, activation, conv_var, call, fusable, spec, shortcut)
            )
        order = _execution_order(func, matches)
        fused_outputs = {m.target_var for m in matches}
        plan = {}
        for m in matches:
            kernel = None
            if m.fusable.rebuild_inplace is not None and _overwritable(
                m, order, fused_outputs, func, bindings, mod
            ):
                kernel = m.fusable.rebuild_inplace(m.spec, m.activation)
            inplace = kernel is not None
            if kernel is None:
                kernel = m.fusable.rebuild(m.spec, m.activation)
            fused = _fused_kernel(m.fusable, kernel, static_shape(m.add_var), target)
            if fused is None and inplace:  # the in-place variant failed: the fresh output
                inplace = False
                kernel = m.fusable.rebuild(m.spec, m.activation)
                fused = _fused_kernel(m.fusable, kernel, static_shape(m.add_var), target)
            if fused is not None:
                plan[m.target_var] = (m.call, m.fusable, fused, m.shortcut, inplace)
        return _ResidualRewriter(plan, mod) if plan else None


@dataclass(frozen=True)
class _Residual:
    """One fusable ``act(conv + shortcut)``: the add's var, the var the fused conv is bound to
    (the add's, or the ReLU's after it), the conv's var, and its call, kind and spec."""

    add_var: relax.Var
    target_var: relax.Var
    activation: str | None
    conv_var: relax.Var
    call: relax.Call
    fusable: _Fusable
    spec: dict
    shortcut: relax.Expr


def _fused_kernel(fusable: _Fusable, fused: tvm.tirx.PrimFunc, out_shape, target):
    """The conv kernel ``fused`` with the residual epilogue, or None when it does not compile
    (checked in the candidate worker, as every kernel the choice did not time itself: an LLVM
    abort there keeps the unfused conv and add instead of ending the compile)."""
    check = KernelCall(fused, f"{fusable.kind}_residual", (), tuple(out_shape))
    failure = compile_check(check.name, check, target)
    if failure is not None:
        log.warning("residual fusion skipped: the fused conv failed to compile (%s)", failure)
        return None
    return fused


def _execution_order(func: relax.Function, matches: list[_Residual]) -> dict[relax.Var, int]:
    """Each bound var's position in the order the bindings run once fused: a fused conv runs
    where its add (or ReLU) was bound, not where its own call was."""
    order = {binding.var: i for i, binding in enumerate(iter_bindings(func))}
    for m in matches:
        order[m.conv_var] = order[m.target_var]
    return order


# Ops whose result is a fresh tensor (not a view of an argument) once legalized.
_FRESH_OPS = ("relax.call_tir", "relax.add", "relax.nn.relu")


def _overwritable(
    m: _Residual, order: dict[relax.Var, int], fused_outputs: set[relax.Var],
    func: relax.Function, bindings: Bindings, mod: tvm.IRModule,
) -> bool:  # fmt: skip
    """Whether the fused conv may write its output over its shortcut.

    Only where that cannot change a value anyone reads: the shortcut is a fresh tensor of this
    function (a kernel's or a fused conv's output, not a parameter, a constant or a view of
    another tensor), the conv does not read it as its input, it is not the function's result,
    and every other reader of it is a kernel (call_tir: reads its arguments, aliases none of
    them) that runs before the fused conv; so no tensor aliases it and its value is dead once
    the conv has added it."""
    shortcut = m.shortcut
    if not isinstance(shortcut, relax.Var) or not isinstance(m.call.args[1], relax.Tuple):
        return False
    if m.call.args[1].fields[0].same_as(shortcut):
        return False
    if shortcut not in fused_outputs and not _fresh(bindings.var2val.get(shortcut), mod):
        return False
    body = func.body
    if isinstance(body, relax.SeqExpr) and shortcut in relax.analysis.free_vars(body.body):
        return False
    runs_at = order[m.target_var]
    for binding in iter_bindings(func):
        if binding.var.same_as(m.add_var) or shortcut not in relax.analysis.free_vars(
            binding.value
        ):
            continue
        if op_name(binding.value) != "relax.call_tir" or order[binding.var] >= runs_at:
            return False
    return True


def _fresh(value: relax.Expr | None, mod: tvm.IRModule) -> bool:
    """Whether ``value`` makes a new tensor: an op of ``_FRESH_OPS``, and no call_tir that
    RewriteDataflowReshape turns into a view (it probes the one-input ones for a reshape)."""
    if op_name(value) not in _FRESH_OPS:
        return False
    if op_name(value) != "relax.call_tir":
        return True
    args = value.args[1]
    if not isinstance(args, relax.Tuple) or len(args.fields) != 1:
        return isinstance(args, relax.Tuple)
    func = called_prim_func(value, mod)
    if func is None:
        return False
    try:
        return not relax.analysis.has_reshape_pattern(func)
    except tvm.error.TVMError:  # not in block form: RewriteDataflowReshape would fail on it too
        return False
