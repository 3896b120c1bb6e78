"""Resources of one stage (per copy): MAC and compare lanes, routing, memories, FIFOs.

Assumptions 7-9 of ``estimator``: lane costs per precision (two int8 MACs per DSP48E2 where the
code gives them a shared operand), the scatter / gather networks of irregular access, and how each
array maps onto registers, LUTRAM, BRAM36 or URAM (whichever takes the smallest share of the
device).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .cycles import accumulator_copies
from .hw_model import HwLayer, HwModel, Split, accumulator_pixel_banks, split
from .number_formats import BOOST_BITS, SCALE_BITS, fixed_format

STAGE_LUT = 800
STAGE_FF = 1000
# one m_axi port of a copy: the HLS adapter (burst FIFO in a BRAM36) and its SmartConnect slot
AXI_PORT = {"lut": 2000.0, "ff": 3000.0, "bram36": 1.0}
LUTRAM_DEPTH = 512  # deeper LUTRAM needs wide output muxes: BRAM or URAM instead
URAM_DEPTH, URAM_WIDTH = 4096, 72
_BRAM36_SHAPES = ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1))
_BRAM18_SHAPES = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
# what one unit of each resource costs when a memory chooses its primitive: by default its share
# of a U250 (the parts differ little in their proportions); the fold search makes the scarce
# resource dearer (HwModel.memory_prices)
SUPPLY = {"lut": 1_728_000, "ff": 3_456_000, "bram36": 2_688, "uram": 1_280}
DEFAULT_PRICES = {k: 1.0 / v for k, v in SUPPLY.items()}
KINDS = ("lut", "ff", "bram36", "uram")


SOFTMAX_DSP, SOFTMAX_LUT, SOFTMAX_FF = 26, 3000, 4000  # float exp, log, add, divide


def mac_cost(model: HwModel, shared_operand: bool = True) -> tuple[float, float, float]:
    """(DSP, LUT, FF) of one multiply-accumulate lane at the model's precision.

    int8: two MACs share one DSP48E2 (AMD WP487) only when the two products have an operand in
    common (``(a << 18 | b) * c``); lanes with four distinct operands take a DSP each.
    """
    p = model.precision
    if p.is_float:
        return 5.0, 400.0, 500.0
    if p.kind == "int8":
        return (0.5 if shared_operand else 1.0), 20.0, 30.0
    return (1.0, 40.0, 60.0) if p.width <= 18 else (2.0, 60.0, 80.0)


def data_bits(model: HwModel) -> int:
    return model.precision.bits


def acc_bits(model: HwModel, layer: HwLayer | None = None) -> int:
    """Accumulator width: the layer's accum_t (float: 32)."""
    fmt = fixed_format(layer.accum_t) if layer is not None else None
    return fmt[0] if fmt else 32


def _bram36(depth: int, width: int) -> float:
    """BRAM36 of one depth x width memory in its best aspect ratio (a BRAM18 counts 0.5)."""
    full = min(math.ceil(depth / d) * math.ceil(width / w) for d, w in _BRAM36_SHAPES)
    half = min(math.ceil(depth / d) * math.ceil(width / w) for d, w in _BRAM18_SHAPES)
    return min(float(full), 0.5 * half)


def _lutram_lut(width: int, ports: int, rom: bool) -> int:
    """LUTs of 64 words of LUTRAM: one LUT per bit (a ROM read twice is duplicated); a RAM
    written and read in one cycle is simple dual-port, 7 bits per SLICEM (RAM64M8, 8 LUTs)."""
    if rom or ports < 2:
        return width * (ports if rom else 1)
    return math.ceil(width / 7) * 8


def _place(
    depth: int, width: int, ports: int, rom: bool, prices: dict[str, float]
) -> dict[str, float]:
    """One bank of depth x width bits used through ``ports`` (1 or 2) ports: the primitive
    with the smallest share of the device."""
    none = {k: 0.0 for k in KINDS}
    if depth <= 2:  # registers
        return none | {"ff": float(depth * width)}
    options = [none | {"bram36": _bram36(depth, width)}]
    if depth <= LUTRAM_DEPTH:
        options.append(
            none | {"lut": float(math.ceil(depth / 64) * _lutram_lut(width, ports, rom))}
        )
    if not rom:  # UltraScale+ URAM cannot be initialized by the bitstream: no ROMs in it
        per_row = max(1, URAM_WIDTH // width)
        rows = math.ceil(depth / per_row)
        uram = math.ceil(rows / URAM_DEPTH) * math.ceil(width / URAM_WIDTH)
        options.append(none | {"uram": float(uram)})
    return min(options, key=lambda o: sum(o[k] * prices[k] for k in KINDS))


def memory(
    words: int,
    bits: int,
    ports: int = 1,
    *,
    scattered: bool = False,
    rom: bool = False,
    prices: dict[str, float] | None = None,
) -> dict[str, float]:
    """BRAM36 / URAM / LUT / FF of an array of ``words`` x ``bits`` accessed ``ports`` words a
    cycle (reads and writes of its busiest loop).

    Consecutive accesses (the lanes of an unrolled loop over i, a SIMD row) are served by wide
    rows: ``ceil(ports / 2)`` words per row, one row per port of a dual-ported memory.
    ``scattered`` accesses (data-dependent addresses: gather, scatter-add, histograms) need one
    bank per two ports. ``rom``: constant contents (weights), which URAM cannot hold.
    ``prices``: the cost of a unit of each resource (default: 1 / its supply on a U250).
    """
    if words <= 0 or bits <= 0:
        return {k: 0.0 for k in KINDS}
    pairs = min(max(1, math.ceil(ports / 2)), words)
    if scattered:
        banks, width, depth = pairs, bits, math.ceil(words / pairs)
    else:
        banks, width, depth = 1, pairs * bits, math.ceil(words / pairs)
    one = _place(depth, width, min(ports, 2), rom, prices or DEFAULT_PRICES)
    return {k: banks * v for k, v in one.items()}


def fifo(width: int) -> dict[str, float]:
    """A depth-2 stream FIFO between stages (Vitis: shift registers, one LUT per bit)."""
    return {"lut": float(width + 20), "ff": 20.0}


def _index_bits(arr: np.ndarray) -> int:
    return max(1, int(arr.max(initial=0)).bit_length())


def _weight_memories(
    model: HwModel, layer: HwLayer, par: Split, place: Callable[..., dict[str, float]]
) -> list[dict[str, float]]:
    """Weights stored as wide words (a SIMD row, a packed column) in ROMs."""
    bits = data_bits(model)
    w = layer.weights
    taps_total = layer.kernel[0] * layer.kernel[1]
    # all taps of one input channel read consecutive packed columns; a part of them does not
    taps_scattered = par.taps not in (1, taps_total)
    mems = []
    for key, arr in w.arrays.items():
        wbits = bits if arr.dtype.kind == "f" else _index_bits(arr)
        if key == "ptr":  # ptr[r], ptr[r + 1]
            mems.append(place(arr.size, wbits, 2, rom=True))
        elif key == "rptr":
            mems.append(place(arr.size, wbits, 2 * par.taps, scattered=True, rom=True))
        elif key in ("ridx", "rval"):
            width = par.res_lanes
            mems.append(
                place(
                    math.ceil(arr.size / width), wbits * width, par.taps, scattered=True, rom=True
                )
            )
        elif w.fmt == "packed":
            mems.append(
                place(layer.n_kin, wbits * w.n_groups, par.taps, scattered=taps_scattered, rom=True)
            )
        else:  # linear: pe rows, each at its own offset; conv: one row, pe pixels share it
            ports = par.pe if layer.op == "linear" else 1
            words = math.ceil(arr.size / par.simd)
            mems.append(place(words, wbits * par.simd, ports, scattered=True, rom=True))
    return mems


def shares_operand(layer: HwLayer) -> bool:
    """Whether the code's MAC lanes come in pairs with an operand in common (DSP packing).

    Sparse-sparse: every slot multiplies the same active input. Conv with pe >= 2: pe pixels of
    one filter share each weight. Dense linear with pe >= 2: pe rows share each input. A
    sparse-dense linear multiplies each weight by its own gathered input: nothing shared.
    """
    if layer.engine == "sparse_sparse":
        return True
    pe = split(layer).pe
    if layer.op == "conv2d":
        return pe >= 2
    return layer.engine == "dense" and pe >= 2


def _stage_control() -> dict[str, float]:
    """What every stage costs before its lanes and memories: its control logic."""
    return {"dsp": 0.0, "lut": float(STAGE_LUT), "ff": float(STAGE_FF), "bram36": 0.0, "uram": 0.0}


def finishing_lanes(layer: HwLayer, lanes: int) -> int:
    """Outputs a weighted stage finishes (bias, ReLU, format) per cycle: a sparse-sparse conv
    all channels of one pixel, a sparse-sparse linear ``lanes`` outputs, the others PE."""
    if layer.engine != "sparse_sparse":
        return split(layer, lanes).pe
    return layer.out_shape[0] if layer.op == "conv2d" else min(layer.out_shape[0], lanes)


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
    res = _stage_control()
    width = data_bits(model) * model.pack_in(layer)
    if layer.op == "clone":
        for port in range(layer.n_outputs):
            depth = model.fifo_depth(layer, port)
            if depth > 2:  # the 2-beat FIFOs are registers, as everywhere else
                for k, v in memory(depth, width, 2, prices=model.memory_prices).items():
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
    res = _stage_control()

    def add(mem: dict[str, float]) -> None:
        for k, v in mem.items():
            res[k] += v

    def place(*args, **kwargs) -> dict[str, float]:
        return memory(*args, prices=model.memory_prices, **kwargs)

    if layer.weighted:
        dsp, lut, ff = mac_cost(model, shares_operand(layer))
        mac_lanes = lanes + (par.taps * par.res_lanes if layer.engine == "sparse_sparse" else 0)
        res["dsp"] += math.ceil(mac_lanes * dsp)
        res["lut"] += mac_lanes * lut
        res["ff"] += mac_lanes * ff
        for mem in _weight_memories(model, layer, par, place):
            add(mem)
        finishing = finishing_lanes(layer, lanes)
        if layer.engine == "sparse_sparse":
            # accumulators: per output channel a plane cut into pixel banks (the taps of a step
            # never share one), each read and written once a cycle; each interleaved
            # partial-sum copy has its own (empty slots write nothing: no extra bank)
            pixel_banks = accumulator_pixel_banks(layer)
            banks = layer.out_shape[0] * pixel_banks
            words = banks * math.ceil(layer.out_pixels / pixel_banks)
            stages = math.ceil(math.log2(banks)) if banks > 1 else 0
            res["lut"] += mac_lanes * abits * stages
            res["ff"] += mac_lanes * abits * stages
            copies = accumulator_copies(layer)
            for _ in range(copies):
                add(place(words, abits, 2 * banks, scattered=True))
            # finish: conv, all channels of one pixel at once; linear, lanes outputs per cycle
            # (bias constants fold into the adders), an adder per extra copy
            res["lut"] += finishing * (abits + bits + (copies - 1) * abits)
            add(place(layer.n_out, bits, 2 * finishing, scattered=layer.op == "conv2d"))
        else:
            add(place(layer.out_shape[0], abits, 2, rom=True))  # bias
            n_buf = layer.in_shape[0] * math.prod(layer.attrs.get("padded", (1, 1)))
            dense_linear = layer.engine == "dense" and layer.op == "linear"
            reads = par.simd if dense_linear else lanes
            add(place(max(n_buf, layer.n_in), bits, reads, scattered=not dense_linear))
            if layer.engine == "sparse_dense":
                # irregular gather: each lane reads any input bank through a mux network
                banks = min(max(1, math.ceil(reads / 2)), max(n_buf, layer.n_in))
                stages = math.ceil(math.log2(banks)) if banks > 1 else 0
                res["lut"] += lanes * bits * stages
                res["ff"] += lanes * bits * stages
            add(place(layer.n_out, bits, max(par.pe, layer.pack_out)))
        if layer.weight_scale is not None:  # int8: acc * scale[o] in each finishing lane
            res["dsp"] += finishing  # an 18 x (accumulator) product: one DSP48E2 (27 x 18)
            add(place(layer.out_shape[0], SCALE_BITS, 2 * finishing, rom=True))
    else:
        res["lut"] += lanes * (2 * bits + 40)
        res["ff"] += lanes * 2 * bits
        if layer.op == "kwta":
            if layer.boost is not None:
                res["dsp"] += lanes * (3.0 if model.precision.is_float else 1.0)
                boost_bits = 32 if layer.boost_t == "float" else BOOST_BITS
                add(place(layer.boost.size, boost_bits, lanes, rom=True))
            add(place(layer.n_in, bits, lanes))  # values
            add(place(layer.n_in, 32, lanes))  # uint32 keys
            # lane-private histograms: 256 unsigned counters per lane, read and written each
            # cycle, merged by an adder over the lanes per bin
            add(place(256 * lanes, 32, 2 * lanes, scattered=True))
            res["lut"] += lanes * 32
            # each lane's run: its bin (9 bits) and count (32) in registers, the bin compare
            # and the count's increment
            res["ff"] += lanes * (9 + 32)
            res["lut"] += lanes * (9 + 32)
            add(place(layer.n_in, bits, lanes))  # selected values
        elif layer.op == "softmax":
            # one float exp and one float add (the running sum), a float log and divide once per
            # sample, compare and subtract: Vitis float cores, about 26 DSP, 3,000 LUT, 4,000 FF
            res["dsp"] += SOFTMAX_DSP
            res["lut"] += SOFTMAX_LUT
            res["ff"] += SOFTMAX_FF
            add(place(layer.n_in, 32, 2))  # the exponentials
            add(place(layer.n_in, bits, 2))  # values
        elif layer.op == "maxpool2d":
            if not layer.in_sparse:
                pool = math.prod(layer.attrs["pool"])
                add(place(layer.n_in, bits, lanes * pool, scattered=True))
                add(place(layer.n_out, bits, lanes))
            else:
                # counts and maxes: Emit reads lanes windows a cycle, ActiveInputs writes one
                # window back and reads another; the window in registers (its index, max and
                # count) and Emit's compare of each lane's window with it
                ports = max(lanes, 2)
                add(place(layer.n_out, 8, ports))
                add(place(layer.n_out, bits, ports))
                add(place(layer.n_out, bits, lanes))  # the outputs
                index_bits = max(1, math.ceil(math.log2(layer.n_out + 1)))
                res["ff"] += index_bits + bits + 8
                res["lut"] += lanes * index_bits
        else:
            add(place(layer.n_in, bits, lanes))
            add(place(layer.n_out, bits, lanes))
    if layer.out_sparse:  # (index, value, last)
        add(fifo(32 + bits + 1))
    else:
        add(fifo(layer.pack_out * bits))
    return res
