"""Analytical (FINN-style) estimates of cycles, resources, copies per device and samples/s.

It reads the same ``HwModel`` the writer turns into C++, so the loops it counts are the loops of
the generated engines (``templates/firmware/nnet_sparse.h``) at the folding (``lanes``, stream
``pack``) the model holds. Nothing is synthesized: these are estimates, and every number rests on
the assumptions below.

Assumptions
-----------
Timing

1. Every pipelined loop runs at II = 1 at the target clock; each phase of a stage (read, compute,
   write) adds ``PHASE_DEPTH`` = 20 cycles of pipeline fill. Floating-point accumulation is
   assumed to be split into interleaved partial sums so the adder latency does not raise the II
   (Vitis does not reassociate float adds by itself; fixed point has no such issue).
2. A stage processes one sample at a time and its phases run one after the other, as in the
   generated code: ``cycles = read + compute + write + depth``. Stages overlap across samples
   (DATAFLOW), so the network's initiation interval is the slowest stage and the latency the sum.
3. Dense streams move ``pack`` values per cycle; sparse streams one (index, value) per cycle.
   Writing a sparse stream scans ``lanes`` positions per cycle with a compaction network and
   emits one non-zero per cycle: ``max(ceil(n / lanes), nnz + 1)``.
4. Lanes of dense and sparse-dense engines are PE x SIMD: SIMD weights of one row (at most the
   row length, K or the longest CSR row) times PE outputs (pixels of one filter for conv, rows for
   linear). Dense: ``ceil(outputs / PE) * ceil(K / SIMD)`` cycles. Sparse-dense: a row costs
   ``max(1, ceil(nnz_row / SIMD))`` cycles: only non-zero weights are multiplied, and short rows
   waste lanes.
5. Sparse-sparse engines: per active input ``ceil(taps_total / taps)`` steps; a step costs
   ``ceil(G / slots)`` cycles for a packed column (its G slots have distinct owners, so they
   scatter-add in parallel without conflicts) or ``ceil(residual_k / res_lanes)`` when column k's
   residual is longer (residual lanes, ``ceil(max residual / 2)`` of them, work beside the packed
   slots: a column's residual owners differ from its packed owners); the number of
   active inputs is the expected input density (k/n after k-WTA, ``1 - (1 - d)^window`` after a
   max-pool, 0.5 after ReLU) or the density measured on the testbench samples when calibrated.
   Clearing and draining the banked accumulators costs one cycle per output pixel.
6. k-WTA: rank (``n / lanes``), a 4-pass radix select with 8-bit digits (4 histogram passes of
   ``n / lanes`` with lane-private histograms, plus 256 cycles per pass to scan the bins), then the
   selection pass: ``6 * ceil(n / lanes) + 1024`` cycles. Max-pool: one cycle per output per lane
   (windows read in parallel); sparse max-pool one cycle per active input plus init and emit scans.

Resources (per copy)

7. One MAC lane costs: float32 5 DSP (fmul 3 + fadd 2, Vitis "fulldsp"), ~400 LUT, ~500 FF;
   ap_fixed up to 18 bits 1 DSP (one DSP48E2), 40 LUT, 60 FF; 19-24 bits 2 DSP; int8 0.5 DSP (two
   8-bit MACs packed in one DSP48E2, as in AMD WP487), 20 LUT, 30 FF. Compare lanes (k-WTA,
   max-pool, ReLU) cost ``2 * bits + 40`` LUT and ``2 * bits`` FF; a boosted k-WTA adds one
   multiplier per lane. Each stage adds ``STAGE_LUT`` = 800 LUT and ``STAGE_FF`` = 1000 FF of
   control (FSM, counters, stream handshakes).
8. Irregular access costs routing: in a sparse-sparse engine each lane's product reaches its
   owner's accumulator bank (scatter), in a sparse-dense engine each lane fetches the activation
   its weight's offset points to from any bank of the input buffer (gather); both go through a
   ``ceil(log2(banks))``-stage network with one LUT and one FF per bit per stage. Dense engines
   read regular windows (line buffers) and pay no routing.
9. Memories (weights, index arrays, activation buffers, accumulators) are split into
   ``ceil(read ports / 2)`` banks (BRAM and URAM are dual-ported). A bank of one or two words is
   registers; a bank of at most 4,096 bits is LUTRAM (one LUT per 64 x 1 bits); a single
   BRAM36 holding at most 18 Kbit counts as one BRAM18 (0.5). A bank that would fill at least
   6 BRAM36 goes to URAM (4096 x 72 bits, words packed ``floor(72 / bits)`` per row); otherwise
   BRAM36 in its best aspect ratio (512x72 ... 32Kx1). Weights are stored as wide words (a SIMD
   row, a packed column of G slots). Index words are as wide as their largest value needs.
   Weights are ROMs on chip: nothing is fetched from DDR per sample.
10. Copies: independent kernels (compute units), each with its own AXI ports; the number that
    fits is ``floor(0.8 * device / per-copy)`` for the scarcest resource (20% is left for the
    Alveo shell, the AXI interconnect and routing). Device throughput = copies * clock / II,
    capped by DDR bandwidth (70% of the part's, float32 input and output per sample).
11. Auto folding (when the target gives no ``parallelism``): for each target II on a geometric
    grid, every stage gets the fewest lanes that meet it and every dense stream the narrowest
    pack that moves a sample in a quarter of it; the grid point with the most samples/s per
    device wins (FINN's SetFolding, with the copies-per-device search on top).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from .hw_model import HwLayer, HwModel, max_row_nnz, split

PHASE_DEPTH = 20
STAGE_LUT = 800
STAGE_FF = 1000
UTILIZATION = 0.8
DDR_EFFICIENCY = 0.7
LUTRAM_BITS = 4096
URAM_MIN_BRAMS = 6
MAX_LANES = 4096
RESOURCES = ("dsp", "lut", "ff", "bram36", "uram")
ASSUMPTIONS = __doc__.split("Assumptions\n-----------\n")[1].strip()
_BRAM_SHAPES = ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1))


@dataclass
class LayerEstimate:
    name: str
    op: str
    engine: str
    lanes: int
    cycles: int
    read: int
    compute: int
    write: int
    dsp: float = 0.0
    lut: float = 0.0
    ff: float = 0.0
    bram36: float = 0.0
    uram: float = 0.0
    macs: float = 0.0  # multiply-adds actually done per sample (expected)


@dataclass
class Estimate:
    """The estimate of one hardware model (one variant, precision and folding)."""

    model: str
    variant: str
    precision: str
    part: str
    clock_mhz: float
    layers: list[LayerEstimate]
    ii_cycles: int
    latency_cycles: int
    per_copy: dict[str, float]
    available: dict[str, int]
    copies: int
    limited_by: str
    samples_per_s: float  # whole device
    ddr_limited: bool = False
    dense_macs: int = 0
    assumptions: str = ASSUMPTIONS

    @property
    def samples_per_s_per_copy(self) -> float:
        return self.clock_mhz * 1e6 / self.ii_cycles

    @property
    def latency_us(self) -> float:
        return self.latency_cycles / self.clock_mhz

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples_per_s_per_copy"] = self.samples_per_s_per_copy
        d["latency_us"] = self.latency_us
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        head = (
            f"{'layer':<22} {'engine':<14} {'lanes':>6} {'cycles':>9} {'MACs':>10} {'DSP':>7} "
            f"{'LUT':>9} {'FF':>9} {'BRAM36':>7} {'URAM':>5}"
        )
        lines = [
            f"{self.model} [{self.variant}, {self.precision}] on {self.part} @ "
            f"{self.clock_mhz:g} MHz",
            head,
            "-" * len(head),
        ]
        for x in self.layers:
            lines.append(
                f"{x.name[:22]:<22} {x.engine:<14} {x.lanes:>6} {x.cycles:>9} {x.macs:>10.0f} "
                f"{x.dsp:>7.0f} {x.lut:>9.0f} {x.ff:>9.0f} {x.bram36:>7.0f} {x.uram:>5.0f}"
            )
        p = self.per_copy
        lines += [
            "-" * len(head),
            f"{'per copy':<22} {'':<14} {'':>6} {self.ii_cycles:>9} "
            f"{sum(x.macs for x in self.layers):>10.0f} {p['dsp']:>7.0f} {p['lut']:>9.0f} "
            f"{p['ff']:>9.0f} {p['bram36']:>7.0f} {p['uram']:>5.0f}",
            f"II {self.ii_cycles} cycles, latency {self.latency_us:.1f} us; "
            f"{self.copies} copies fit (limited by {self.limited_by}); "
            f"{self.samples_per_s_per_copy:,.0f} samples/s per copy, "
            f"{self.samples_per_s:,.0f} samples/s per device"
            + (" (DDR bandwidth bound)" if self.ddr_limited else ""),
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Cycles
# ---------------------------------------------------------------------------------------------
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


def stage_cycles(model: HwModel, layer: HwLayer, lanes: int) -> tuple[int, int, int, float]:
    """(read, compute, write, MACs) cycles of one stage with ``lanes`` lanes."""
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


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------
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


def stage_resources(model: HwModel, layer: HwLayer) -> dict[str, float]:
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


# ---------------------------------------------------------------------------------------------
# The whole network
# ---------------------------------------------------------------------------------------------
def estimate(model: HwModel) -> Estimate:
    """Estimate ``model`` at its current folding."""
    part = model.target.part
    rows: list[LayerEstimate] = []
    total = {k: 0.0 for k in RESOURCES}
    n_input = int(np.prod(model.input_shape))
    n_output = int(np.prod(model.output_shape))
    io_cycles = [
        math.ceil(n_input / model.input_pack) + PHASE_DEPTH,
        math.ceil(n_output / model.layers[-1].pack_out) + PHASE_DEPTH,
    ]
    for layer in model.layers:
        read, compute, write, macs = stage_cycles(model, layer, layer.lanes)
        phases = sum(1 for c in (read, compute, write) if c)
        cycles = read + compute + write + PHASE_DEPTH * phases
        res = stage_resources(model, layer)
        for k in RESOURCES:
            total[k] += res[k]
        rows.append(
            LayerEstimate(
                layer.name,
                layer.op,
                layer.engine,
                layer.lanes,
                cycles,
                read,
                compute,
                write,
                **res,
                macs=macs,
            )
        )
    total["lut"] += 2 * STAGE_LUT  # AXI read / write stages
    total["ff"] += 2 * STAGE_FF
    ii = max([r.cycles for r in rows] + io_cycles)
    latency = sum(r.cycles for r in rows) + sum(io_cycles)
    available = {
        "dsp": part.dsp,
        "lut": part.lut,
        "ff": part.ff,
        "bram36": part.bram36,
        "uram": part.uram,
    }
    fits = {
        k: math.floor(UTILIZATION * available[k] / total[k]) if total[k] > 0 else 10**9
        for k in RESOURCES
    }
    limited_by = min(fits, key=fits.get)
    copies = max(0, fits[limited_by])
    per_copy = model.target.clock_mhz * 1e6 / ii
    throughput = copies * per_copy
    bytes_per_sample = 4 * (n_input + n_output)
    ddr_cap = DDR_EFFICIENCY * part.ddr_gbps * 1e9 / bytes_per_sample
    ddr_limited = throughput > ddr_cap
    return Estimate(
        model=model.name,
        variant=model.variant,
        precision=str(model.precision),
        part=f"{part.board.upper()} ({part.name})",
        clock_mhz=model.target.clock_mhz,
        layers=rows,
        ii_cycles=ii,
        latency_cycles=latency,
        per_copy=total,
        available=available,
        copies=copies,
        limited_by=limited_by,
        samples_per_s=min(throughput, ddr_cap),
        ddr_limited=ddr_limited,
        dense_macs=int(sum(x.dense_macs for x in model.layers)),
    )


# ---------------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------------
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
            read, compute, write, _ = stage_cycles(model, layer, lanes)
            costs.append((read + compute + write + 3 * PHASE_DEPTH, lanes))
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


def comparison_table(
    estimates: list[Estimate], reference: dict[str, tuple[float, int]] | None = None
) -> str:
    """Variants side by side; ``reference``: {variant: (published samples/s, copies)}."""
    base = next((e for e in estimates if e.variant == "dense"), estimates[0])
    head = (
        f"{'variant':<14} {'MACs/sample':>12} {'II cyc':>8} {'lat us':>8} {'copies':>6} "
        f"{'limit':>6} {'samples/s/copy':>15} {'samples/s':>12} {'x dense':>8}"
    )
    if reference:
        head += f" {'published':>12} {'copies':>6} {'x dense':>8}"
    lines = [head, "-" * len(head)]
    ref_base = (reference or {}).get(base.variant, (0.0, 0))[0]
    for e in estimates:
        macs = sum(x.macs for x in e.layers)
        line = (
            f"{e.variant:<14} {macs:>12,.0f} {e.ii_cycles:>8} {e.latency_us:>8.1f} "
            f"{e.copies:>6} {e.limited_by:>6} {e.samples_per_s_per_copy:>15,.0f} "
            f"{e.samples_per_s:>12,.0f} {e.samples_per_s / base.samples_per_s:>8.1f}"
        )
        if reference and e.variant in reference:
            value, copies = reference[e.variant]
            ratio = value / ref_base if ref_base else float("nan")
            line += f" {value:>12,.0f} {copies:>6} {ratio:>8.1f}"
        lines.append(line)
    return "\n".join(lines)
