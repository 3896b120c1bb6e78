"""Number formats: every layer's C types for the target's precision.

Float keeps ``float`` everywhere; ``ap_fixed<W,I>`` is one format for data and weights with a
wider accumulator. int8 is what hls4ml / FINN-style int8 accelerators do:

* activations are ``ap_fixed<8,I>`` per tensor, I chosen on calibration data as the power-of-two
  range with the least squared error (``optimal_range``: saturating a thin tail can beat
  halving the resolution of every other value);
* weights are integers in [-127, 127] (``int8_t``) with one scale per output channel
  (``scale[o] = max |w[o]| / 127``, an 18-bit ``scale_t``: one DSP48E2 port), so a channel of
  small weights keeps its 8 bits instead of sharing a power-of-two range with the largest one;
* the accumulator is exact (products have the input's fraction bits; the integer bits bound
  the largest sum the stored weights and the input range can make), the bias is stored in the
  accumulator's units (b / scale), and the output is requantized by ``acc * scale[o]``;
* k-WTA ranks the int8 values themselves, or x * boost as an exact fixed-point product with
  the boost in 16 bits (``rank_t``): the order of the quantized values, without a float unit;
* the network's output (a few logits) leaves in 16 bits.

What int8 keeps is measured by ``benchmarks/bench_fpga_int8.py`` (C simulation against the
CPU module): a ReLU network keeps its logits to ~30 dB, a k-WTA network much less, because a
k-WTA turns any change of a value near its threshold into a different winner.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .hw_model import HwLayer, HwModel
from .weight_stores import dense_weight

SCALE_BITS = 18  # the requantization multiplier: one 18-bit DSP48E2 operand
BOOST_BITS = 16
INT8_MAX = 127  # symmetric: -128 is never used, so -w quantizes like w
ACCUM_MAX_BITS = 44  # + the 18-bit scale: the requantizing product stays within 62 bits
OUTPUT_BITS = 16  # the network's output (logits: a few values) leaves in 16 bits


def _int_bits(max_abs: float) -> int:
    """Integer bits (sign included) that hold +-max_abs."""
    return max(-4, int(math.floor(math.log2(max_abs))) + 2) if max_abs > 0 else 1


def _fixed(width: int, integer: int) -> str:
    return f"ap_fixed<{width},{integer},AP_RND,AP_SAT>"


def fixed_format(c_type: str) -> tuple[int, int] | None:
    """``(W, I)`` of an ``ap_fixed<W,I,...>`` C type; None for anything else (float)."""
    fmt = re.fullmatch(r"ap_fixed<(\d+),(-?\d+)(,.*)?>", c_type.replace(" ", ""))
    return (int(fmt.group(1)), int(fmt.group(2))) if fmt else None


def quantize(values: np.ndarray, width: int, integer: int) -> np.ndarray:
    """``values`` as ``ap_fixed<width, integer, AP_RND, AP_SAT>`` holds them (float64).

    AP_RND rounds half up (towards +inf), AP_SAT clips to the format's range.
    """
    frac = width - integer
    raw = np.floor(np.asarray(values, np.float64) * 2.0**frac + 0.5)
    raw = np.clip(raw, -(2.0 ** (width - 1)), 2.0 ** (width - 1) - 1)
    return raw * 2.0**-frac


def optimal_range(values: np.ndarray, width: int = 8, candidates: int = 4) -> float:
    """The max |value| to give ``_int_bits``: of the ``candidates`` power-of-two ranges at and
    below the one that holds every value, the one with the least squared quantization error.

    Returned as the largest value the chosen format holds, so ``_int_bits`` maps it back to it.
    """
    flat = np.asarray(values, np.float64).ravel()
    flat = flat[flat != 0]  # zeros (most of a k-WTA output) quantize exactly
    if flat.size == 0:
        return 0.0
    top = _int_bits(float(np.max(np.abs(flat))))
    best, best_err = top, math.inf
    for integer in range(top, top - candidates, -1):
        err = float(np.sum((quantize(flat, width, integer) - flat) ** 2))
        if err < best_err:
            best, best_err = integer, err
    return 2.0 ** (best - 1) - 2.0 ** -(width - best)


def assign_types(model: HwModel, ranges: dict[str, float] | None = None) -> None:
    """Set every layer's C types from the precision (int8 uses ``ranges``: the max |value| each
    tensor's format must hold, ``"input"`` for the input; measured by ``calibration``)."""
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
            if layer.op == "softmax":  # computed in float, and left so
                layer.out_t = "float"
        return
    in_i = _int_bits(ranges.get("input", 4.0))
    model.input_t = _fixed(8, in_i)
    formats: dict[int, tuple[str, int]] = {-1: (model.input_t, in_i)}  # stage -> (out_t, I)
    for layer in model.layers:
        cur_t, cur_i = formats[model.sources(layer)[0][0]]
        layer.in_t = cur_t
        if layer.weighted:
            out_i = _int_bits(ranges.get(layer.name, 8.0))
            _int8_weighted(layer, cur_i)
            layer.out_t = _fixed(int8_width(model, layer), out_i)
            cur_t, cur_i = layer.out_t, out_i
        elif layer.op == "add":
            _add_sum_format(layer, [formats[i][1] for i, _ in model.sources(layer)])
            cur_i = _int_bits(ranges.get(layer.name, 8.0))
            layer.out_t = cur_t = _fixed(int8_width(model, layer), cur_i)
        elif layer.op == "softmax":  # computed in float, and left so
            layer.out_t = cur_t = "float"
        else:
            layer.out_t = cur_t
            if layer.op == "kwta":
                _int8_rank(layer, cur_i)
        formats[layer.index] = (cur_t, cur_i)
    model.calibrated = bool(ranges)


def _add_sum_format(layer: HwLayer, in_bits: list[int]) -> None:
    """A residual add's int8 sum format: exact for both inputs (the wider integer part plus a
    carry, the finer fraction); its output is then rounded to its own calibrated format."""
    integer = max(in_bits) + 1
    layer.accum_t = _fixed(integer + max(8 - i for i in in_bits), integer)


def int8_width(model: HwModel, layer: HwLayer) -> int:
    """Bits of an int8 build's tensor: 8, but the network's output (its last layer, or the
    logits a final softmax reads) has 16."""
    last = model.layers[-1]
    if last.op == "softmax" and len(model.layers) > 1:  # the logits feed a final softmax
        last = model.producers(last)[0]
    return OUTPUT_BITS if layer is last else 8


def channel_scales(w2: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-output-channel scales of an [O, K] weight as ``scale_t`` holds them, and the scale's
    integer bits. An all-zero channel gets the largest scale (its weights stay 0)."""
    peak = np.max(np.abs(w2), axis=1, initial=0.0).astype(np.float64) / INT8_MAX
    top = float(peak.max(initial=0.0)) or 1.0
    integer = _int_bits(top)
    scale = quantize(np.where(peak > 0, peak, top), SCALE_BITS, integer)
    # a scale far below the largest one rounds to 0 at 18 bits: give it the smallest step
    scale = np.maximum(scale, 2.0 ** -(SCALE_BITS - integer))
    return scale, integer


def _int8_weighted(layer: HwLayer, in_i: int) -> None:
    """Integer weights, per-channel scales, exact accumulator and bias for an int8 layer."""
    w2 = dense_weight(layer).astype(np.float64)
    scale, scale_i = channel_scales(w2)
    q = integer_weights(w2, scale)
    bias = np.asarray(layer.bias, np.float64) / scale
    # |acc| <= sum |q| * max |x| + |b / scale|: the integer bits that can never overflow
    bound = float(np.max(np.abs(q).sum(axis=1) * 2.0 ** (in_i - 1) + np.abs(bias), initial=1.0))
    acc_i = _int_bits(bound)
    # integer weights: the products have the input's fraction bits, kept unless the sum would
    # pass ACCUM_MAX_BITS (then acc * scale would outgrow 64-bit words in C simulation)
    frac = min(8 - in_i, ACCUM_MAX_BITS - acc_i)
    layer.weight_scale = scale
    layer.scale_t = _fixed(SCALE_BITS, scale_i)
    layer.weight_t = "int8_t"  # a plain C array: g++ constant-initializes it, HLS makes a ROM
    layer.accum_t = layer.bias_t = _fixed(frac + acc_i, acc_i)


def integer_weights(w2: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(w / scale[o]) in [-127, 127], as float64 integers."""
    return _round_int8(w2, scale[:, None])


def _round_int8(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(values / scale) in [-127, 127] (float64): the one rounding of int8 weights."""
    return np.clip(np.rint(np.asarray(values, np.float64) / scale), -INT8_MAX, INT8_MAX)


def _int8_rank(layer: HwLayer, in_i: int) -> None:
    """k-WTA on int8 values: the rank is x itself, or x * boost exact in fixed point."""
    boost = layer.boost if layer.boost is not None else np.ones(1)  # unboosted: never read
    boost_i = _int_bits(float(np.max(np.abs(boost), initial=1.0)))
    layer.boost_t = _fixed(BOOST_BITS, boost_i)
    layer.rank_t = layer.in_t if layer.boost is None else _fixed(8 + BOOST_BITS, in_i + boost_i)


def boost_store_t(layer: HwLayer) -> str:
    """The C element type of a k-WTA's boost table: ``float``, or ``int32_t`` raw words of a
    fixed-point ``boost_t`` (see ``boost_table``)."""
    return "float" if fixed_format(layer.boost_t) is None else "int32_t"


def boost_table(layer: HwLayer) -> np.ndarray:
    """A k-WTA's boost table as written, in ``boost_store_t``.

    A float table holds the factors. A fixed-point table holds each factor's raw word
    (``round(boost * 2^F)`` as ``ap_fixed`` rounds and saturates it) in ``int32_t``, and the
    engine sets the word: g++ constant-initializes an integer array, while an ``ap_fixed``
    initializer is a constructor call per entry (50K entries took g++ over ten minutes).
    """
    boost = layer.boost if layer.boost is not None else np.ones(1, np.float32)
    boost = np.asarray(boost, np.float32)
    fmt = fixed_format(layer.boost_t)
    if fmt is None:
        return boost
    width, integer = fmt
    raw = quantize(boost.astype(np.float64), width, integer) * 2.0 ** (width - integer)
    return raw.astype(np.int64)


def weight_value_arrays(layer: HwLayer) -> dict[str, np.ndarray]:
    """The layer's store arrays as written: int8 layers' weight values replaced by the integers
    round(w / scale[o]) (each value divided by its own output channel's scale)."""
    w = layer.weights
    if layer.weight_scale is None:
        return dict(w.arrays)
    o = layer.out_shape[0]
    scale = np.append(layer.weight_scale, 1.0)  # index o: the packing's empty slots (value 0)
    arrays = dict(w.arrays)
    if w.fmt == "dense":
        rows = np.repeat(np.arange(o), layer.n_kin)
        arrays["w"] = _ints(w.arrays["w"], scale[rows])
    elif w.fmt == "csr":
        ptr = w.arrays["ptr"].astype(np.int64)
        rows = np.zeros(w.arrays["val"].size, np.int64)  # padding (past ptr[-1]) is one 0
        rows[: ptr[-1]] = np.repeat(np.arange(o), np.diff(ptr))
        arrays["val"] = _ints(w.arrays["val"], scale[rows])
    else:
        owner = w.arrays["owner"].astype(np.int64)
        arrays["val"] = _ints(w.arrays["val"], scale[owner])
        ridx = np.minimum(w.arrays["ridx"].astype(np.int64), o)
        arrays["rval"] = _ints(w.arrays["rval"], scale[ridx])
    return arrays


def _ints(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return _round_int8(values, scale).astype(np.int8)
