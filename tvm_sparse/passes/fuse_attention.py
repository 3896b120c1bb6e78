"""Replace each multi-head attention subgraph by one call of the fused x86 attention kernel.

What an ONNX encoder imports to (per layer, ``q``, ``k``, ``v`` any ``[b, s, h * d]`` tensors)::

    q4 = permute_dims(reshape(q, [b, s, h, d]), [0, 2, 1, 3])    # [b, h, s, d]
    kt = permute_dims(reshape(k, [b, s, h, d]), [0, 2, 3, 1])    # [b, h, d, s]
    v4 = permute_dims(reshape(v, [b, s, h, d]), [0, 2, 1, 3])    # [b, h, s, d]
    x = add(multiply(matmul(q4, kt), scale), mask)                # mask: broadcasts to [b, h, s, s]
    o = permute_dims(matmul(softmax(x, axis=-1), v4), [0, 2, 1, 3])
    out = reshape(o, [b, s, h * d])

becomes ``out = call_tir(attention, [q, k, v, mask], [b, s, h * d])``
(``schedules.attention_fused_x86``): no permute copies, no ``[b, h, s, s]`` tensor in memory.
The kernel reads ``q``, ``k``, ``v`` through their reshapes (row-major order is all it needs):
after FuseOps a chain of two reshapes is a copy kernel, not a view, and there are three per
layer.

Accepted variations: the scale as ``multiply`` (either side) or ``divide`` by a scalar constant,
on the scores or on ``q`` / ``k`` anywhere along their reshape / permute chains (or absent);
the key transpose written as one permute or several; ``add(mask, scores)``; no mask; the final
reshape absent (the call then returns ``[b, s, h, d]``). The scores, the mask add, the softmax,
``P V`` and the output permute must have no other users; the ``q`` / ``k`` / ``v`` chains may
(they are then kept for those users). Anything else is left as it is: a mask that is not
float32 or does not broadcast over a full key axis, a head dim that is not a multiple of 8, or
cross-attention (query and key lengths differ) keep the whole subgraph.

Runs on Relax operators: after the Sparsify phase (the projections are call_tir kernels by then;
their outputs are the ``q``, ``k``, ``v`` here) and before ``LegalizeOps``. Only for CPU targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import (
    binding_map,
    dtype_of,
    op_name,
    scalar_const,
    static_shape,
    through_reshape,
    use_counts,
)
from ..ir.rewrite import PlannedRewriter
from ..schedules.attention_fused_x86 import AttentionShape, attention_kernel
from .cpu_only import CpuRewrite

_Q_PERM = (0, 2, 1, 3)  # [b, s, h, d] -> [b, h, s, d]
_K_PERM = (0, 2, 3, 1)  # [b, s, h, d] -> [b, h, d, s]


@dataclass(frozen=True)
class AttentionMatch:
    """One attention subgraph: ``out_var`` becomes the fused call on (q, k, v, mask)."""

    out_var: relax.Var
    q: relax.Expr
    k: relax.Expr
    v: relax.Expr
    mask: relax.Expr | None
    scale: float
    shape: AttentionShape
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class _Operand:
    """A matmul operand traced back to its data: ``permute(base, perm) * factor``."""

    source: relax.Expr  # what the kernel reads: base, or the tensor base was reshaped from
    base_shape: tuple[int, ...]  # the 4-D shape the permutation applies to
    perm: tuple[int, ...]
    factor: float


def _peel_scale(value: relax.Expr) -> tuple[relax.Expr, float] | None:
    """``(x, c)`` when ``value`` is ``x * c``, ``c * x`` or ``x / c`` with a scalar constant c
    (float32: the kernel computes in float32)."""
    name = op_name(value)
    if name == "relax.multiply":
        a, b = value.args
        for x, c in ((a, b), (b, a)):
            factor = scalar_const(c, "float32")
            if factor is not None and static_shape(x) == static_shape(value):
                return x, factor
    elif name == "relax.divide":
        x, c = value.args
        factor = scalar_const(c, "float32")
        if factor is not None and factor != 0.0 and static_shape(x) == static_shape(value):
            return x, 1.0 / factor
    return None


class _Graph:
    """The bindings of one function with their use counts: what the matcher walks."""

    def __init__(self, func: relax.Function):
        self.bindings = binding_map(func)
        self.uses = use_counts(func)
        self.users: dict[relax.Var, list[relax.Var]] = {}
        for var, value in self.bindings.items():
            for used in relax.analysis.free_vars(value):
                self.users.setdefault(used, []).append(var)

    def value(self, expr: relax.Expr) -> relax.Expr | None:
        return self.bindings.get(expr) if isinstance(expr, relax.Var) else None

    def single_user(self, var: relax.Var) -> relax.Var | None:
        """The one binding that uses ``var`` when nothing else (nor the result) does."""
        users = self.users.get(var, [])
        if self.uses[var] != 1 or len(users) != 1:
            return None
        return users[0]

    def private(self, expr: relax.Expr) -> bool:
        """``expr`` is a bound var used exactly once (so fusing it away loses nothing)."""
        return isinstance(expr, relax.Var) and expr in self.bindings and self.uses[expr] == 1

    def operand(self, expr: relax.Expr) -> _Operand | None:
        """Trace a 4-D matmul operand back through permutes, scalar scales and reshapes."""
        perm = (0, 1, 2, 3)
        factor = 1.0
        while True:
            value = self.value(expr)
            peeled = _peel_scale(value) if value is not None else None
            if peeled is not None:
                expr, scale = peeled
                factor *= scale
            elif op_name(value) == "relax.permute_dims" and value.attrs.axes is not None:
                axes = [int(a) for a in value.attrs.axes]
                if len(axes) != 4:
                    return None
                perm = tuple(axes[p] for p in perm)
                expr = value.args[0]
            else:
                break
        shape = static_shape(expr)
        if shape is None or len(shape) != 4 or dtype_of(expr) != "float32":
            return None
        while True:  # the data behind it: reshapes keep row-major order, so read through them
            source = through_reshape(expr, self.bindings.get, self._plain)
            value = self.value(expr)
            peeled = _peel_scale(value) if value is not None else None
            if not source.same_as(expr):
                expr = source
            elif peeled is not None and self._plain(peeled[0]):
                expr, scale = peeled
                factor *= scale
            else:
                break
        if dtype_of(expr) != "float32" or static_shape(expr) is None:
            return None
        return _Operand(expr, shape, perm, factor)

    def _plain(self, expr: relax.Expr) -> bool:
        """Whether the input of a reshape (or scale) may be read in its place.

        Not when it is a permute: that may be the output permute of another attention (whose
        reshape is then this one's input), and reading it would keep that attention's whole
        unfused subgraph alive.
        """
        return static_shape(expr) is not None and op_name(self.value(expr)) != "relax.permute_dims"

    def scores(self, expr: relax.Expr) -> tuple[relax.Expr, float] | None:
        """``(matmul, factor)`` when ``expr`` is a private (scaled) matmul of two activations."""
        factor = 1.0
        while True:
            if not self.private(expr):
                return None
            value = self.bindings[expr]
            peeled = _peel_scale(value)
            if peeled is None:
                break
            expr, scale = peeled
            factor *= scale
        if op_name(value) != "relax.matmul":
            return None
        return expr, factor


def _mask_ok(mask: relax.Expr, scores_shape: tuple[int, ...]) -> bool:
    shape = static_shape(mask)
    if shape is None or dtype_of(mask) != "float32" or not 1 <= len(shape) <= 4:
        return False
    if shape[-1] != scores_shape[-1]:
        return False
    full = scores_shape[4 - len(shape) :]
    return all(d in (1, want) for d, want in zip(shape, full))


def _match(graph: _Graph, pv_var: relax.Var) -> AttentionMatch | None:
    """The attention subgraph whose ``P V`` matmul is bound to ``pv_var``, if it is one."""
    pv = graph.bindings[pv_var]
    probs, v_op = pv.args
    # Step 1. P = softmax(x, axis=-1), used only by P V.
    softmax = graph.value(probs)
    if op_name(softmax) != "relax.nn.softmax" or not graph.private(probs):
        return None
    scores_shape = static_shape(probs)
    if scores_shape is None or len(scores_shape) != 4 or dtype_of(probs) != "float32":
        return None
    if int(softmax.attrs.axis) not in (-1, 3):
        return None
    # Step 2. x = scores (+ mask).
    x = softmax.args[0]
    mask = None
    found = graph.scores(x)
    if found is None:
        added = graph.value(x)
        if op_name(added) != "relax.add" or not graph.private(x):
            return None
        for s_expr, m_expr in (added.args, tuple(reversed(added.args))):
            found = graph.scores(s_expr)
            if found is not None and static_shape(s_expr) == scores_shape:
                mask = m_expr
                break
        if found is None or not _mask_ok(mask, scores_shape):
            return None
    qk_var, factor = found
    q_op, k_op = graph.bindings[qk_var].args
    # Step 3. Q, K, V: permutes of [b, s, h, d] tensors.
    q, k, v = graph.operand(q_op), graph.operand(k_op), graph.operand(v_op)
    if q is None or k is None or v is None:
        return None
    if (q.perm, k.perm, v.perm) != (_Q_PERM, _K_PERM, _Q_PERM) or v.factor != 1.0:
        return None
    b, s, h, d = q.base_shape
    if k.base_shape != q.base_shape or v.base_shape != q.base_shape or d % 8:
        return None
    if scores_shape != (b, h, s, s) or static_shape(pv_var) != (b, h, s, d):
        return None
    # Step 4. The output: permute back to [b, s, h, d], then (usually) reshape to [b, s, h*d].
    out_var = graph.single_user(pv_var)
    permute = graph.bindings.get(out_var) if out_var is not None else None
    if op_name(permute) != "relax.permute_dims" or permute.attrs.axes is None:
        return None
    if tuple(int(a) for a in permute.attrs.axes) != _Q_PERM:
        return None
    reshape_var = graph.single_user(out_var)
    reshape = graph.bindings.get(reshape_var) if reshape_var is not None else None
    if op_name(reshape) == "relax.reshape" and static_shape(reshape_var) is not None:
        out_var = reshape_var
    return AttentionMatch(
        out_var=out_var,
        q=q.source,
        k=k.source,
        v=v.source,
        mask=mask,
        scale=factor * q.factor * k.factor,
        shape=AttentionShape(b, s, h, d),
        out_shape=static_shape(out_var),
    )


def find_attention(func: relax.Function) -> list[AttentionMatch]:
    """Every attention subgraph of ``func`` that the fused kernel can replace."""
    graph = _Graph(func)
    matches = []
    for var, value in graph.bindings.items():
        if op_name(value) == "relax.matmul":
            match = _match(graph, var)
            if match is not None:
                matches.append(match)
    return matches


@mutator
class _AttentionRewriter(PlannedRewriter):
    def __init__(
        self, plan: dict[relax.Var, AttentionMatch], mod: tvm.IRModule, target: tvm.target.Target
    ):
        super().__init__(plan, mod)
        self.target = target
        self.kernels: dict[tuple, relax.GlobalVar] = {}

    def _gvar(self, match: AttentionMatch) -> relax.GlobalVar:
        shapes = (static_shape(match.q), static_shape(match.k), static_shape(match.v))
        mask_shape = static_shape(match.mask) if match.mask is not None else None
        key = (match.shape, match.scale, shapes, mask_shape, match.out_shape)
        if key not in self.kernels:  # layers of one encoder share one kernel
            kernel = attention_kernel(
                match.shape, match.scale, mask_shape=mask_shape, q_shape=shapes[0],
                k_shape=shapes[1], v_shape=shapes[2], out_shape=match.out_shape,
                target=self.target,
            )  # fmt: skip
            name = f"{kernel.name}_{len(self.kernels)}"
            func = kernel.func.with_attr("global_symbol", name)
            self.kernels[key] = self.builder_.add_func(func, name)
        return self.kernels[key]

    def replacement(self, _var: relax.Var, match: AttentionMatch) -> relax.Expr:
        gvar = self._gvar(match)
        args = [self.visit_expr(e) for e in (match.q, match.k, match.v)]
        if match.mask is not None:
            args.append(self.visit_expr(match.mask))
        return relax.call_tir(gvar, args, relax.TensorType(match.out_shape, "float32"))


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.FuseAttention")
class FuseAttention(CpuRewrite):
    """Fuse the attention subgraphs of every Relax function (CPU targets only)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _AttentionRewriter | None:
        plan = {m.out_var: m for m in find_attention(func)}
        return _AttentionRewriter(plan, mod, target) if plan else None
