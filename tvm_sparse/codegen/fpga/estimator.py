"""Analytical (FINN-style) estimates of cycles, resources, copies per device and samples/s.

It reads the same ``HwModel`` the writer turns into C++, so the loops it counts are the loops of
the generated engines (``templates/firmware/nnet_sparse.h``) at the folding (``lanes``, stream
``pack``) the model holds: a stage's cycles come from ``cycles``, its resources from
``resources``, and ``folding`` chooses the lanes. Nothing is synthesized: these are estimates,
and every number rests on the assumptions below (they are written into every estimate.json).

Assumptions
-----------
Timing

1. Every loop of an engine is pipelined at the II its pragma states: 1, except where an iteration
   reads back what the one before wrote: a float running sum (II = ``FLOAT_ADD_CYCLES`` = 4, a
   float add's latency at 300 MHz), a float read-modify-write of the sparse-sparse conv's RAM
   accumulators (a read, then the add: II 5), a float running max (the sparse max-pool: II 2).
   Fixed-point RAM updates run at II 1: the sparse-sparse conv adds into as many interleaved
   partial-sum copies as its read-modify-write takes cycles (step i into copy i mod copies;
   Finish adds them), the k-WTA histograms and the sparse max-pool keep the bin / window they
   update in registers and write it back when the next one differs (UG1399's histogram: one
   port writes the old address, the other reads the new). Each loop adds ``PHASE_DEPTH`` = 20
   cycles of pipeline fill each time it runs. The C simulation counts exactly these iterations
   and fills (``NNET_COUNT_CYCLES``); ``cycle_check`` sets the two side by side.
2. A stage processes one sample at a time and its loops run one after the other, as in the
   generated code: ``cycles = sum over loops (iterations * II + PHASE_DEPTH)``. Stages overlap
   across samples (DATAFLOW), so the network's initiation interval is the slowest stage and the
   latency the sum along the longest path (a residual block's two branches run side by side). A
   clone and a residual add are one loop of ``ceil(n / pack)`` beats; the clone's FIFO towards
   the branch with fewer stages holds one sample per extra stage of the other branch (BRAM,
   counted in the clone's resources), so the branches never stall the clone.
3. Dense streams move ``pack`` values per cycle; sparse streams one (index, value) per cycle.
   Writing a sparse stream, a cycle emits the first non-zero among the next ``lanes`` positions
   or skips ``lanes`` empty ones: non-zeros + empty stretches + 1 (the end marker), averaged over
   the calibration samples (without samples: ``max(ceil(n / lanes), nnz) + 1``).
4. Lanes of dense and sparse-dense engines are PE x SIMD: SIMD weights of a row (at most the row
   length, K or the longest CSR row) times PE outputs (pixels of one filter for conv, rows for
   linear), in one flattened loop of steps. A row takes ``ceil(K / SIMD)`` steps (dense) or
   ``max(1, ceil(nnz_row / SIMD))`` (sparse-dense: only non-zero weights are multiplied, short
   rows waste lanes); PE rows of a linear layer take the steps of their longest. A conv reads its
   input straight into a zero-padded buffer.
5. Sparse-sparse engines: per active input, its column's steps: ``max(1, ceil(G / slots),
   ceil(residual_k / res_lanes))`` (the G slots of a packed column have distinct owners, so they
   scatter-add in parallel without conflicts; residual lanes, ``ceil(max residual / 2)`` of them,
   work beside them); a conv takes ``taps`` kernel positions at a time, each tap group costing
   its longest column. The active inputs are counted per position on the calibration samples
   (else the expected density: k/n after k-WTA, ``1 - (1 - d)^window`` after a max-pool, 0.5
   after ReLU). Linear accumulators are registers; conv accumulators are RAM banks, cleared and
   drained one output pixel per cycle.
6. k-WTA: rank (``ceil(n / lanes)``), a 4-pass radix select with 8-bit digits (each pass a
   histogram loop of ``ceil(n / lanes)`` at II 1 into lane-private histograms, ``lanes x 256``
   counters, then a 256-bin scan that merges the lanes and clears them), then the selection:
   ``2 * ceil(n / lanes) + 4 * (ceil(n / lanes) + 256)`` cycles. Max-pool: ``lanes`` windows
   per cycle, each window's values read in parallel; sparse max-pool: clear and emit ``lanes``
   windows per cycle, and one cycle (two in float) per (active input, window holding it). With
   ``exact`` (TopK's exactly-k form), the selection keeps ties up to k, lowest index first, in
   the same pass. A final (log-)softmax: in float, a pass for the max, one for the sum of
   exponentials (a running sum: II = ``FLOAT_ADD_CYCLES``), one for the outputs.

Resources (per copy)

7. One MAC lane costs: float32 5 DSP (fmul 3 + fadd 2, Vitis "fulldsp"), ~400 LUT, ~500 FF;
   ap_fixed up to 18 bits 1 DSP (one DSP48E2), 40 LUT, 60 FF; 19-24 bits 2 DSP; int8 20 LUT,
   30 FF and half a DSP where two lanes share an operand (two 8-bit products ``(a << 18 | b) * c``
   in one DSP48E2, AMD WP487: the slots of a sparse-sparse column share the active input, the pe
   pixels of a conv share the weight, the pe rows of a dense linear share the input), else a
   whole DSP (a sparse-dense linear's lanes each multiply their own weight by their own gathered
   input). An int8 layer's outputs are requantized by their channel's 18-bit scale: one DSP per
   output finished per cycle, and the scales as a ROM. Compare lanes (k-WTA, max-pool, ReLU)
   cost ``2 * bits + 40`` LUT and ``2 * bits`` FF; a boosted k-WTA adds one multiplier per lane.
   Each stage adds ``STAGE_LUT`` = 800 LUT and ``STAGE_FF`` = 1000 FF of control (FSM,
   counters, stream handshakes) and its output FIFO (depth 2, shift registers: one LUT per bit
   + 20). Each copy has two m_axi ports (input,
   output) of 2,000 LUT, 3,000 FF and one BRAM36 each (HLS adapter and burst buffer, its
   SmartConnect slot), plus the read and write stages.
8. Irregular access costs routing: in a sparse-sparse engine each lane's product reaches its
   owner's accumulator bank (scatter), in a sparse-dense engine each lane fetches the activation
   its weight's offset points to from any bank of the input buffer (gather); both go through a
   ``ceil(log2(banks))``-stage network with one LUT and one FF per bit per stage. Dense engines
   read regular windows (line buffers) and pay no routing. A sparse-sparse engine's finish adds
   bias and quantizes all output channels of a pixel at once (the code unrolls it completely):
   ``out_c * (acc bits + bits)`` LUT; a linear one keeps its accumulators in registers.
9. Memories (weights, index arrays, activation buffers, keys, accumulators, histograms) are
   counted with the ports the code's loops use in one cycle. Consecutive accesses (the unrolled
   lanes of a loop over i, a SIMD row, a packed column) are served by wide rows of
   ``ceil(ports / 2)`` words on the two ports of one memory; data-dependent ones (gather,
   scatter-add, histogram bins) need ``ceil(ports / 2)`` banks. Each bank goes to what takes the
   smallest share of the device: registers (at most two words), LUTRAM (at most 512 deep; one
   LUT per 64 x 1 bits, a simple dual-port RAM 8 LUTs per 64 x 7 bits as RAM64M8, a ROM read
   twice is duplicated), BRAM in its best aspect ratio (BRAM36 512x72 ... 32Kx1, or BRAM18 at
   half a BRAM36) or URAM (4096 x 72, words packed ``floor(72 / bits)`` a row). Weights are ROMs
   (``static const``): URAM cannot be initialized by the bitstream, so they live in BRAM or
   LUTRAM. The sparse-sparse conv's partial-sum copies are each a set of banks, and Finish adds
   an adder per extra copy and output channel. The k-WTA keeps values, uint32 keys, selected
   values and one 256-counter (32-bit) histogram per lane, merged by an adder per lane, and
   each lane's run (bin and count) in registers; the sparse max-pool its window in registers.
   The fold search may make the scarcest resource dearer (``HwModel.memory_prices``). Nothing
   is fetched from DDR per sample but the inputs and outputs.
10. Copies: independent kernels (compute units), each with its own AXI ports, placed inside one
    super logic region (SLR): the U250 has 4, each a quarter of the device less the static
    shell's share (10% for a DDR4 controller in SLR0, 2, 3; 55% in SLR1 for PCIe, XDMA and the
    management, after UG1393's per-SLR availability of an XDMA platform; the U280 / U55C: 55%
    of SLR0, 10% of the others), and 80% of what is left is usable
    (routing, SmartConnect). Copies = sum over SLRs of ``floor(0.8 * SLR / per-copy)`` for the
    scarcest resource; a copy no SLR holds spans two (or more) adjacent SLRs, pooled. Device
    throughput = copies * clock / II, capped by the DDR bandwidth (70% of the part's; the kernel
    reads float32 inputs and writes float32 outputs).
11. Auto folding (when the target gives no ``parallelism``): for each target II on a geometric
    grid (2^(1/4) steps, from the II floor of the slowest stage at its most lanes), every stage
    gets the fewest lanes that meet it and every dense stream the narrowest pack that moves a
    sample in a quarter of it; memories are placed at supply prices and with each of LUT, BRAM,
    URAM made 4x dearer; the point with the most samples/s per device wins (FINN's SetFolding,
    with the copies-per-SLR and memory placement search on top).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from ...safe_text import terminal_text
from .cycles import PHASE_DEPTH, stage_macs, stage_phases
from .hw_model import HwModel
from .resources import AXI_PORT, STAGE_FF, STAGE_LUT, fifo, stage_resources

UTILIZATION = 0.8
DDR_EFFICIENCY = 0.7
IO_BYTES = 4  # the kernel reads float inputs and writes float outputs (myproject.cpp)
RESOURCES = ("dsp", "lut", "ff", "bram36", "uram")
ASSUMPTIONS = __doc__.split("Assumptions\n-----------\n")[1].strip()


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
    io_cycles: tuple[int, int] = (0, 0)  # the AXI input and output stages
    slr_copies: list[int] | None = None  # copies placed in each SLR (group of SLRs)
    slrs_per_copy: int = 1  # > 1: a copy too big for one SLR spans that many
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
            f"{terminal_text(self.model)} [{self.variant}, {self.precision}] on {self.part} @ "
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
            f"{self.copies} copies fit (per SLR {self.slr_copies}"
            + (f", each over {self.slrs_per_copy} SLRs" if self.slrs_per_copy > 1 else "")
            + f"; limited by {self.limited_by}); "
            f"{self.samples_per_s_per_copy:,.0f} samples/s per copy, "
            f"{self.samples_per_s:,.0f} samples/s per device"
            + (" (DDR bandwidth bound)" if self.ddr_limited else ""),
        ]
        return "\n".join(lines)


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
        phases = stage_phases(model, layer, layer.lanes)
        res = stage_resources(model, layer)
        for k in RESOURCES:
            total[k] += res[k]
        rows.append(
            LayerEstimate(
                layer.name,
                layer.op,
                layer.engine,
                layer.lanes,
                phases.total,
                phases.read,
                phases.compute,
                phases.write,
                **res,
                macs=stage_macs(layer),
            )
        )
    # the read and write stages, their m_axi ports and the input stream
    for extra in (AXI_PORT, AXI_PORT, fifo(model.input_pack * model.precision.bits)):
        for k, v in extra.items():
            total[k] += v
    total["lut"] += 2 * STAGE_LUT
    total["ff"] += 2 * STAGE_FF
    ii = max([r.cycles for r in rows] + io_cycles)
    latency = critical_path(model, [r.cycles for r in rows]) + sum(io_cycles)
    available = {
        "dsp": part.dsp,
        "lut": part.lut,
        "ff": part.ff,
        "bram36": part.bram36,
        "uram": part.uram,
    }
    slr_copies, limited_by, span = copies_per_slr(total, part.per_slr())
    copies = sum(slr_copies)
    per_copy = model.target.clock_mhz * 1e6 / ii
    throughput = copies * per_copy
    bytes_per_sample = IO_BYTES * (n_input + n_output)
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
        io_cycles=(io_cycles[0], io_cycles[1]),
        slr_copies=slr_copies,
        slrs_per_copy=span,
    )


def copies_per_slr(
    per_copy: dict[str, float], slrs: list[dict[str, float]]
) -> tuple[list[int], str, int]:
    """Copies that fit in each SLR, the resource that limits the most SLRs, and how many SLRs a
    copy spans: one, unless no single SLR holds it (then groups of adjacent SLRs, pooled)."""
    for span in range(1, len(slrs) + 1):
        groups = [
            {k: sum(s[k] for s in slrs[i : i + span]) for k in RESOURCES}
            for i in range(0, len(slrs) - span + 1, span)
        ]
        counts, limit = _fit(per_copy, groups)
        if sum(counts) > 0:
            break
    return counts, limit, span


def _fit(per_copy: dict[str, float], regions: list[dict[str, float]]) -> tuple[list[int], str]:
    counts, limits = [], []
    for avail in regions:
        fits = {
            k: math.floor(UTILIZATION * avail[k] / per_copy[k]) if per_copy[k] > 0 else 10**9
            for k in RESOURCES
        }
        scarce = min(fits, key=fits.get)
        counts.append(max(0, fits[scarce]))
        limits.append(scarce)
    return counts, max(limits, key=limits.count)


def _ratio(a: float, b: float) -> float:
    """a / b; nan when b is 0 (a variant that does not fit the device)."""
    return a / b if b else float("nan")


def critical_path(model: HwModel, cycles: list[int]) -> int:
    """Cycles of the longest input-to-output path through the stages (their sum for a
    sequential network; a residual block's branches run side by side)."""
    done: dict[int, int] = {-1: 0}
    for layer, c in zip(model.layers, cycles, strict=True):
        done[layer.index] = c + max(done[i] for i, _ in model.sources(layer))
    return done[model.layers[-1].index]


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
            f"{e.samples_per_s:>12,.0f} {_ratio(e.samples_per_s, base.samples_per_s):>8.1f}"
        )
        if reference and e.variant in reference:
            value, copies = reference[e.variant]
            ratio = value / ref_base if ref_base else float("nan")
            line += f" {value:>12,.0f} {copies:>6} {ratio:>8.1f}"
        lines.append(line)
    return "\n".join(lines)
