"""Number formats: every layer's C types for the target's precision.

Float keeps ``float`` everywhere; ``ap_fixed<W,I>`` is one format for data and weights with a
wider accumulator; int8 is ``ap_fixed<8,I>`` per tensor, I from the tensor's range (measured by
``calibration`` when samples are given), accumulated exactly.
"""

from __future__ import annotations

import math

import numpy as np

from .hw_model import HwLayer, HwModel


def _int_bits(max_abs: float) -> int:
    """Integer bits (sign included) that hold +-max_abs."""
    return max(-4, int(math.floor(math.log2(max_abs))) + 2) if max_abs > 0 else 1


def _fixed(width: int, integer: int) -> str:
    return f"ap_fixed<{width},{integer},AP_RND,AP_SAT>"


def assign_types(model: HwModel, ranges: dict[str, float] | None = None) -> None:
    """Set every layer's C types from the precision (int8 uses ``ranges``: max |output|)."""
    prec = model.precision
    if prec.is_float:
        return
    ranges = ranges or {}
    if prec.kind == "fixed":
        data = _fixed(prec.width, prec.integer)
        acc = _fixed(min(2 * prec.width + 8, 56), 2 * prec.integer + 8)
        model.input_t = data
        for layer in model.layers:
            layer.in_t = layer.out_t = layer.weight_t = data
            layer.bias_t = layer.accum_t = acc
        return
    # int8: ap_fixed<8, I> per tensor; accumulate exactly (products have Fw + Fx fraction bits)
    in_i = _int_bits(ranges.get("input", 4.0))
    model.input_t = _fixed(8, in_i)
    formats: dict[int, tuple[str, int]] = {-1: (model.input_t, in_i)}  # stage -> (out_t, I)
    for layer in model.layers:
        cur_t, cur_i = formats[model.sources(layer)[0][0]]
        layer.in_t = cur_t
        if layer.weighted:
            wmax = float(np.max(np.abs(_weight_values(layer)), initial=0.0))
            w_i = _int_bits(wmax)
            out_i = _int_bits(ranges.get(layer.name, 8.0))
            frac = (8 - w_i) + (8 - cur_i)
            acc_i = max(w_i + cur_i + 8, out_i + 2)
            layer.weight_t = _fixed(8, w_i)
            layer.accum_t = layer.bias_t = _fixed(min(frac + acc_i, 56), acc_i)
            layer.out_t = _fixed(8, out_i)
            cur_t, cur_i = layer.out_t, out_i
        elif layer.op == "add":
            _add_sum_format(layer, [formats[i][1] for i, _ in model.sources(layer)])
            cur_i = _int_bits(ranges.get(layer.name, 8.0))
            layer.out_t = cur_t = _fixed(8, cur_i)
        else:
            layer.out_t = cur_t
        formats[layer.index] = (cur_t, cur_i)
    model.calibrated = bool(ranges)


def _add_sum_format(layer: HwLayer, in_bits: list[int]) -> None:
    """A residual add's int8 sum format: exact for both inputs (the wider integer part plus a
    carry, the finer fraction); its output is then rounded to its own calibrated format."""
    integer = max(in_bits) + 1
    layer.accum_t = _fixed(integer + max(8 - i for i in in_bits), integer)


def _weight_values(layer: HwLayer) -> np.ndarray:
    w = layer.weights
    if w is None:
        return np.zeros(1)
    keys = {"dense": ("w",), "csr": ("val",), "packed": ("val", "rval")}[w.fmt]
    return np.concatenate([w.arrays[k] for k in keys])
