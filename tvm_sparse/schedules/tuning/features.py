"""What the search's cost model sees of a trial: the layer and its knobs together.

A model fitted on the knob values alone learns one layer at a time from nothing (#16): the best
``m_tile`` of a 64-row batch says nothing to it about a 128-row one. Here every trial is the
layer's shape and sparsity (rows, sizes, non-zeros per row, input density) beside the knobs and
what they imply for the kernel (register tile padding, non-zeros per panel slot, bytes of the
activation panel and of the partial-sum block that should stay in cache). The label is the
trial's time relative to the layer's hand schedule, so one model fits every layer of a family
and carries from one tune to the next.
"""

from __future__ import annotations

import math

import numpy as np

from ...ir.layers import LayerSpec


def _log2(value: float) -> float:
    return math.log2(max(float(value), 1e-9))


def layer_features(layer: LayerSpec) -> dict[str, float]:
    """The layer as the cost model sees it (JSON-able: stored with its records)."""
    weight = layer.weight
    rows = int(np.prod(layer.x_shape[:-1])) if layer.kind == "linear" else layer.rows
    n, k = weight.shape[0], int(np.prod(weight.shape[1:]))
    nnz = int(np.count_nonzero(weight))
    density = nnz / max(n * k, 1)
    return {
        "layer.log2_rows": _log2(rows),
        "layer.log2_n": _log2(n),
        "layer.log2_k": _log2(k),
        "layer.density": density,
        "layer.log2_nnz_per_row": _log2(max(nnz / max(n, 1), 1e-3)),
        "layer.input_density": 1.0 if layer.input_density is None else layer.input_density,
        "layer.conv": float(layer.kind != "linear"),
    }


def _flat_knobs(knobs: dict, prefix: str = "knob.") -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in knobs.items():
        if isinstance(value, dict):
            flat.update(_flat_knobs(value, f"{prefix}{name}."))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                flat[f"{prefix}{name}.{i}"] = float(v)
        else:
            flat[f"{prefix}{name}"] = -1.0 if value is None else float(value)
    return flat


def _panel_features(layer: dict[str, float], knobs: dict) -> dict[str, float]:
    """What the batched panel kernel's knobs imply (``sparse_panel_x86``'s defaults for None)."""
    rows = 2 ** layer["layer.log2_rows"]
    tile = min(knobs.get("m_tile") or 64, math.ceil(rows / 8) * 8)
    cols = knobs.get("panel_cols") or max(1, 8192 // tile)
    n = 2 ** layer["layer.log2_n"]
    row_block = min(knobs.get("row_block") or 512, n)
    tiles = math.ceil(rows / tile)
    return {
        "derived.tile_waste": tiles * tile / rows - 1.0,
        "derived.log2_tiles": _log2(tiles),
        "derived.nnz_per_slot": layer["layer.density"] * cols,
        "derived.log2_panel_kib": _log2(cols * tile * 4 / 1024),
        "derived.log2_rowblock_kib": _log2(row_block * tile * 4 / 1024),
        "derived.row_kernel": float(knobs.get("min_batch", 0) > rows),
    }


def trial_features(layer: dict[str, float], knobs: dict) -> dict[str, float]:
    """One trial's features: the layer's, the knobs' (flattened; None reads -1) and, for the
    panel knobs, what they imply."""
    out = dict(layer)
    out.update(_flat_knobs(knobs))
    if "m_tile" in knobs or "panel_cols" in knobs or "min_batch" in knobs:
        out.update(_panel_features(layer, knobs))
    return out


def feature_matrix(rows: list[dict[str, float]], names: list[str]) -> np.ndarray:
    """Rows of features as a matrix over ``names`` (a missing feature reads -2)."""
    return np.array([[r.get(n, -2.0) for n in names] for r in rows], dtype=np.float64)
