"""Folding: the lanes of every stage and the width of every dense stream (assumption 11 of
``estimator``), FINN's SetFolding with the copies-per-device search on top."""

from __future__ import annotations

import math

import numpy as np

from .cycles import max_lanes, stage_total
from .estimator import Estimate, estimate
from .hw_model import HwLayer, HwModel
from .resources import DEFAULT_PRICES


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


def ii_floor(model: HwModel) -> int:
    """The shortest II any folding reaches: the slowest stage at its best lanes (leaves the
    streams at their widest)."""
    fold(model, 1)  # widest streams
    return max(
        stage_total(model, layer, layer.lanes)
        if layer.lanes_fixed
        else min(stage_total(model, layer, lanes) for lanes in _lane_candidates(layer))
        for layer in model.layers
    )


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


# how much dearer the scarce resource is made when memories choose their primitive
PRICE_STEPS = (1.0, 4.0)


def _price_options() -> list[dict[str, float] | None]:
    """Memory prices to try: by supply, then each of LUT, BRAM36, URAM made dearer."""
    options: list[dict[str, float] | None] = [None]
    for scarce in ("lut", "bram36", "uram"):
        for step in PRICE_STEPS[1:]:
            options.append(
                {k: v * (step if k == scarce else 1.0) for k, v in DEFAULT_PRICES.items()}
            )
    return options


def ceiling(model: HwModel) -> tuple[int, int, float]:
    """(II floor, copies of the one-lane design, their product in samples/s): a bound no
    folding passes, since more lanes only add resources and fewer never shorten the II.
    Leaves ``model`` at one lane per stage (not fixed by the user)."""
    floor = ii_floor(model)
    fold(model, 10**12)
    copies = estimate(model).copies
    return floor, copies, copies * model.target.clock_mhz * 1e6 / floor


def auto_fold(model: HwModel) -> Estimate:
    """Search the target II (lanes against copies) and the memory placement for the most
    samples/s per device; leave ``model`` folded and placed so."""
    best: tuple[float, float, int, int] | None = None
    floor = ii_floor(model)  # below it more lanes elsewhere buy nothing
    grid = sorted({max(floor, int(2 ** (e / 4))) for e in range(32, 100)})
    prices = _price_options()
    for target in grid:
        fold(model, target)
        for i, option in enumerate(prices):
            model.memory_prices = option
            est = estimate(model)
            key = (est.samples_per_s, -sum(est.per_copy.values()), target, i)
            if best is None or key[:2] > best[:2]:
                best = key
    fold(model, best[2])
    model.memory_prices = prices[best[3]]
    return estimate(model)
