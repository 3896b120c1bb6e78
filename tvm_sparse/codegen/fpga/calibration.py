"""A numpy executor of the hardware model, and the calibration it serves.

``forward`` runs samples through the stages in float32 (weights rebuilt from their stores);
``calibrate`` measures per-layer output ranges (int8 formats) and activation densities (the
estimate) on them.
"""

from __future__ import annotations

import copy

import numpy as np

from ...ir.layers import CONV2D
from .hw_model import HwLayer, HwModel
from .number_formats import assign_types, int8_width, optimal_range
from .weight_stores import dense_weight

ACTIVITY_SAMPLES = 256  # output masks kept per sparse edge (sparse write loop counts)


def _conv_forward(layer: HwLayer, x: np.ndarray, w2: np.ndarray) -> np.ndarray:
    c, h, w = layer.in_shape
    o, oh, ow = layer.out_shape
    kh, kw = layer.kernel
    sh, sw = layer.attrs["stride"]
    dh, dw = layer.attrs["dilation"]
    ph, pw = layer.attrs["pad"]
    hp, wp = layer.attrs["padded"]
    xp = np.zeros((x.shape[0], c, hp, wp), np.float32)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    cols = np.empty((x.shape[0], c, kh, kw, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[
                :, :, i * dh : i * dh + sh * oh : sh, j * dw : j * dw + sw * ow : sw
            ][:, :, :oh, :ow]
    y = np.einsum("ok,bkp->bop", w2, cols.reshape(x.shape[0], c * kh * kw, oh * ow))
    return y.reshape(x.shape[0], o, oh, ow)


def forward(model: HwModel, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``x`` [S, *input_shape] through the stages (a DAG, in its topological order) in
    float32; (output, every stage's output)."""
    acts: dict[str, np.ndarray] = {}
    outs = {-1: np.asarray(x, np.float32).reshape(x.shape[0], *model.input_shape)}
    y = outs[-1]
    for layer in model.layers:
        ins = [outs[i] for i, _ in model.sources(layer)]
        y = ins[0].reshape(ins[0].shape[0], *layer.in_shape)
        if layer.weighted:
            w2 = dense_weight(layer)
            if layer.op == CONV2D:
                y = _conv_forward(layer, y, w2)
            else:
                y = y @ w2.T
            shape = (1, -1, 1, 1) if layer.op == CONV2D else (1, -1)
            y = (y + layer.bias.reshape(shape)).astype(np.float32)
            if layer.relu:
                y = np.maximum(y, 0)
        elif layer.op == "kwta":
            flat = y.reshape(y.shape[0], -1)
            ranked = flat
            if layer.boost is not None:
                b = layer.boost
                if b.size != flat.shape[1]:
                    b = np.repeat(b, flat.shape[1] // b.size)
                ranked = flat * b
            k = layer.attrs["k"]
            if layer.attrs.get("exact"):  # exactly k, ties to the lower index (TopK's order)
                won = np.zeros(ranked.shape, bool)
                order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
                np.put_along_axis(won, order, True, axis=1)
            else:
                won = ranked >= -np.partition(-ranked, k - 1, axis=1)[:, k - 1 : k]
            y = np.where(won, flat, 0).astype(np.float32)
        elif layer.op == "softmax":
            shifted = y - y.max(axis=1, keepdims=True)
            total = np.exp(shifted).sum(axis=1, keepdims=True)
            y = shifted - np.log(total) if layer.attrs["log"] else np.exp(shifted) / total
            y = y.astype(np.float32)
        elif layer.op == "maxpool2d":
            y = _maxpool(layer, y)
        elif layer.op == "relu":
            y = np.maximum(y, 0)
        elif layer.op == "add":
            y = (y + ins[1].reshape(y.shape)).astype(np.float32)
            if layer.relu:
                y = np.maximum(y, 0)
        y = y.reshape(y.shape[0], *layer.out_shape)  # a clone passes its input on
        outs[layer.index] = acts[layer.name] = y
    return y.reshape(y.shape[0], -1), acts


def forward_with_noise(model: HwModel, x: np.ndarray, db: float, after: int = 0) -> np.ndarray:
    """The float network's output with gaussian noise of ``db`` SQNR (seeded) added to the
    output of layer ``after``: what a datapath whose only error is that noise would give, the
    bound a quantized build is measured against."""
    _, acts = forward(model, x)
    a = acts[model.layers[after].name]
    noise = np.random.default_rng(0).standard_normal(a.shape) * np.sqrt(np.mean(a**2))
    shift = after + 1
    layers = []
    for layer in model.layers[shift:]:  # layer ``after``'s output becomes the input (-1)
        moved = copy.copy(layer)
        moved.index = layer.index - shift
        moved.inputs = [(i - shift, port) for i, port in model.sources(layer)]
        layers.append(moved)
    rest = HwModel(
        model.name, model.variant, model.target, layers, a.shape[1:], model.output_shape, 1
    )
    return forward(rest, (a + noise * 10 ** (-db / 20)).astype(np.float32))[0]


def _maxpool(layer: HwLayer, x: np.ndarray) -> np.ndarray:
    (ph, pw), (sh, sw) = layer.attrs["pool"], layer.attrs["stride"]
    _, oh, ow = layer.out_shape
    out = np.full((x.shape[0], layer.out_shape[0], oh, ow), -np.inf, np.float32)
    for i in range(ph):
        for j in range(pw):
            out = np.maximum(out, x[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw])
    return out


def calibrate(model: HwModel, x: np.ndarray) -> None:
    """Measure per-layer output ranges and input densities on samples ``x``.

    Densities (and ``HwLayer.activity``: which positions are active, for the loops whose trip
    counts depend on it) replace the analytical ones (k/n, pooled k/n, 0.5 for ReLU) in the
    estimate; ranges give int8 its per-tensor formats: the power-of-two range of least squared
    error on ``x`` (``optimal_range``), not the max, which one outlier would double.
    """
    _, acts = forward(model, x)
    int8 = model.precision.kind == "int8"
    ranges = {"input": optimal_range(x)} if int8 else {}
    for layer in model.layers:
        a = acts[layer.name]
        if int8:
            ranges[layer.name] = optimal_range(a, int8_width(model, layer))
        mask = a.reshape(a.shape[0], -1) != 0
        layer.activity = {}
        if layer.in_sparse:
            prev = model.producers(layer)[0]
            seen = (x if prev is None else acts[prev.name]).reshape(x.shape[0], -1) != 0
            layer.in_density = float(seen.mean())
            layer.activity["in_freq"] = seen.mean(axis=0)
        if layer.out_sparse:
            layer.out_density = float(mask.mean())
            layer.activity["out_masks"] = mask[:ACTIVITY_SAMPLES]
    if not model.precision.is_float:
        assign_types(model, ranges)
    model.calibrated = True
