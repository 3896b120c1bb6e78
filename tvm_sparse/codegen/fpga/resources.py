"""Resources of one stage (per copy): MAC and compare lanes, routing, memories.

Assumptions 7-9 of ``estimator``: lane costs per precision, the scatter / gather networks of
irregular access, and how each array maps onto registers, LUTRAM, BRAM36 or URAM.
"""

from __future__ import annotations

import math

import numpy as np

from .hw_model import HwLayer, HwModel, split

STAGE_LUT = 800
STAGE_FF = 1000
LUTRAM_BITS = 4096
URAM_MIN_BRAMS = 6
_BRAM_SHAPES = ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1))


def mac_cost(model: HwModel) -> tuple[float, float, float]:
    """(DSP, LUT, FF) of one multiply-accumulate lane at the model's precision."""
    p = model.precision
    if p.is_float:
        return 5.0, 400.0, 500.0
    if p.kind == "int8":
        return 0.5, 20.0, 30.0
    return (1.0, 40.0, 60.0) if p.width <= 18 else (2.0, 60.0, 80.0)


def data_bits(model: HwModel) -> int:
    return model.precision.bits


def acc_bits(model: HwModel, layer: HwLayer | None = None) -> int:
    """Accumulator width: the layer's accum_t (float: 32)."""
    text = layer.accum_t if layer is not None else ""
    if text.startswith("ap_fixed<"):
        return int(text[len("ap_fixed<") :].split(",")[0])
    return 32


def memory(words: int, bits: int, ports: int = 1) -> dict[str, float]:
    """BRAM36 / URAM / LUT / FF of an array of ``words`` x ``bits`` read ``ports`` words a cycle.

    Wide words (a SIMD row of weights, a packed column) are passed as one word of all their bits.
    """
    none = {"bram36": 0.0, "uram": 0.0, "lut": 0.0, "ff": 0.0}
    if words <= 0 or bits <= 0:
        return none
    banks = min(max(1, math.ceil(ports / 2)), words)
    depth = math.ceil(words / banks)
    if depth <= 2:  # fully partitioned: registers
        return none | {"ff": float(banks * depth * bits)}
    if depth * bits <= LUTRAM_BITS:
        return none | {"lut": float(banks * math.ceil(depth / 64) * bits)}
    bram = min(math.ceil(depth / d) * math.ceil(bits / w) for d, w in _BRAM_SHAPES)
    if bram >= URAM_MIN_BRAMS:
        per_row = max(1, 72 // bits)
        uram = math.ceil(depth / (4096 * per_row)) * math.ceil(bits / 72)
        return none | {"uram": float(banks * uram)}
    if bram == 1 and depth * bits <= 18432:
        return none | {"bram36": 0.5 * banks}  # one BRAM18
    return none | {"bram36": float(banks * bram)}


def _index_bits(arr: np.ndarray) -> int:
    return max(1, int(arr.max(initial=0)).bit_length())


def _weight_memories(model: HwModel, layer: HwLayer, par) -> list[dict[str, float]]:
    """Weights stored as wide words: a SIMD row (dense / sparse-dense) or a packed column."""
    bits = data_bits(model)
    w = layer.weights
    mems = []
    for key, arr in w.arrays.items():
        wbits = bits if arr.dtype.kind == "f" else _index_bits(arr)
        if key in ("ptr", "rptr"):
            mems.append(memory(arr.size, wbits, 2 if key == "ptr" else 2 * par.taps))
        elif key in ("ridx", "rval"):
            width = par.res_lanes
            mems.append(memory(math.ceil(arr.size / width), wbits * width, par.taps))
        elif w.fmt == "packed":
            mems.append(memory(layer.n_kin, wbits * w.n_groups, par.taps))
        else:
            ports = par.pe if layer.op == "linear" else 1  # conv: one row, pe pixels share it
            mems.append(memory(math.ceil(arr.size / par.simd), wbits * par.simd, ports))
    return mems


def add_lane_cost(model: HwModel, layer: HwLayer) -> tuple[float, float, float]:
    """(DSP, LUT, FF) of one lane of a residual add: a float adder (Vitis fadd "fulldsp": 2 DSP)
    or a fixed-point adder of the sum's width in LUT carry logic, plus the ReLU's compare."""
    if model.precision.is_float:
        return 2.0, 200.0, 300.0
    bits = acc_bits(model, layer)
    return 0.0, float(2 * bits), float(bits)


def residual_resources(model: HwModel, layer: HwLayer) -> dict[str, float]:
    """A clone: control, and the FIFO of each output that buffers whole samples (the shorter
    branch's, ``HwModel.fifo_depth``: BRAM / LUTRAM by ``memory``). An add: one adder lane per
    value of a beat (its pack)."""
    res = {"dsp": 0.0, "lut": float(STAGE_LUT), "ff": float(STAGE_FF), "bram36": 0.0, "uram": 0.0}
    width = data_bits(model) * model.pack_in(layer)
    if layer.op == "clone":
        for port in range(layer.n_outputs):
            depth = model.fifo_depth(layer, port)
            if depth > 2:  # the 2-beat FIFOs are registers, as everywhere else
                for k, v in memory(depth, width, 2).items():
                    res[k] += v
        return res
    dsp, lut, ff = add_lane_cost(model, layer)
    lanes = model.pack_in(layer)
    res["dsp"] += lanes * dsp
    res["lut"] += lanes * lut
    res["ff"] += lanes * ff
    return res


def stage_resources(model: HwModel, layer: HwLayer) -> dict[str, float]:
    if layer.op in ("clone", "add"):
        return residual_resources(model, layer)
    lanes = layer.lanes
    par = split(layer)
    bits, abits = data_bits(model), acc_bits(model, layer)
    res = {"dsp": 0.0, "lut": float(STAGE_LUT), "ff": float(STAGE_FF), "bram36": 0.0, "uram": 0.0}

    def add(mem: dict[str, float]) -> None:
        for k, v in mem.items():
            res[k] += v

    if layer.weighted:
        dsp, lut, ff = mac_cost(model)
        mac_lanes = lanes + (par.taps * par.res_lanes if layer.engine == "sparse_sparse" else 0)
        res["dsp"] += mac_lanes * dsp
        res["lut"] += mac_lanes * lut
        res["ff"] += mac_lanes * ff
        for mem in _weight_memories(model, layer, par):
            add(mem)
        add(memory(layer.out_shape[0], abits, 2))  # bias
        if layer.engine == "sparse_sparse":
            banks = layer.out_shape[0] + 1
            stages = math.ceil(math.log2(banks))
            res["lut"] += mac_lanes * abits * stages
            res["ff"] += mac_lanes * abits * stages
            # accumulators: a bank per output channel, taps pixels written per cycle
            add(memory(banks * layer.out_pixels, abits, 2 * banks * par.taps))
            add(memory(layer.n_out, bits, 2 * layer.out_shape[0]))
        else:
            n_buf = layer.in_shape[0] * math.prod(layer.attrs.get("padded", (1, 1)))
            reads = par.simd if layer.engine == "dense" and layer.op == "linear" else lanes
            add(memory(max(n_buf, layer.n_in), bits, reads))
            if layer.engine == "sparse_dense":
                # irregular gather: each lane reads any input bank through a mux network
                banks = min(max(1, math.ceil(reads / 2)), max(n_buf, layer.n_in))
                stages = math.ceil(math.log2(banks)) if banks > 1 else 0
                res["lut"] += lanes * bits * stages
                res["ff"] += lanes * bits * stages
            add(memory(layer.n_out, bits, max(par.pe, layer.pack_out)))
    else:
        res["lut"] += lanes * (2 * bits + 40)
        res["ff"] += lanes * 2 * bits
        if layer.op == "kwta":
            if layer.boost is not None:
                res["dsp"] += lanes * (3.0 if model.precision.is_float else 1.0)
                add(memory(layer.boost.size, 32, lanes))
            add(memory(layer.n_in, bits, lanes))  # values
            add(memory(layer.n_in, 32, lanes))  # keys
            add(memory(256 * lanes, 16, 2 * lanes))  # lane-private histograms
            add(memory(layer.n_in, bits, lanes))  # selected values
        elif layer.op == "maxpool2d":
            if not layer.in_sparse:
                add(memory(layer.n_in, bits, lanes * math.prod(layer.attrs["pool"])))
            else:
                add(memory(layer.n_out, 8, lanes))  # counts
            add(memory(layer.n_out, bits, lanes))
        else:
            add(memory(layer.n_in, bits, lanes))
            add(memory(layer.n_out, bits, lanes))
    return res
