"""A dense tap-plane conv and the 3x3 stride-2 max pool after it -> one kernel (the ResNet stem).

Why: see ``schedules.conv_maxpool_x86`` (apart, the conv writes 3 MiB past L2 and the pool
reads them back; together the pool reduces each band of conv rows while it is in L2).

Matched (CPU, after Sparsify): ``nn.max_pool2d`` (NCHW, 3x3, stride 2, padding 1, dilation 1,
floor) whose input is the output of a dense conv kernel that only the pool reads: the tap-plane
kernel (``dense_conv_planes_x86``), or an ungrouped implicit GEMM (``dense_x86``, ResNet's stem)
rebuilt as one from its unpacked constant weight; its bias and activation already in it. Where
the fused kernel applies (``conv_maxpool_x86.applies``: even output sides, a band of whole
position tiles). A fused kernel that fails to compile (checked in the candidate worker) keeps
the two kernels.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import const_array, int_tuple, kernel_spec, op_name, static_shape
from ..ir.rewrite import Bindings, PlannedRewriter, call_kernel, plan_bindings
from ..schedules._conv_dims import ConvAttrs
from ..schedules.conv_maxpool_x86 import (
    POOL_PADDING,
    POOL_STRIDE,
    POOL_WINDOW,
    applies,
    conv_maxpool_kernel,
    pooled_hw,
)
from ..schedules.dense_conv_planes_x86 import SPEC_ATTR, dense_conv2d_planes
from ..schedules.dense_conv_x86 import ConvGeometry, unpack_conv_weight
from ..schedules.dense_x86 import IMPLICIT_GEMM_ATTR
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..schedules.sparse_conv_planes_x86 import PlaneConvSpec
from .cpu_only import CpuRewrite

log = logging.getLogger("tvm_sparse")


def _is_stem_pool(call: relax.Call) -> bool:
    """A max pool with the window, stride and padding the fused kernel applies."""
    if op_name(call) != "relax.nn.max_pool2d":
        return False
    attrs = call.attrs
    return (
        int_tuple(attrs.pool_size) == (POOL_WINDOW,) * 2
        and int_tuple(attrs.strides) == (POOL_STRIDE,) * 2
        and int_tuple(attrs.padding) == (POOL_PADDING,) * 4
        and int_tuple(attrs.dilation) == (1, 1)
        and not bool(attrs.ceil_mode)
        and str(attrs.layout) == "NCHW"
        and str(attrs.out_layout) == "NCHW"
    )


def _plan_entry(var: relax.Var, value: relax.Expr, bindings: Bindings, mod: tvm.IRModule,
                target: tvm.target.Target):  # fmt: skip
    """``(the pool call, the conv's input, the fused kernel's spec and consts)`` for a pool
    fused into the conv before it, else None."""
    if not _is_stem_pool(value) or not isinstance(value.args[0], relax.Var):
        return None
    conv_var = value.args[0]
    conv = bindings.var2val.get(conv_var)
    if bindings.uses[conv_var] != 1 or op_name(conv) != "relax.call_tir":
        return None
    if not isinstance(conv.args[1], relax.Tuple):
        return None
    found = kernel_spec(conv, mod, (SPEC_ATTR, IMPLICIT_GEMM_ATTR))
    if found is None:
        return None
    x, *consts = conv.args[1].fields
    if found[0] == SPEC_ATTR:
        spec = PlaneConvSpec.from_dict(found[1])
    else:
        planes = _as_planes(found[1], consts, target)
        if planes is None:
            return None
        spec, consts = planes
    if not applies(spec) or static_shape(var) != (spec.x_shape[0], spec.o, *pooled_hw(spec)):
        return None
    return value, x, spec, consts


def _as_planes(attrs: dict, consts: list[relax.Expr], target: tvm.target.Target):
    """An implicit-GEMM conv rebuilt as the tap-plane kernel: ``(spec, consts)``, or None where
    its weight or bias is not a constant or the conv is grouped."""
    geo = ConvGeometry(*(tuple(v) if isinstance(v, list) else v for v in attrs["geometry"]))
    values = [const_array(c) for c in consts]
    if geo.groups != 1 or not 1 <= len(values) <= 2 or any(v is None for v in values):
        return None
    weight = unpack_conv_weight(values[0], geo.w_shape)
    bias = values[1] if len(values) == 2 else None
    conv = ConvAttrs(geo.strides, geo.padding, geo.dilation, 1)
    call = dense_conv2d_planes(geo.x_shape, weight, bias, conv, attrs["activation"], target)
    spec = PlaneConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    return spec, [relax.const(c) for c in call.consts]


@mutator
class _Rewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.target = target
        self.count = 0

    def replacement(self, var: relax.Var, entry) -> relax.Expr:
        pool, x, spec, consts = entry
        out_shape = (spec.x_shape[0], spec.o, *pooled_hw(spec))
        name = f"dense_conv2d_maxpool_{self.count}"
        kernel = KernelCall(conv_maxpool_kernel(spec), name, (), out_shape)
        failure = compile_check(name, kernel, self.target)
        if failure is not None:
            log.warning("conv + max pool fusion skipped: the fused kernel failed (%s)", failure)
            return self.visit_expr(pool)
        self.count += 1
        args = [self.visit_expr(x), *(self.visit_expr(c) for c in consts)]
        return call_kernel(self.builder_, kernel.func, name, args, out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseConvPool")
class FuseConvPool(CpuRewrite):
    """``max_pool2d(conv(x))`` (3x3, stride 2, a dense tap-plane conv) -> one kernel (CPU)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _Rewriter | None:
        bindings = Bindings.of(func)
        plan = plan_bindings(
            func, lambda var, value: _plan_entry(var, value, bindings, mod, target)
        )
        return _Rewriter(plan, mod, target) if plan else None
