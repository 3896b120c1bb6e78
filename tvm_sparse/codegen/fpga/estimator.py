"""Analytical (FINN-style) estimates of cycles, resources, copies per device and samples/s.

It reads the same ``HwModel`` the writer turns into C++, so the loops it counts are the loops of
the generated engines (``templates/firmware/nnet_sparse.h``) at the folding (``lanes``, stream
``pack``) the model holds: a stage's cycles come from ``cycles``, its resources from
``resources``, and ``folding`` chooses the lanes. Nothing is synthesized: these are estimates,
and every number rests on the assumptions below (they are written into every estimate.json).

Assumptions
-----------
Timing

1. Every pipelined loop runs at II = 1 at the target clock; each phase of a stage (read, compute,
   write) adds ``PHASE_DEPTH`` = 20 cycles of pipeline fill. Floating-point accumulation is
   assumed to be split into interleaved partial sums so the adder latency does not raise the II
   (Vitis does not reassociate float adds by itself; fixed point has no such issue).
2. A stage processes one sample at a time and its phases run one after the other, as in the
   generated code: ``cycles = read + compute + write + depth``. Stages overlap across samples
   (DATAFLOW), so the network's initiation interval is the slowest stage and the latency the sum
   along the longest path (a residual block's two branches run side by side). A clone and a
   residual add are one loop of ``ceil(n / pack)`` beats; the clone's FIFO towards the branch
   with fewer stages holds one sample per extra stage of the other branch (BRAM, counted in the
   clone's resources), so the branches never stall the clone.
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

from ...safe_text import terminal_text
from .cycles import PHASE_DEPTH, stage_cycles
from .hw_model import HwModel
from .resources import STAGE_FF, STAGE_LUT, stage_resources

UTILIZATION = 0.8
DDR_EFFICIENCY = 0.7
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
            f"{self.copies} copies fit (limited by {self.limited_by}); "
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
    latency = critical_path(model, [r.cycles for r in rows]) + sum(io_cycles)
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
            f"{e.samples_per_s:>12,.0f} {e.samples_per_s / base.samples_per_s:>8.1f}"
        )
        if reference and e.variant in reference:
            value, copies = reference[e.variant]
            ratio = value / ref_base if ref_base else float("nan")
            line += f" {value:>12,.0f} {copies:>6} {ratio:>8.1f}"
        lines.append(line)
    return "\n".join(lines)
