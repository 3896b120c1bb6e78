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
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.expr_functor import mutator

from ..ir.hard_activations import find_hard_activations
from ..ir.layers import CONV2D, per_channel, stored_anchor
from ..ir.relax_utils import (
    const_array,
    constant,
    iter_bindings,
    op_name,
    static_shape,
    use_counts,
)
from ..ir.rewrite import PlannedRewriter

# One link of a chain: ``layer (op) const``. dpl also matches ``const (op) layer`` for the
# commutative add and multiply, and only for those, which is what folding allows.
_LAYER, _CONST = wildcard(), is_const()
_STEP = (
    is_op("relax.add")(_LAYER, _CONST)
    | is_op("relax.subtract")(_LAYER, _CONST)
    | is_op("relax.multiply")(_LAYER, _CONST)
    | is_op("relax.divide")(_LAYER, _CONST)
)


class _Chain:
    """A constant-weight layer being extended by affine ops, before it is re-emitted. The
    weight stays in the layout the op stores it (a linear's ``[K, N]``, OIHW) and is copied
    only when a scale is folded into it: a bias add keeps the layer's weight constant."""

    def __init__(self, kind: str, weight: np.ndarray, conv: dict, call: relax.Call):
        self.kind = kind
        self.weight = weight  # read-only view of the constant until scaled
        self.scaled = False
        self.out_axis = 0 if kind == CONV2D else weight.ndim - 1
        self.channels = weight.shape[self.out_axis]
        self.bias = np.zeros(self.channels, dtype=np.float32)
        self.has_bias = False
        self.conv = conv
        self.call = call
        self.steps = 0

    def weight_expr(self) -> relax.Expr:
        return constant(self.weight) if self.scaled else self.call.args[1]

    def apply(self, op: str, vec: np.ndarray) -> bool:
        scale_axes = tuple(
            slice(None) if axis == self.out_axis else None for axis in range(self.weight.ndim)
        )
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
            self.scaled = True
            self.bias = self.bias * factor
        else:
            return False
        self.steps += 1
        return True


def _plan_affine_folds(func: relax.Function) -> dict[relax.Var, _Chain]:
    """Map each chain's last var to the folded layer that replaces it (chains of >= 1 fold)."""
    counts = use_counts(func)
    # the add(x, 3) of a hard-sigmoid / hard-swish stays: the layer takes the whole activation
    # as its epilogue (ir.layers), which it could not find with the 3 folded into the bias
    hard_heads = {h.head for h in find_hard_activations(relax.analysis.get_var2val(func), counts)}
    chains: dict[relax.Var, _Chain] = {}
    for binding in iter_bindings(func):
        value = binding.value
        found = stored_anchor(value)
        if found is not None:
            kind, weight, conv = found
            chains[binding.var] = _Chain(kind, weight, conv, value)
            continue
        step = _STEP.extract_matched_expr(value) if isinstance(value, relax.Call) else None
        if step is None or binding.var in hard_heads:
            continue
        src = step[_LAYER]
        if not isinstance(src, relax.Var) or src not in chains or counts[src] != 1:
            continue
        if static_shape(binding.var) != static_shape(src):
            continue
        chain = chains[src]
        c = const_array(step[_CONST])
        vec = per_channel(c.astype(np.float32), chain.channels, chain.kind)
        if vec is None or not chain.apply(op_name(value), vec):
            continue
        del chains[src]
        chains[binding.var] = chain
    return {var: ch for var, ch in chains.items() if ch.steps > 0}


@mutator
class _FoldMutator(PlannedRewriter):
    """``plan``: each chain's last var -> the folded layer that replaces it."""

    def replacement(self, _var: relax.Var, chain: _Chain) -> relax.Expr:
        x = self.visit_expr(chain.call.args[0])
        if chain.kind == CONV2D:
            attrs = chain.call.attrs
            y = relax.op.nn.conv2d(
                x,
                chain.weight_expr(),
                strides=chain.conv["strides"],
                padding=chain.conv["padding"],
                dilation=chain.conv["dilation"],
                groups=chain.conv["groups"],
                data_layout=attrs.data_layout,
                kernel_layout=attrs.kernel_layout,
            )
            bias = chain.bias.reshape(1, -1, 1, 1)
        else:
            y = relax.op.matmul(x, chain.weight_expr())
            bias = chain.bias
        y = self.builder_.emit(y, "folded")
        return relax.op.add(y, relax.const(bias))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FoldAffineIntoLayers")
class FoldAffineIntoLayers:
    """Fold BatchNorm / scale / bias chains into constant-weight conv2d and matmul."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        folded = mod.clone()  # assigning functions edits a module in place: not the caller's
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function):
                continue
            plan = _plan_affine_folds(func)
            if not plan:
                continue
            folded[gv] = _FoldMutator(plan, folded).visit_expr(func)
        return relax.transform.DeadCodeElimination()(folded)
