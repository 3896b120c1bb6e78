"""Cycles of one stage: its read, compute and write phases at a given number of lanes.

The loops counted are the loops of the stage's engine in ``nnet_sparse.h`` (assumptions 1-6 of
``estimator``); ``max_lanes`` bounds the lanes an engine can use.
"""

from __future__ import annotations

import math

import numpy as np

from .hw_model import HwLayer, HwModel, max_row_nnz, split

PHASE_DEPTH = 20
MAX_LANES = 4096


def _sparse_write(n: int, nnz: float, lanes: int) -> int:
    return max(math.ceil(n / lanes), math.ceil(nnz) + 1)


def _cached(layer: HwLayer, key: str, fn):
    cache = layer.attrs.setdefault("_estimator", {})
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def _row_nnz(layer: HwLayer) -> np.ndarray:
    return _cached(layer, "rows", lambda: np.diff(layer.weights.arrays["ptr"].astype(np.int64)))


def _col_residual(layer: HwLayer) -> np.ndarray:
    return _cached(layer, "res", lambda: np.diff(layer.weights.arrays["rptr"].astype(np.int64)))


def residual_cycles(model: HwModel, layer: HwLayer) -> tuple[int, int, int, float]:
    """A clone or a residual add: one pipelined loop that reads, computes and writes one beat
    per cycle (``nnet::clone_stream`` / ``nnet::residual_add``), ``ceil(n / pack)`` cycles; the
    pack is the stage's stream width (its inputs' and outputs' are the same)."""
    return 0, math.ceil(layer.n_in / model.pack_in(layer)), 0, 0.0


def stage_cycles(model: HwModel, layer: HwLayer, lanes: int) -> tuple[int, int, int, float]:
    """(read, compute, write, MACs) cycles of one stage with ``lanes`` lanes."""
    if layer.op in ("clone", "add"):
        return residual_cycles(model, layer)
    pack_in = model.pack_in(layer)
    n_in, n_out = layer.n_in, layer.n_out
    active_in = layer.in_density * n_in
    par = split(layer, lanes)
    read = math.ceil(n_in / pack_in)
    if layer.out_sparse:
        write = _sparse_write(n_out, layer.out_density * n_out, lanes)
    else:
        write = math.ceil(n_out / layer.pack_out)
    macs = 0.0
    if layer.engine == "dense":
        macs = float(layer.dense_macs)
        outputs = layer.out_shape[0] * layer.out_pixels
        compute = math.ceil(outputs / par.pe) * math.ceil(layer.n_kin / par.simd)
    elif layer.engine == "sparse_dense":
        rows = _row_nnz(layer)
        macs = float(rows.sum() * layer.out_pixels)
        per_row = np.maximum(1, -(-rows // par.simd))
        if layer.op == "conv2d":  # pe pixels of one filter at a time
            compute = int(per_row.sum()) * math.ceil(layer.out_pixels / par.pe)
        else:  # pe rows at a time
            compute = math.ceil(int(per_row.sum()) / par.pe)
    elif layer.engine == "sparse_sparse":
        read = 0  # one active input per iteration of the compute loop
        w = layer.weights
        taps_total = layer.kernel[0] * layer.kernel[1]
        # residual lanes work beside the packed slots: a column costs its longer part
        res_cycles = -(-_col_residual(layer) // par.res_lanes)
        per_tap = float(np.mean(np.maximum(math.ceil(w.n_groups / par.slots), res_cycles)))
        per_active = math.ceil(taps_total / par.taps) * per_tap
        compute = math.ceil(active_in * per_active) + 2 * layer.out_pixels
        valid = layer.out_pixels / (n_in / layer.in_shape[0]) if layer.op == "conv2d" else 1.0
        macs = active_in * (w.nnz / layer.n_kin) * taps_total * min(1.0, valid)
    elif layer.engine == "kwta":
        compute = 6 * math.ceil(n_in / lanes) + 4 * 256
    elif layer.engine == "maxpool":
        if layer.in_sparse:
            read = 0
            compute = math.ceil(active_in) + 2 * math.ceil(n_out / lanes)
        else:
            compute = math.ceil(n_out / lanes)
    else:  # relu
        compute = math.ceil(n_in / lanes)
    return read, compute, write, macs


def max_lanes(layer: HwLayer) -> int:
    if layer.op in ("clone", "add"):
        return 1  # their width is the stream pack, not lanes
    if layer.engine == "dense":
        cap = layer.n_kin * (layer.out_pixels if layer.op == "conv2d" else layer.out_shape[0])
    elif layer.engine == "sparse_dense":
        pe = layer.out_pixels if layer.op == "conv2d" else layer.out_shape[0]
        cap = max_row_nnz(layer) * pe
    elif layer.engine == "sparse_sparse":
        cap = layer.weights.n_groups * layer.kernel[0] * layer.kernel[1]
    else:
        cap = layer.n_in
    return max(1, min(cap, MAX_LANES))
