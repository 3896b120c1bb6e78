"""Folding: the lanes of every stage and the width of every dense stream (assumption 11 of
``estimator``), FINN's SetFolding with the copies-per-device search on top."""

from __future__ import annotations

import math

import numpy as np

from .cycles import max_lanes, stage_total
from .estimator import Estimate, estimate
from .hw_model import HwLayer, HwModel


def _pack_for(n: int, budget: int) -> int:
    """The smallest divisor of ``n`` that moves n values in at most ``budget`` beats."""
    need = max(1, math.ceil(n / max(budget, 1)))
    for d in range(need, n + 1):
        if n % d == 0:
            return d
    return n


def _lane_candidates(layer: HwLayer) -> list[int]:
    cap = max_lanes(layer)
    if layer.engine == "sparse_sparse":
        g = layer.weights.n_groups
        taps_total = layer.kernel[0] * layer.kernel[1]
        cands = [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if c < g]
        cands += [g * t for t in range(1, taps_total + 1)]
    else:
        cands = [2**i for i in range(13) if 2**i < cap] + [cap]
        cands += [3 * 2**i for i in range(12) if 3 * 2**i < cap]
    return sorted({c for c in cands if 1 <= c <= cap})


def fold(model: HwModel, target_cycles: int) -> None:
    """Give every stage (not fixed by the user) the fewest lanes that meet ``target_cycles``."""
    budget = max(1, target_cycles // 4)
    model.input_pack = _pack_for(int(np.prod(model.input_shape)), budget)
    for layer in model.layers:
        layer.pack_out = 1 if layer.out_sparse else _pack_for(layer.n_out, budget)
    for layer in model.layers:
        if layer.lanes_fixed:
            continue
        costs = []
        for lanes in _lane_candidates(layer):
            costs.append((stage_total(model, layer, lanes), lanes))
            if costs[-1][0] <= target_cycles:
                break
        if costs[-1][0] <= target_cycles:
            layer.lanes = costs[-1][1]
        else:  # cannot meet the target: the fewest lanes within 5% of the best it can do
            best = min(c for c, _ in costs)
            layer.lanes = min(lanes for c, lanes in costs if c <= 1.05 * best)


def auto_fold(model: HwModel) -> Estimate:
    """Search the target II for the most samples/s per device; leave ``model`` folded so."""
    best: tuple[float, float, int] | None = None
    grid = sorted({int(2 ** (e / 2)) for e in range(16, 50)})
    for target in grid:
        fold(model, target)
        est = estimate(model)
        key = (est.samples_per_s, -sum(est.per_copy.values()), target)
        if best is None or key[:2] > best[:2]:
            best = key
    fold(model, best[2])
    return estimate(model)
