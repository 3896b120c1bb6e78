"""Measured decisions of one compile, reused for layers like an earlier one.

ResNet-50 has 54 layers of ~20 kinds: its blocks repeat the same shapes with other weights. A layer
with the same shapes, epilogue, input density and candidates as an earlier one, and weights alike
in what sparse kernels' speed depends on (``weight_stats``), takes the earlier layer's measured
decision instead of being timed again. The memo lives for one ``reuse_timings()`` block (the
sparsify pass opens one per compile); outside one, nothing is remembered.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import tvm

from ..context import bound
from ..ir.layers import LayerSpec


@dataclass(frozen=True)
class Decision:
    """A measured choice, as a later layer like this one may take it."""

    signature: tuple
    stats: tuple[float, ...]
    layer_name: str
    chosen: str
    reason: str
    measured_ms: dict


_DECISIONS: ContextVar[list[Decision] | None] = ContextVar("tvm_sparse_decisions", default=None)


def reuse_timings() -> AbstractContextManager[list[Decision]]:
    """Within: measured decisions are remembered and reused (see the module doc)."""
    return bound(_DECISIONS, [])


def signature(layer: LayerSpec, target: tvm.target.Target, names: list[str]) -> tuple:
    """What must be equal for two layers' timings to be interchangeable, weights aside."""
    density = layer.input_density
    return (
        layer.kind,
        tuple(layer.x_shape),
        tuple(layer.weight.shape),
        tuple(layer.out_shape),
        repr(sorted(layer.conv_attrs.items())),
        layer.bias is not None,
        layer.activation,
        None if density is None else round(density, 3),
        str(target),
        tuple(names),
    )


def weight_stats(layer: LayerSpec) -> tuple[float, float, float, float]:
    """What sparse kernels' speed depends on besides shapes: density, the spread of non-zeros
    over output rows (coefficient of variation: load balance), empty rows, empty input columns."""
    nz = layer.weight_2d != 0
    rows = nz.sum(axis=1)
    mean = float(rows.mean()) if rows.size else 0.0
    cv = float(rows.std()) / mean if mean else 0.0
    return (float(nz.mean()), cv, float(np.mean(rows == 0)), float(np.mean(nz.sum(axis=0) == 0)))


def stats_close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Density within 2% (relative), row spread within 0.05, empty rows/columns within 2%
    (ResNet-50 90%'s repeated blocks: equal densities, row spreads within 0.03)."""
    return (
        abs(a[0] - b[0]) <= 0.02 * max(a[0], b[0]) + 1e-4
        and abs(a[1] - b[1]) <= 0.05
        and abs(a[2] - b[2]) <= 0.02
        and abs(a[3] - b[3]) <= 0.02
    )


def find(layer: LayerSpec, target: tvm.target.Target, names: list[str]) -> Decision | None:
    """The remembered decision of an earlier layer like ``layer`` measured with the same
    candidates ``names``; None outside ``reuse_timings`` or when there is none."""
    decisions = _DECISIONS.get()
    if not decisions:
        return None
    sig, stats = signature(layer, target, names), weight_stats(layer)
    return next((d for d in decisions if d.signature == sig and stats_close(d.stats, stats)), None)


def remember(layer: LayerSpec, target: tvm.target.Target, names: list[str], chosen: str,
             reason: str, measured_ms: dict) -> None:  # fmt: skip
    """Keep a measured decision for the layers after ``layer`` (inside ``reuse_timings``)."""
    decisions = _DECISIONS.get()
    if decisions is not None:
        decisions.append(Decision(signature(layer, target, names), weight_stats(layer),
                                  layer.name, chosen, reason, dict(measured_ms)))  # fmt: skip
