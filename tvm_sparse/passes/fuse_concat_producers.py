"""A concat whose inputs are kernels' outputs -> one kernel in which each writes its slice.

Why: see ``ir.slice_writers``: the concat's copy (each value read and written once more) is
gone. SqueezeNet's Fire modules, Inception's and GoogLeNet's branch concats.

Matched (CPU, after the other fusions, before ``FuseConcatAffine``): ``concat(xs, axis)`` of
static float32 tensors where every dimension before ``axis`` is 1 (so each input is one
contiguous run of the output: batch 1 for NCHW channels), that no affine op or ReLU follows
(``FuseConcatAffine`` takes those, folding them into its copy). An input is computed in place
when it is a ``call_tir`` output (one tensor, no symbolic arguments) read only by the concat,
bound in the concat's block, and its run starts aligned (``slice_aligned``). The other inputs
of a 4-D concat are copied into their runs by a one-input copy kernel inside the same kernel;
a concat with no input to compute in place is left to ``FuseConcatAffine``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import called_prim_func, constant, dtype_of, op_name, static_shape
from ..ir.rewrite import OPAQUE, Bindings, PlannedRewriter, call_kernel
from ..ir.slice_writers import slice_aligned, write_into_slices
from ..schedules.concat_affine_x86 import concat_affine
from ..schedules.isolation import compile_check
from ..schedules.kernel import KernelCall
from ..target import num_cores, vector_lanes
from .cpu_only import CpuRewrite
from .fuse_concat_affine import _plan_entry as _concat_affine_entry

log = logging.getLogger("tvm_sparse")

CALL_TIR = "relax.call_tir"


def _producer(x: relax.Expr, bindings: Bindings, mod: tvm.IRModule, block_vars: set):
    """``(PrimFunc, args)`` of the ``call_tir`` that computes ``x`` when it can write into the
    concat's output (``x`` read only there, bound in the same block), else None."""
    if not isinstance(x, relax.Var) or x not in block_vars or bindings.uses[x] != 1:
        return None
    call = bindings.var2val.get(x)
    if op_name(call) != CALL_TIR or len(call.args) != 2:
        return None
    func, args = called_prim_func(call, mod), call.args[1]
    if func is None or not isinstance(args, relax.Tuple):
        return None
    if len(func.params) != len(args.fields) + 1:
        return None
    return func, list(args.fields)


def _plan_entry(var, value, bindings: Bindings, mod: tvm.IRModule, block_vars: set):
    """``(value, [(x, producer or None, offset)])`` for a concat this pass takes, else None."""
    if op_name(value) != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return None
    shape = static_shape(var)
    if shape is None or dtype_of(var) != "float32":
        return None
    axis = int(value.attrs.axis) % len(shape)
    if math.prod(shape[:axis]) != 1:
        return None
    found = _concat_affine_entry(var, value, bindings) if len(shape) == 4 else None
    if found is not None and found[0] is not var:
        return None  # an affine op or ReLU follows: FuseConcatAffine folds it into its copy
    members, offset = [], 0
    for x in value.args[0].fields:
        x_shape = static_shape(x)
        if x_shape is None or dtype_of(x) != "float32":
            return None
        if not slice_aligned(offset):
            return None  # neither computed in place nor copied there
        producer = _producer(x, bindings, mod, block_vars)
        if producer is None and len(x_shape) != 4:
            return None  # no copy kernel for it
        members.append((x, producer, offset))
        offset += math.prod(x_shape)
    if all(producer is None for _, producer, _ in members):
        return None
    return value, members


@mutator
class _Rewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.target = target
        self.count = 0

    def replacement(self, var: relax.Var, entry) -> relax.Expr:
        concat, members = entry
        funcs, offsets, args = [], [], []
        for x, producer, offset in members:
            if producer is None:  # copied into its run, by a copy kernel among the members
                x_shape = static_shape(x)
                copy = concat_affine(
                    [x_shape], np.ones(x_shape[1]), np.zeros(x_shape[1]), None,
                    vector_lanes(self.target), num_cores(self.target),
                )  # fmt: skip
                producer = copy.func, [x, *(constant(c) for c in copy.consts)]
            func, inputs = producer
            funcs.append(func)
            offsets.append(offset)
            args += [self.visit_expr(a) for a in inputs]
        shape = static_shape(var)
        merged = write_into_slices(funcs, offsets, shape).with_attr("op_pattern", OPAQUE)
        name = f"concat_in_place_{self.count}"
        failure = compile_check(name, KernelCall(merged, name, (), shape), self.target)
        if failure is not None:  # the concat stays (FuseConcatAffine copies it)
            log.warning("concat in place skipped: the merged kernel failed (%s)", failure)
            return self.visit_expr(concat)
        self.count += 1
        return call_kernel(self.builder_, merged, name, args, shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseConcatProducers")
class FuseConcatProducers(CpuRewrite):
    """``concat(k_1(..), ..., k_n(..))`` over contiguous runs -> one kernel writing each run."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _Rewriter | None:
        bindings = Bindings.of(func)
        plan = {}
        body = func.body
        for block in body.blocks if isinstance(body, relax.SeqExpr) else []:
            block_vars = {b.var for b in block.bindings}
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                entry = _plan_entry(binding.var, binding.value, bindings, mod, block_vars)
                if entry is not None:
                    plan[binding.var] = entry
        return _Rewriter(plan, mod, target) if plan else None
