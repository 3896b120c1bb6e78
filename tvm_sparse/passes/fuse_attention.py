"""Replace each multi-head attention subgraph by one call of the fused x86 attention kernel.

The subgraph, with ``[..]`` either ``[b, h]`` (4-D, how HF BERT exports) or ``[b * h]`` (3-D)::

    scores = matmul(q_op, k_op)                 # q_op [.., s, d], k_op [.., d, s]
    x = add(multiply(scores, scale), mask)      # both optional; mask broadcasts to the scores
    o = matmul(softmax(x, axis=-1), v_op)       # v_op [.., s, d]
    out = reshape(permute_dims(o, axes))        # both optional

becomes ``out = call_tir(attention, [q, k, v, mask], out_shape)``
(``schedules.attention_fused_x86``): no permute or slice copies, no scores tensor in memory.
Each operand is traced back through layout ops (reshape, permute_dims, expand_dims, squeeze, a
``take`` of a constant index, a constant ``strided_slice``) and scalar scales to the deepest
tensor that holds it as a strided view with contiguous columns; the kernel reads that tensor at
those strides (``Layout``). So nn.MultiheadAttention's export (one packed ``[s, b, 3 * e]``
in-projection sliced into q, k, v through expand / permute / squeeze / take, reshaped to
``[s, b * h, d]``, permuted to ``[b * h, s, d]``, reshaped to ``[b, h, s, d]``; ``sqrt(1 /
sqrt(d))`` on both q and k^T; output permuted ``[2, 0, 1, 3]``) reads q, k and v straight out of
the projection's output, and a hand-written ``softmax(q @ k.transpose(-2, -1) * c) @ v`` in 3-D
or 4-D out of its slices. Reading stops before the bindings another match removes: one
attention's input may be the previous one's output, and reading through its permute into its
``P V`` would keep that subgraph alive.

Accepted variations: the scale as ``multiply`` (either side) or ``divide`` by a scalar float32
constant, on the scores or on ``q`` / ``k`` anywhere along their chains (or absent);
``add(mask, scores)``; no mask. The scores, the mask add, the softmax, ``P V`` and the output
permute must have no other users; the ``q`` / ``k`` / ``v`` chains may. Anything else is left
as it is: a softmax over another axis, scores scaled by anything but a constant scalar, a mask
that is not float32 or does not broadcast over a full key axis, a head dim that is not a
multiple of 8, a scale on ``v``, or cross-attention (query and key lengths differ).

Runs on Relax operators: after the Sparsify phase (the projections are call_tir kernels by then;
their outputs are what q, k, v are read from) and before ``LegalizeOps``. Only for CPU targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import (
    binding_map,
    const_array,
    dtype_of,
    op_name,
    scalar_const,
    static_shape,
    use_counts,
)
from ..ir.rewrite import PlannedRewriter
from ..schedules.attention_fused_x86 import AttentionShape, Layout, attention_kernel
from .cpu_only import CpuRewrite


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
    layouts: tuple[Layout, Layout, Layout, Layout]  # q, k, v, out
    removed: frozenset = frozenset()  # the bindings the fused call makes dead (pv, its permute)


@dataclass(frozen=True)
class _Strided:
    """A strided view of a tensor's row-major memory: index ``i`` is at ``offset + i . strides``."""

    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @staticmethod
    def contiguous(shape: tuple[int, ...]) -> _Strided:
        strides, step = [], 1
        for dim in reversed(shape):
            strides.append(step)
            step *= dim
        return _Strided(0, tuple(shape), tuple(reversed(strides)))

    def permute(self, axes: list[int]) -> _Strided:
        return _Strided(self.offset, tuple(self.shape[a] for a in axes),
                        tuple(self.strides[a] for a in axes))  # fmt: skip

    def reshape(self, new_shape: tuple[int, ...]) -> _Strided | None:
        """The same elements as ``new_shape`` without a copy, if strides can say it (numpy's
        rule: each run of old dims merged or split must itself be contiguous)."""
        if int(np.prod(self.shape)) != int(np.prod(new_shape)):
            return None
        old = [(d, st) for d, st in zip(self.shape, self.strides) if d != 1]
        out_strides = []
        i = 0
        for dim in new_shape:
            if dim == 1:
                out_strides.append(0)
                continue
            # consume old dims (inner to outer within the run) until their product is `dim`,
            # or split the current old dim
            if i >= len(old):
                return None
            size, stride = old[i]
            if size % dim == 0:  # split: this new dim is the outer part of old dim i
                inner = size // dim
                out_strides.append(stride * inner)
                if inner == 1:
                    i += 1
                else:
                    old[i] = (inner, stride)
                continue
            prod, j = size, i
            while prod < dim and j + 1 < len(old):  # merge old dims i..j, contiguous runs only
                nxt, nstride = old[j + 1]
                if old[j][1] != nstride * nxt:
                    return None
                prod *= nxt
                j += 1
            if prod != dim:
                return None
            out_strides.append(old[j][1])
            i = j + 1
        if i != len(old):
            return None
        return _Strided(self.offset, tuple(new_shape), tuple(out_strides))

    def take(self, index: int, axis: int) -> _Strided | None:
        if not 0 <= index < self.shape[axis]:
            return None
        keep = [a for a in range(len(self.shape)) if a != axis]
        return _Strided(self.offset + index * self.strides[axis],
                        tuple(self.shape[a] for a in keep),
                        tuple(self.strides[a] for a in keep))  # fmt: skip

    def slice(self, axis: int, begin: int, step: int, size: int) -> _Strided:
        shape, strides = list(self.shape), list(self.strides)
        offset = self.offset + begin * strides[axis]
        shape[axis], strides[axis] = size, strides[axis] * step
        return _Strided(offset, tuple(shape), tuple(strides))


def _ints(expr: relax.Expr) -> list[int] | None:
    """The integers of a tuple of PrimValues / a ShapeExpr (strided_slice's operands)."""
    fields = getattr(expr, "fields", None)
    if fields is None:
        fields = getattr(expr, "values", None)
    if fields is None:
        return None
    out = []
    for f in fields:
        value = getattr(f, "value", f)
        if not isinstance(value, tvm.tirx.IntImm):
            return None
        out.append(int(value.value))
    return out


def _int_scalar(expr: relax.Expr) -> int | None:
    value = const_array(expr)
    if value is None or value.shape != () or value.dtype.kind not in "iu":
        return None
    return int(value)


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


_VIEW_OPS = ("relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze",
             "relax.take", "relax.strided_slice")  # fmt: skip


def _view_input(value: relax.Expr) -> relax.Expr | None:
    """The tensor a layout op or scalar scale reads, if ``value`` is one."""
    if _peel_scale(value) is not None:
        return _peel_scale(value)[0]
    if op_name(value) in _VIEW_OPS:
        return value.args[0]
    return None


def _apply(view: _Strided, value: relax.Expr, out_shape) -> tuple[_Strided, float] | None:
    """The view of ``value``'s result, given ``view`` of its input (and a scale factor)."""
    name = op_name(value)
    peeled = _peel_scale(value)
    if peeled is not None:
        return view, peeled[1]
    if name in ("relax.reshape", "relax.expand_dims", "relax.squeeze"):
        out = view.reshape(out_shape)  # the last two only add or drop dims of size 1
    elif name == "relax.permute_dims":
        axes = value.attrs.axes
        axes = [int(a) for a in axes] if axes is not None else list(range(len(view.shape)))[::-1]
        out = view.permute([a % len(view.shape) for a in axes])
    elif name == "relax.take":
        index, axis = _int_scalar(value.args[1]), value.attrs.axis
        axis = None if axis is None else int(axis) % len(view.shape)
        out = view.take(index, axis) if index is not None and axis is not None else None
    elif name == "relax.strided_slice":
        out = _slice(view, value)
    else:
        return None
    if out is None or out.shape != tuple(out_shape):
        return None
    return out, 1.0


def _slice(view: _Strided, value: relax.Expr) -> _Strided | None:
    axes, begin, end = (_ints(a) for a in value.args[1:4])
    steps = _ints(value.args[4]) if len(value.args) > 4 else None
    if axes is None or begin is None or end is None:
        return None
    steps = steps or [1] * len(axes)
    for axis, b, e, step in zip(axes, begin, end, steps):
        axis %= len(view.shape)
        dim = view.shape[axis]
        if step <= 0:
            return None
        b = min(max(b + dim if b < 0 else b, 0), dim)
        e = min(max(e + dim if e < 0 else e, 0), dim)
        view = view.slice(axis, b, step, max(0, -(-(e - b) // step)))
    return view


@dataclass(frozen=True)
class _Operand:
    """A matmul operand traced back to its data: a strided view of ``source``, times ``factor``."""

    source: relax.Expr  # what the kernel reads
    view: _Strided  # the operand's elements in source's row-major memory
    factor: float


class _Graph:
    """The bindings of one function with their use counts: what the matcher walks."""

    def __init__(self, func: relax.Function, stop: frozenset = frozenset()):
        self.bindings = binding_map(func)
        self.uses = use_counts(func)
        self.stop = stop  # bindings other matches remove: an operand never reads through them
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

    def operand(self, expr: relax.Expr, accept) -> _Operand | None:
        """Trace a matmul operand back through layout ops (reshape, permute, expand / squeeze,
        constant take and strided slice) and scalar scales to the deepest tensor that holds
        it as a strided view ``accept`` takes (the kernel then reads that tensor: no copies)."""
        chain = [expr]
        while True:
            value = self.value(chain[-1])
            src = _view_input(value) if value is not None else None
            if src is None or src in self.stop or static_shape(src) is None:
                break
            chain.append(src)
        for start in range(len(chain) - 1, -1, -1):
            source = chain[start]
            if dtype_of(source) != "float32":
                continue
            view, factor = _Strided.contiguous(static_shape(source)), 1.0
            for var in reversed(chain[:start]):
                stepped = _apply(view, self.bindings[var], static_shape(var))
                if stepped is None:
                    break
                view, factor = stepped[0], factor * stepped[1]
            else:
                if accept(view):
                    return _Operand(source, view, factor)
        return None

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
    if shape is None or dtype_of(mask) != "float32" or not 1 <= len(shape) <= len(scores_shape):
        return False
    if shape[-1] != scores_shape[-1]:
        return False
    full = scores_shape[len(scores_shape) - len(shape) :]
    return all(d in (1, want) for d, want in zip(shape, full))


def _layout(view: _Strided) -> Layout | None:
    """The kernel's layout of a ``[b, h, s, d]`` or ``[b * h, s, d]`` view (columns contiguous)."""
    if view.strides[-1] != 1 and view.shape[-1] != 1:
        return None
    strides = [0 if d == 1 else st for d, st in zip(view.shape, view.strides)]
    if len(view.shape) == 3:
        return Layout(view.offset, 0, strides[0], strides[1])
    return Layout(view.offset, strides[0], strides[1], strides[2])


def _swap_last(view: _Strided) -> _Strided:
    rank = len(view.shape)
    return view.permute([*range(rank - 2), rank - 1, rank - 2])


def _match(graph: _Graph, pv_var: relax.Var) -> AttentionMatch | None:
    """The attention subgraph whose ``P V`` matmul is bound to ``pv_var``, if it is one."""
    pv = graph.bindings[pv_var]
    probs, v_op = pv.args
    # Step 1. P = softmax(x, axis=-1), used only by P V; [b, h, s, s] or [b * h, s, s].
    softmax = graph.value(probs)
    if op_name(softmax) != "relax.nn.softmax" or not graph.private(probs):
        return None
    scores_shape = static_shape(probs)
    if scores_shape is None or len(scores_shape) not in (3, 4) or dtype_of(probs) != "float32":
        return None
    rank = len(scores_shape)
    if int(softmax.attrs.axis) not in (-1, rank - 1):
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
    # Step 3. Q [.., s, d], K^T [.., d, s], V [.., s, d]: strided views, columns contiguous.
    lead, s = scores_shape[:-2], scores_shape[-1]
    pv_shape = static_shape(pv_var)
    if scores_shape[-2] != s or pv_shape is None or pv_shape[:-1] != (*lead, s):
        return None
    d = pv_shape[-1]
    if d % 8:
        return None
    want = {"q": (*lead, s, d), "k": (*lead, d, s), "v": (*lead, s, d)}
    if (static_shape(q_op), static_shape(k_op), static_shape(v_op)) != tuple(want.values()):
        return None

    def rows(view):
        return _layout(view) is not None

    q = graph.operand(q_op, rows)
    k = graph.operand(k_op, lambda view: rows(_swap_last(view)))
    v = graph.operand(v_op, rows)
    if q is None or k is None or v is None or v.factor != 1.0:
        return None
    if rank == 4:
        shape = AttentionShape(lead[0], s, lead[1], d)
    else:
        shape = AttentionShape(1, s, lead[0], d)
    # Step 4. The output: permuted (usually back to [b, s, h, d]) then reshaped, both optional.
    removed = {pv_var}
    out_var, out_view = pv_var, _Strided.contiguous(pv_shape)
    user = graph.single_user(pv_var)
    permute = graph.bindings.get(user) if user is not None else None
    if op_name(permute) == "relax.permute_dims" and permute.attrs.axes is not None:
        axes = [int(a) % rank for a in permute.attrs.axes]
        contiguous = _Strided.contiguous(tuple(pv_shape[a] for a in axes)).strides
        strides = [0] * rank
        for i, a in enumerate(axes):
            strides[a] = contiguous[i]
        out_view = _Strided(0, pv_shape, tuple(strides))
        removed.add(user)
        out_var = user
    user = graph.single_user(out_var)
    reshape = graph.bindings.get(user) if user is not None else None
    if op_name(reshape) == "relax.reshape" and static_shape(user) is not None:
        if out_var is not pv_var:
            removed.add(out_var)
        out_var = user
    out_layout = _layout(out_view)
    if out_layout is None or static_shape(out_var) is None:
        return None
    return AttentionMatch(
        out_var=out_var,
        q=q.source,
        k=k.source,
        v=v.source,
        mask=mask,
        scale=factor * q.factor * k.factor,
        shape=shape,
        out_shape=static_shape(out_var),
        layouts=(_layout(q.view), _layout(_swap_last(k.view)), _layout(v.view), out_layout),
        removed=frozenset(removed),
    )


def find_attention(func: relax.Function) -> list[AttentionMatch]:
    """Every attention subgraph of ``func`` that the fused kernel can replace.

    Two rounds: the first finds the subgraphs, the second traces their operands again without
    reading through what the first round's matches remove (one attention's ``q`` may be the
    previous one's output: read at its reshape, not through its permute into its ``P V``,
    which would keep that whole subgraph alive)."""

    def matches(graph: _Graph) -> list[AttentionMatch]:
        found = []
        for var, value in graph.bindings.items():
            if op_name(value) == "relax.matmul":
                match = _match(graph, var)
                if match is not None:
                    found.append(match)
        return found

    first = matches(_Graph(func))
    if not first:
        return []
    stop = frozenset().union(*(m.removed for m in first))
    return matches(_Graph(func, stop))


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
        key = (match.shape, match.scale, shapes, mask_shape, match.out_shape, match.layouts)
        if key not in self.kernels:  # layers of one encoder share one kernel
            kernel = attention_kernel(
                match.shape, match.scale, mask_shape=mask_shape, q_shape=shapes[0],
                k_shape=shapes[1], v_shape=shapes[2], out_shape=match.out_shape,
                layouts=match.layouts, target=self.target,
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
