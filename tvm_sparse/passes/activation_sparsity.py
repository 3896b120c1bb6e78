"""Detect what makes a layer's input sparse: k-WTA (as PyTorch exports it) or ReLU.

A PyTorch export of nupic.torch's KWinners writes, per sample over C*H*W:
``TopK(x') -> values[:, k-1] -> GreaterOrEqual(x', thr) -> Where(mask, x, 0)`` where ``x'`` is ``x``
or the boosted ``x * boost`` (ranking on boosted values, keeping the unboosted ones). A variant
multiplies by the mask cast to float instead of ``Where``. After TVM's import that is
``topk -> [0] -> take/strided_slice -> expand_dims/reshape -> greater_equal -> where``. Ties: every
value >= the k-th wins, exactly what ``greater_equal`` computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from ..ir.relax_utils import binding_map, const_array, op_name, static_shape

# Ops that keep a sparse activation sparse (zeros stay zeros, positions move): walked through.
_TRANSPARENT = (
    "relax.reshape",
    "relax.flatten",
    "relax.permute_dims",
    "relax.expand_dims",
    "relax.squeeze",
    "relax.nn.max_pool2d",
)
# Ops between TopK's values and the threshold comparison.
_THRESHOLD_PLUMBING = (
    "relax.take",
    "relax.strided_slice",
    "relax.expand_dims",
    "relax.reshape",
    "relax.squeeze",
    "relax.broadcast_to",
)


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

    def describe(self) -> str:
        if self.kind == "kwta":
            boost = ", boosted" if self.boosted else ""
            pooled = ", after max_pool2d" if "max_pool2d" in self.through else ""
            return f"k-WTA k={self.k}/{self.n} ({self.density:.1%}{pooled}{boost})"
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
        }


DENSE = ActivationInfo("dense")


@dataclass(frozen=True)
class KwtaMatch:
    """A k-WTA subgraph: ``out = where(x' >= kth(topk(x')), x, 0)``."""

    out_var: relax.Var  # the where/multiply result
    x: relax.Expr  # the unboosted values that are kept ([B, n])
    ranked: relax.Expr  # what TopK ranks (x or x * boost)
    boost: np.ndarray | None  # per-sample boost factors [n] when TopK ranks x * boost
    k: int
    n: int


def _strip(expr: relax.Expr, bindings: dict, ops: tuple[str, ...]) -> relax.Expr:
    """Follow var bindings through ``ops`` back to the first other expression."""
    while True:
        value = bindings.get(expr) if isinstance(expr, relax.Var) else None
        if value is not None and op_name(value) in ops:
            expr = value.args[0]
        elif (
            value is not None and not isinstance(value, relax.Call) and isinstance(value, relax.Var)
        ):
            expr = value
        else:
            return expr


def _value(expr: relax.Expr, bindings: dict) -> relax.Expr | None:
    return bindings.get(expr) if isinstance(expr, relax.Var) else None


def match_kwta(var: relax.Var, bindings: dict) -> KwtaMatch | None:
    """Match the k-WTA export pattern whose result is ``var``."""
    value = _value(var, bindings)
    name = op_name(value)
    if name == "relax.where":
        cond, kept, other = value.args
        zero = const_array(other)  # a scalar 0, or zeros_like(x) as torch.where exports it
        if zero is None or not np.all(zero == 0):
            return None
        compare = _value(cond, bindings)
    elif name == "relax.multiply":
        a, b = value.args
        casts = [(k, _value(m, bindings)) for k, m in ((a, b), (b, a))]
        casts = [(k, c) for k, c in casts if op_name(c) == "relax.astype"]
        if not casts:
            return None
        kept, cast = casts[0]
        compare = _value(cast.args[0], bindings)
    else:
        return None
    if op_name(compare) != "relax.greater_equal":
        return None
    ranked, threshold = compare.args
    source = _strip(threshold, bindings, _THRESHOLD_PLUMBING)
    item = _value(source, bindings)
    if not isinstance(item, relax.TupleGetItem) or item.index != 0:
        return None
    topk = _value(item.tuple_value, bindings)
    if op_name(topk) != "relax.topk" or not bool(topk.attrs.largest):
        return None
    if not topk.args[0].same_as(ranked):
        return None
    shape = static_shape(ranked)
    if shape is None or int(topk.attrs.axis) not in (-1, len(shape) - 1):
        return None
    boost = None
    ranked_base = _strip(ranked, bindings, ("relax.reshape",))
    kept_base = _strip(kept, bindings, ("relax.reshape",))
    if not ranked_base.same_as(kept_base):
        # boosting: TopK ranks reshape(y * boost) while Where keeps reshape(y)
        scaled = _value(ranked_base, bindings)
        if op_name(scaled) != "relax.multiply":
            return None
        a, b = (_strip(arg, bindings, ("relax.reshape",)) for arg in scaled.args)
        if a.same_as(kept_base):
            boost = const_array(b)
        elif b.same_as(kept_base):
            boost = const_array(a)
        base_shape = static_shape(kept_base)
        if boost is None or base_shape is None:
            return None
        try:  # the per-sample boost factor in the flattened [n] order the kernel sees
            boost = np.broadcast_to(boost, base_shape)[0].reshape(-1)
        except ValueError:
            return None
        if boost.size != int(shape[-1]):
            return None
    return KwtaMatch(var, kept, ranked, boost, int(topk.attrs.k), int(shape[-1]))


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
            )
        return DENSE


def find_kwta(func: relax.Function) -> list[KwtaMatch]:
    """Every k-WTA subgraph of ``func``."""
    bindings = binding_map(func)
    return [m for var in bindings if (m := match_kwta(var, bindings)) is not None]
