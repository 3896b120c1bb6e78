"""Fold per-channel affine ops (inference BatchNorm, Gemm alpha/beta, bias adds) into the layer.

After ``DecomposeOpsForInference`` a BatchNorm is ``(y - mean) / sqrt(var + eps) * gamma + beta``.
Folding it into the conv/linear weight and bias leaves one op per layer for the sparse rewrite and
keeps the sparsity: a scale multiplies each weight, so a zero weight stays zero. A scale that is
zero or not finite is not folded (folding it would change NaN/Inf behaviour).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..ir.layers import CONV2D, _anchor, _per_channel
from ..ir.relax_utils import const_array, iter_bindings, op_name, rebind, static_shape, use_counts

_AFFINE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


class _Chain:
    """A constant-weight layer being extended by affine ops, before it is re-emitted."""

    def __init__(self, kind: str, weight: np.ndarray, conv: dict, call: relax.Call):
        self.kind = kind
        self.weight = weight.astype(np.float32, copy=True)
        self.bias = np.zeros(weight.shape[0], dtype=np.float32)
        self.has_bias = False
        self.conv = conv
        self.call = call
        self.steps = 0

    def apply(self, op: str, vec: np.ndarray) -> bool:
        scale_axes = (slice(None),) + (None,) * (self.weight.ndim - 1)
        if op == "relax.add":
            self.bias = self.bias + vec
            self.has_bias = True
        elif op == "relax.subtract":
            self.bias = self.bias - vec
            self.has_bias = True
        elif op in ("relax.multiply", "relax.divide"):
            if not np.all(np.isfinite(vec)) or np.any(vec == 0):
                return False
            factor = vec if op == "relax.multiply" else (1.0 / vec.astype(np.float64))
            factor = factor.astype(np.float32)
            self.weight = self.weight * factor[scale_axes]
            self.bias = self.bias * factor
        else:
            return False
        self.steps += 1
        return True


def plan_affine_folds(func: relax.Function) -> dict[relax.Var, _Chain]:
    """Map each chain's last var to the folded layer that replaces it (chains of >= 1 fold)."""
    counts = use_counts(func)
    chains: dict[relax.Var, _Chain] = {}
    for binding in iter_bindings(func):
        value = binding.value
        found = _anchor(value)
        if found is not None:
            kind, weight, conv = found
            chains[binding.var] = _Chain(kind, weight, conv, value)
            continue
        name = op_name(value)
        if name not in _AFFINE:
            continue
        a, b = value.args
        # only `layer (op) const`; for add and multiply also `const (op) layer`
        if isinstance(a, relax.Var) and a in chains and counts[a] == 1:
            src, other = a, b
        elif name in ("relax.add", "relax.multiply") and isinstance(b, relax.Var) and b in chains:
            src, other = b, a
            if counts[b] != 1:
                continue
        else:
            continue
        c = const_array(other)
        if c is None or static_shape(binding.var) != static_shape(src):
            continue
        chain = chains[src]
        vec = _per_channel(c.astype(np.float32), chain.weight.shape[0], chain.kind)
        if vec is None or not chain.apply(name, vec):
            continue
        del chains[src]
        chains[binding.var] = chain
    return {var: ch for var, ch in chains.items() if ch.steps > 0}


@mutator
class _FoldMutator(PyExprMutator):
    def __init__(self, plan: dict[relax.Var, _Chain], mod: tvm.IRModule | None = None):
        super().__init__(mod)
        self.plan = plan

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        chain = self.plan.get(binding.var)
        if chain is None:
            super().visit_var_binding_(binding)
            return
        x = self.visit_expr(chain.call.args[0])
        if chain.kind == CONV2D:
            attrs = chain.call.attrs
            y = relax.op.nn.conv2d(
                x,
                relax.const(chain.weight),
                strides=chain.conv["strides"],
                padding=chain.conv["padding"],
                dilation=chain.conv["dilation"],
                groups=chain.conv["groups"],
                data_layout=attrs.data_layout,
                kernel_layout=attrs.kernel_layout,
            )
            bias = chain.bias.reshape(1, -1, 1, 1)
        else:
            y = relax.op.matmul(x, relax.const(np.ascontiguousarray(chain.weight.T)))
            bias = chain.bias
        y = self.builder_.emit(y, "folded")
        out = relax.op.add(y, relax.const(bias))
        rebind(self, binding.var, out)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FoldAffineIntoLayers")
class FoldAffineIntoLayers:
    """Fold BatchNorm / scale / bias chains into constant-weight conv2d and matmul."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            plan = plan_affine_folds(func)
            if not plan:
                continue
            new_func = _FoldMutator(plan, mod).visit_expr(func)
            mod[gv] = new_func
        return relax.transform.DeadCodeElimination()(mod)
