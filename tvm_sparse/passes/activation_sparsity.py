"""Detect what makes a layer's input sparse: k-WTA (in every form PyTorch exports it) or ReLU.

nupic.torch's k-winners-take-all keeps ``x`` where its boosted value ``x * boost`` ranks among the
``k`` largest of its group (a sample: ``KWinners``, ``KWinners2d``; or the channels of one NCHW
location: ``KWinners2d(local=True)``), else 0. Ranking is on the boosted value, the output keeps
the unboosted one. After TVM's import its exports read, per form:

- threshold, ties win (``topk(...).values[:, k-1]`` and nupic's ``kthvalue`` + ``masked_fill``)::

      thr = plumbing(topk(r, K, largest)[0])     # take/strided_slice of one index j, reshapes
      out = where(r >= thr, x, 0)  |  where(r < thr, 0, x)  |  x * astype(r >= thr)

  ``largest``: the (j+1)-th largest, k = j + 1; ``largest=False`` (``kthvalue(n - k + 1)``
  exported as TopK of the smallest): the (j+1)-th smallest, k = n - j. Every value >= the k-th
  wins, so ties can keep more than k.
- exactly k (nupic before 2021 and ``break_ties=True``: ``topk`` indices scattered into a mask)::

      idx = topk(r, k, largest=True)[1]
      out = x * scatter(zeros, idx, ones)  |  scatter(zeros, idx, gather(x, idx))
          | where(scatter(ones, idx, zeros), 0, x)

  Ties at the k-th value are broken by index (ONNX TopK: the lower index first).

``r`` is ``x`` or ``x * boost``, through reshapes (the flatten in front of a global k-WTA may sit
before or after the multiply). A boost is one constant, finite, positive factor of any shape
that broadcasts against the multiply's operand (per unit, per channel, scalar): a negative
factor reverses the ranking, zero flattens it and a computed one is data dependent, so none of
those is a boost and the subgraph is not k-WTA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from ..ir.relax_utils import binding_map, const_array, dtype_of, op_name, static_shape

# Ops that keep a sparse activation sparse (zeros stay zeros, positions move): walked through.
_TRANSPARENT = (
    "relax.reshape",
    "relax.flatten",
    "relax.permute_dims",
    "relax.expand_dims",
    "relax.squeeze",
    "relax.nn.max_pool2d",
)
# Ops between TopK's values and the threshold comparison that select nothing.
_RESHAPING = ("relax.expand_dims", "relax.reshape", "relax.squeeze", "relax.broadcast_to")
# Comparisons of (ranked, threshold): the mask is on (keep) or off (zero) where they hold.
_ON = {"relax.greater_equal": 0, "relax.less_equal": 1}  # op -> position of the ranked operand
_OFF = {"relax.less": 0, "relax.greater": 1}


@dataclass(frozen=True)
class ActivationInfo:
    """The producer of a layer input and the activation density it implies."""

    kind: str  # "kwta", "relu" or "dense"
    # expected non-zero fraction of the layer input: k/n for k-WTA, adjusted for max-pooling on
    # the way (see pooled_density); None when data dependent (ReLU)
    density: float | None = None
    k: int | None = None
    n: int | None = None
    boosted: bool = False
    through: tuple[str, ...] = ()  # transparent ops between producer and layer (e.g. max_pool2d)
    local: bool = False  # k of n channels per location (KWinners2d local), else k of n per sample

    def describe(self) -> str:
        if self.kind == "kwta":
            scope = " per location" if self.local else ""
            boost = ", boosted" if self.boosted else ""
            pooled = ", after max_pool2d" if "max_pool2d" in self.through else ""
            return f"k-WTA k={self.k}/{self.n}{scope} ({self.density:.1%}{pooled}{boost})"
        if self.kind == "relu":
            return "ReLU (data dependent)"
        return "dense"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "density": self.density,
            "k": self.k,
            "n": self.n,
            "boosted": self.boosted,
            "through": list(self.through),
            "local": self.local,
        }


DENSE = ActivationInfo("dense")


@dataclass(frozen=True)
class KwtaMatch:
    """A k-WTA subgraph whose result is ``out_var`` (shape ``[B, ...]``, as ``x``).

    Global (``local=False``): k of the ``n`` values of each sample. Local: k of the ``n = C``
    channels at each location of an NCHW ``x``. ``boost`` is the factor of each value of one
    sample, flattened row-major (``[n]`` global, ``[C*H*W]`` local), or None. ``exact``: exactly
    k win, ties broken by index; else every value ranked >= the k-th wins.
    """

    out_var: relax.Var  # the where/multiply/scatter result
    x: relax.Expr  # the unboosted values that are kept
    ranked: relax.Expr  # what TopK ranks (x or x * boost, maybe reshaped)
    boost: np.ndarray | None
    k: int
    n: int
    local: bool = False
    exact: bool = False


@dataclass(frozen=True)
class _Ranking:
    """What a mask ranks: the TopK call, k, and the tensor the mask compares (or scatters)."""

    topk: relax.Call
    k: int
    ranked: relax.Expr
    thr_shape: tuple[int, ...] | None  # the threshold's shape as compared (None: exact forms)
    exact: bool
    mask_shape: tuple[int, ...] | None  # the comparison's or the scattered mask's shape


def _value(expr: relax.Expr, bindings: dict) -> relax.Expr | None:
    """The value bound to ``expr``, through var aliases (``lv1 = lv0``)."""
    while isinstance(expr, relax.Var):
        value = bindings.get(expr)
        if not isinstance(value, relax.Var):
            return value
        expr = value
    return None


def _strip(expr: relax.Expr, bindings: dict, ops: tuple[str, ...]) -> relax.Expr:
    """Follow var bindings through ``ops`` back to the first other expression."""
    while True:
        value = bindings.get(expr) if isinstance(expr, relax.Var) else None
        if isinstance(value, relax.Var) or (value is not None and op_name(value) in ops):
            expr = value if isinstance(value, relax.Var) else value.args[0]
        else:
            return expr


def _ints(arg) -> list[int] | None:
    """The integers of a tuple / shape argument (strided_slice's axes, begin, end, strides)."""
    items = getattr(arg, "fields", None) or getattr(arg, "values", None)
    if items is None:
        return None
    try:
        return [int(getattr(v, "value", v)) for v in items]
    except (TypeError, ValueError):
        return None


# Fills whose value is known without a constant tensor: torch.export writes ``zeros_like(x)``
# as ``full_like(x, 0)`` where the ONNX exporter writes a constant.
_FILLS = {"relax.zeros_like": 0.0, "relax.zeros": 0.0, "relax.ones_like": 1.0, "relax.ones": 1.0}


def _fill_value(expr: relax.Expr, bindings: dict | None) -> np.ndarray | None:
    value = _value(expr, bindings) if bindings is not None else None
    name = op_name(value)
    if name in _FILLS:
        return np.array([_FILLS[name]])
    if name in ("relax.full_like", "relax.full"):
        return const_array(value.args[1])
    return None


def _all(expr: relax.Expr, test, bindings: dict | None = None) -> bool:
    value = const_array(expr)
    if value is None:
        value = _fill_value(expr, bindings)
    return value is not None and value.size > 0 and bool(np.all(test(value)))


def _is_zero(expr: relax.Expr, bindings: dict | None = None) -> bool:
    """A constant, or a fill (``zeros_like``, ``full_like(x, 0)``), that is all zeros."""
    return _all(expr, lambda v: v == 0, bindings)


def _is_nonzero(expr: relax.Expr, bindings: dict | None = None) -> bool:
    return _all(expr, lambda v: v != 0, bindings)


def _strip_mask_plumbing(expr: relax.Expr, bindings: dict) -> relax.Expr:
    """A mask through ``astype(bool)`` (masked_fill exports cast the mask it already has) and
    reshapes (a mask scattered flat, viewed as NCHW): both keep each lane where it is."""
    while True:
        value = _value(expr, bindings)
        name = op_name(value)
        if (name == "relax.astype" and str(value.attrs.dtype) == "bool") or (
            name == "relax.reshape"
        ):
            expr = value.args[0]
        else:
            return expr


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _selected_index(
    expr: relax.Expr, bindings: dict
) -> tuple[relax.expr.TupleGetItem, int | None, int | None] | None:
    """``(topk values item, index, axis)``: the one index a threshold takes from TopK's values.

    Index and axis are None when nothing selects (a TopK with K = 1 used whole).
    """
    index = axis = None
    while True:
        if isinstance(expr, relax.Var) and isinstance(bindings.get(expr), relax.Var):
            expr = bindings[expr]
            continue
        value = _value(expr, bindings)
        if isinstance(value, relax.TupleGetItem):
            return (value, index, axis) if value.index == 0 else None
        name = op_name(value)
        if name in _RESHAPING:
            pass
        elif name == "relax.take" and index is None:
            j = const_array(value.args[1])
            rank = len(static_shape(value.args[0]) or ())
            if j is None or j.size != 1 or j.dtype.kind not in "iu" or not rank:
                return None
            index, axis = int(j.reshape(())), _norm_axis(int(value.attrs.axis), rank)
        elif name == "relax.strided_slice" and index is None:
            shape = static_shape(value.args[0])
            axes, begin, end = (_ints(a) for a in value.args[1:4])
            strides = _ints(value.args[4]) if len(value.args) > 4 else None
            if shape is None or None in (axes, begin, end) or len(axes) != 1:
                return None
            axis = _norm_axis(axes[0], len(shape))
            size = shape[axis]
            lo = begin[0] + size if begin[0] < 0 else begin[0]
            hi = min(end[0] + size if end[0] < 0 else end[0], size)
            if (strides or [1])[0] != 1 or hi - lo != 1:
                return None
            index = lo
        else:
            return None
        expr = value.args[0]


def _topk_of(item_tuple: relax.Expr, bindings: dict) -> relax.Call | None:
    topk = _value(item_tuple, bindings)
    return topk if op_name(topk) == "relax.topk" else None


def _threshold_ranking(compare: relax.Call, ranked_pos: int, bindings: dict) -> _Ranking | None:
    """The ranking of a comparison ``ranked <op> threshold``, threshold = one TopK value."""
    ranked, thr = compare.args[ranked_pos], compare.args[1 - ranked_pos]
    found = _selected_index(thr, bindings)
    if found is None:
        return None
    item, index, axis = found
    topk = _topk_of(item.tuple_value, bindings)
    tshape = static_shape(topk.args[0]) if topk is not None else None
    if tshape is None:
        return None
    t_axis = _norm_axis(int(topk.attrs.axis), len(tshape))
    big_k = int(topk.attrs.k)
    if index is None:
        if big_k != 1:
            return None
        index, axis = 0, t_axis
    index = index + big_k if index < 0 else index
    if axis != t_axis or not 0 <= index < big_k:
        return None
    k = index + 1 if bool(topk.attrs.largest) else tshape[t_axis] - index
    return _Ranking(topk, k, ranked, static_shape(thr), False, static_shape(compare))


def _scatter_ranking(scatter: relax.Call, bindings: dict) -> _Ranking | None:
    """The ranking of ``scatter_elements(const, topk(r, k, largest)[1], updates)`` (exact k)."""
    if str(scatter.attrs.reduction) != "update":
        return None
    idx = _strip_index_wrap(scatter.args[1], bindings)
    item = _value(idx, bindings)
    if not isinstance(item, relax.TupleGetItem) or item.index != 1:
        return None
    topk = _topk_of(item.tuple_value, bindings)
    if topk is None or not bool(topk.attrs.largest):
        return None
    rank = len(static_shape(topk.args[0]) or ())
    axis = _norm_axis(int(topk.attrs.axis), rank)
    if not rank or _norm_axis(int(scatter.attrs.axis), rank) != axis:
        return None
    shape = static_shape(scatter)
    if shape != static_shape(topk.args[0]):
        return None
    return _Ranking(topk, int(topk.attrs.k), topk.args[0], None, True, shape)


def _strip_index_wrap(idx: relax.Expr, bindings: dict) -> relax.Expr:
    """``idx`` from ``where(idx < 0, idx + n, idx)`` (exporters wrap negative gather indices)."""
    value = _value(idx, bindings)
    if op_name(value) != "relax.where":
        return idx
    cond, wrapped, plain = value.args
    cond_v, wrapped_v = _value(cond, bindings), _value(wrapped, bindings)
    if (
        op_name(cond_v) == "relax.less"
        and cond_v.args[0].same_as(plain)
        and _is_zero(cond_v.args[1])
        and op_name(wrapped_v) == "relax.add"
        and wrapped_v.args[0].same_as(plain)
    ):
        return plain
    return idx


def _mask_ranking(mask: relax.Expr, on: bool, bindings: dict) -> _Ranking | None:
    """The ranking behind a boolean/float mask that keeps (``on``) or zeroes its true lanes."""
    mask_v = _value(_strip_mask_plumbing(mask, bindings), bindings)
    name = op_name(mask_v)
    if name in (_ON if on else _OFF):
        return _threshold_ranking(mask_v, (_ON if on else _OFF)[name], bindings)
    if name == "relax.scatter_elements":
        base, _, updates = mask_v.args
        # on: ones scattered into zeros at the winners; off: zeros into ones
        if (on and _is_zero(base, bindings) and _is_nonzero(updates, bindings)) or (
            not on and _is_nonzero(base, bindings) and _is_zero(updates, bindings)
        ):
            return _scatter_ranking(mask_v, bindings)
    return None


def _selection(value: relax.Expr, bindings: dict) -> tuple[relax.Expr, _Ranking] | None:
    """``(kept, ranking)`` of an output op that keeps ``kept`` where a ranking says so."""
    name = op_name(value)
    if name == "relax.where":
        cond, a, b = value.args
        if _is_zero(b, bindings):
            return _pair(a, _mask_ranking(cond, True, bindings))
        if _is_zero(a, bindings):
            return _pair(b, _mask_ranking(cond, False, bindings))
    elif name == "relax.multiply":
        for kept, mask in (value.args, value.args[::-1]):
            mask_v = _value(mask, bindings)
            if op_name(mask_v) == "relax.astype":
                mask = mask_v.args[0]  # x * mask.float(): the bool mask
            elif op_name(mask_v) != "relax.scatter_elements":
                continue
            found = _pair(kept, _mask_ranking(mask, True, bindings))
            if found is not None:
                return found
    elif name == "relax.scatter_elements" and _is_zero(value.args[0], bindings):
        # the winners' own values scattered into zeros: updates = gather_elements(x, idx)
        gather = _value(value.args[2], bindings)
        ranking = _scatter_ranking(value, bindings)
        if op_name(gather) == "relax.gather_elements" and ranking is not None:
            same_idx = _strip_index_wrap(gather.args[1], bindings).same_as(
                _strip_index_wrap(value.args[1], bindings)
            )
            same_axis = int(gather.attrs.axis) == int(value.attrs.axis)
            if same_idx and same_axis:
                return gather.args[0], ranking
    return None


def _pair(kept: relax.Expr, ranking: _Ranking | None):
    return None if ranking is None else (kept, ranking)


def _boost(ranked: relax.Expr, kept: relax.Expr, bindings: dict, size: int):
    """``(True, factor [size] or None)`` when ``ranked`` is ``kept`` or ``kept * boost`` through
    reshapes, else ``(False, None)``. One multiply only: ``(x * a) * b`` rounds differently
    from ``x * (a * b)``, and the kernel must rank exactly the values TopK ranks."""
    base = _strip(kept, bindings, ("relax.reshape",))
    r = _strip(ranked, bindings, ("relax.reshape",))
    if r.same_as(base):
        return True, None
    scaled = _value(r, bindings)
    if op_name(scaled) != "relax.multiply":
        return False, None
    for other, factor in (scaled.args, scaled.args[::-1]):
        if not _strip(other, bindings, ("relax.reshape",)).same_as(base):
            continue
        boost = const_array(factor)
        shape = static_shape(other)
        if boost is None or shape is None or static_shape(scaled) != shape:
            continue
        if boost.dtype != np.float32 or not np.all(np.isfinite(boost) & (boost > 0)):
            continue
        try:
            full = np.broadcast_to(boost, shape)
        except ValueError:
            continue
        if full[0].size != size or not np.array_equal(full, np.broadcast_to(full[:1], shape)):
            continue  # a factor that differs between samples is no per-unit boost
        return True, np.ascontiguousarray(full[0].reshape(-1))
    return False, None


def _scope(
    mask_shape: tuple[int, ...], ranking: _Ranking, bindings: dict
) -> tuple[int, bool] | None:
    """``(n, local)``: what the ranking groups, checked against the mask's shape (the ranked
    values' as compared, or the scattered mask's)."""
    topk = ranking.topk
    tshape = static_shape(topk.args[0])
    axis = _norm_axis(int(topk.attrs.axis), len(tshape))
    batch, per_sample = mask_shape[0], int(np.prod(mask_shape[1:]))
    same_base = _strip(topk.args[0], bindings, ("relax.reshape",)).same_as(
        _strip(ranking.ranked, bindings, ("relax.reshape",))
    )
    if not same_base:
        return None
    thr = ranking.thr_shape
    if len(tshape) == 2 and axis == 1 and tshape == (batch, per_sample):
        if thr is None or thr == (batch,) + (1,) * (len(mask_shape) - 1):
            return per_sample, False
    if len(mask_shape) == 4 and tshape == mask_shape and axis == 1:
        if thr is None or thr == (batch, 1, *mask_shape[2:]):
            return mask_shape[1], True
    return None


def match_kwta(var: relax.Var, bindings: dict) -> KwtaMatch | None:
    """Match a k-WTA subgraph (any form in the module docstring) bound to ``var`` itself (not
    through an alias: each subgraph matches once)."""
    value = bindings.get(var)
    found = _selection(value, bindings) if isinstance(value, relax.Call) else None
    if found is None:
        return None
    kept, ranking = found
    out_shape, mask_shape = static_shape(var), ranking.mask_shape
    if out_shape is None or len(out_shape) < 2 or static_shape(kept) != out_shape:
        return None
    # the mask applies lane by lane (row-major, reshapes allowed): the comparison does not
    # broadcast the ranked values, the mask holds the output's samples
    if mask_shape is None or mask_shape[0] != out_shape[0]:
        return None
    if int(np.prod(mask_shape)) != int(np.prod(out_shape)):
        return None
    if not ranking.exact and static_shape(ranking.ranked) != mask_shape:
        return None
    scope = _scope(mask_shape, ranking, bindings)
    if scope is None or dtype_of(kept) != dtype_of(ranking.ranked):
        return None
    n, local = scope
    if not 1 <= ranking.k <= n or (local and mask_shape != out_shape):
        return None
    ok, boost = _boost(ranking.ranked, kept, bindings, int(np.prod(out_shape[1:])))
    if not ok:
        return None
    return KwtaMatch(var, kept, ranking.topk.args[0], boost, ranking.k, n, local, ranking.exact)


def pooled_density(density: float, window: int) -> float:
    """Expected density after max-pooling ``window`` values of which ``density`` are non-zero.

    A pooled output is non-zero when any input of its window is (positions assumed independent,
    which k-WTA's global ranking makes close to true): ``1 - (1 - d) ** window``.
    """
    return 1.0 - (1.0 - density) ** window


def producer_of(x: relax.Expr, bindings: dict, relu_layers: set | None = None) -> ActivationInfo:
    """What makes ``x`` sparse, looking back through reshapes and max-pooling."""
    through = []
    windows = []
    expr = x
    while True:
        while isinstance(bindings.get(expr), relax.Var):  # aliases: lv1 = lv0
            expr = bindings[expr]
        value = _value(expr, bindings)
        if value is None:
            return DENSE
        name = op_name(value)
        if name in _TRANSPARENT:
            through.append(name.split(".")[-1])
            if name == "relax.nn.max_pool2d":
                windows.append(int(np.prod([int(p) for p in value.attrs.pool_size])))
            expr = value.args[0]
            continue
        if name == "relax.nn.relu" or (relu_layers and expr in relu_layers):
            return ActivationInfo("relu", through=tuple(reversed(through)))
        match = match_kwta(expr, bindings)
        if match is not None:
            density = match.k / match.n
            for window in reversed(windows):
                density = pooled_density(density, window)
            return ActivationInfo(
                "kwta",
                density=density,
                k=match.k,
                n=match.n,
                boosted=match.boost is not None,
                through=tuple(reversed(through)),
                local=match.local,
            )
        return DENSE


def find_kwta(func: relax.Function, *, exact: bool = False, local: bool = False) -> list[KwtaMatch]:
    """The k-WTA subgraphs of ``func``: by default those of the threshold rule over whole
    samples (what every consumer implements); ``exact`` / ``local`` add those forms for a
    consumer that implements them too (the CPU rewrite does)."""
    bindings = binding_map(func)
    matches = [m for var in bindings if (m := match_kwta(var, bindings)) is not None]
    return [m for m in matches if (exact or not m.exact) and (local or not m.local)]
