"""Cycles of one stage: the pipelined loops of its engine in ``nnet_sparse.h``, counted.

Every engine is written as one pipelined loop per phase with its lanes unrolled inside and its
II in the pragma (assumptions 1-6 of ``estimator``). ``stage_loops`` lists those loops with
their trip counts and IIs at a given number of lanes; a stage's cycles are the iterations times
the II of each loop plus ``PHASE_DEPTH`` per loop, which is exactly what the C simulation's
counting mode (``NNET_COUNT_CYCLES``) ticks. Trip counts that depend on the data (active inputs,
the gaps a sparse writer skips) are expectations over the activity measured by ``calibrate``
on sample inputs, or over the analytical densities when there are none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...ir.layers import CONV2D
from .hw_model import HwLayer, HwModel, layer_cached, max_row_nnz, split

PHASE_DEPTH = 20  # pipeline fill of one loop (NNET_PIPELINE_DEPTH)
FLOAT_ADD_CYCLES = 4  # latency of a float add at 300 MHz (Vitis fadd): a float running sum's II
RAM_READ_CYCLES = 1  # a RAM read's latency, before a read-modify-write can add
# k-WTA lane histograms: each lane counts the bin it saw last in a register and touches its RAM
# only when the bin changes (write the old, read the new: UG1399's histogram), so II = 1
HISTOGRAM_II = 1
FLOAT_COMPARE_CYCLES = 2  # a float compare-and-select carried from one iteration to the next
MAX_LANES = 4096


@dataclass(frozen=True)
class Loop:
    """One pipelined loop of a stage: ``iterations`` (expected, per sample) at ``ii``."""

    name: str
    phase: str  # read | compute | write
    iterations: float
    ii: int = 1

    @property
    def cycles(self) -> float:
        return self.iterations * self.ii


def update_latency(layer: HwLayer) -> int:
    """Cycles from reading an accumulator to when its sum can be read again: a float add's
    latency or one fixed-point cycle, after a RAM read for the banked sparse-sparse conv."""
    add = FLOAT_ADD_CYCLES if layer.accum_t == "float" else 1
    if layer.engine == "sparse_sparse" and layer.op == CONV2D:
        return RAM_READ_CYCLES + add
    return add


def accumulator_copies(layer: HwLayer) -> int:
    """Interleaved partial-sum copies of the sparse-sparse conv's RAM accumulators: fixed point
    keeps ``update_latency`` of them and iteration i adds into copy i mod copies, so no
    iteration reads a sum the one before it is still writing (II 1; Finish adds the copies).
    Float keeps one (the copies' sum would cost out_c float adders per extra copy)."""
    if layer.engine == "sparse_sparse" and layer.op == CONV2D and layer.accum_t != "float":
        return update_latency(layer)
    return 1


def accumulate_ii(layer: HwLayer) -> int:
    """II of a loop that adds into the same accumulator every iteration: 1 for fixed point (in
    registers, or the sparse-sparse conv's RAM banks in interleaved copies); a float add's
    latency, after a RAM read for the banked sparse-sparse conv."""
    return -(-update_latency(layer) // accumulator_copies(layer))


def pool_ii(layer: HwLayer) -> int:
    """II of the sparse max-pool's loop: the window it updates is held in registers (written
    back when the window changes), so the carried step is the running max: a fixed-point
    compare (one cycle) or a float compare."""
    return FLOAT_COMPARE_CYCLES if layer.in_t == "float" else 1


def _row_nnz(layer: HwLayer) -> np.ndarray:
    ptr = layer.weights.arrays["ptr"]
    return layer_cached(layer, "rows", lambda: np.diff(ptr.astype(np.int64)))


def _col_residual(layer: HwLayer) -> np.ndarray:
    rptr = layer.weights.arrays["rptr"]
    return layer_cached(layer, "res", lambda: np.diff(rptr.astype(np.int64)))


def row_steps(layer: HwLayer, lanes: int | None = None) -> int:
    """Steps of the dense / sparse-dense loop before pixel groups: the sum over filters of
    their steps (conv), or over groups of PE rows of their longest row's (linear)."""
    par = split(layer, lanes)
    if layer.engine == "dense":
        per_row = np.full(layer.out_shape[0], math.ceil(layer.n_kin / par.simd), np.int64)
    else:
        rows = _row_nnz(layer)
        per_row = np.maximum(1, -(-rows // par.simd))
    if layer.op == CONV2D:
        return int(per_row.sum())
    groups = -(-per_row.size // par.pe)
    padded = np.ones(groups * par.pe, np.int64)
    padded[: per_row.size] = per_row
    return int(padded.reshape(groups, par.pe).max(axis=1).sum())


def column_steps(layer: HwLayer, lanes: int | None = None) -> np.ndarray:
    """Steps of each packed column of a sparse-sparse layer: its slots ``slots`` at a time
    beside its residual ``res_lanes`` at a time, at least one."""
    par = split(layer, lanes)
    packed = math.ceil(layer.weights.n_groups / par.slots)
    res = -(-_col_residual(layer) // par.res_lanes)
    return np.maximum(1, np.maximum(packed, res))


def input_steps(layer: HwLayer, lanes: int | None = None) -> np.ndarray:
    """Steps a sparse-sparse layer spends on each input position when it is active: its
    column's (linear), or per input channel the sum over tap groups of their longest column's
    (conv), broadcast over the channel's positions."""
    steps = column_steps(layer, lanes)
    if layer.op != CONV2D:
        return steps
    par = split(layer, lanes)
    taps_total = layer.kernel[0] * layer.kernel[1]
    groups = -(-taps_total // par.taps)
    per_tap = np.ones((layer.in_shape[0], groups * par.taps), np.int64)
    per_tap[:, :taps_total] = steps.reshape(layer.in_shape[0], taps_total)
    per_channel = per_tap.reshape(layer.in_shape[0], groups, par.taps).max(axis=2).sum(axis=1)
    return np.repeat(per_channel, layer.in_shape[1] * layer.in_shape[2])


def pool_windows(layer: HwLayer) -> np.ndarray:
    """Windows each input position of a max-pool lies in (at least one cycle each)."""
    _, h, w = layer.in_shape
    (ph, pw), (sh, sw) = layer.attrs["pool"], layer.attrs["stride"]
    _, oh, ow = layer.out_shape

    def count(n: int, pool: int, stride: int, out: int) -> np.ndarray:
        pos = np.arange(n)
        hi = np.minimum(pos // stride, out - 1)
        lo = np.where(pos - pool + 1 > 0, (pos - pool + stride) // stride, 0)
        return np.maximum(hi - lo + 1, 0)

    per = np.outer(count(h, ph, sh, oh), count(w, pw, sw, ow)).ravel()
    return np.tile(np.maximum(per, 1), layer.in_shape[0])


def _active_sum(layer: HwLayer, cost: np.ndarray) -> float:
    """Expected sum of ``cost`` over the active input positions of one sample."""
    freq = (layer.activity or {}).get("in_freq")
    if freq is not None and freq.size == cost.size:
        return float(np.dot(freq, cost))
    return float(layer.in_density * cost.sum())


def sparse_write_iterations(masks: np.ndarray, lanes: int) -> float:
    """Mean iterations of ``write_all``'s sparse loop over the samples' non-zero ``masks``
    [S, N] (end marker included): a non-zero per cycle, or ``lanes`` empty positions."""
    n = masks.shape[1]
    total = 0.0
    for row in masks:
        nz = np.flatnonzero(row)
        starts = np.concatenate(([0], nz[:-1] + 1)) if nz.size else np.zeros(0, np.int64)
        gaps = nz - starts
        tail = n - (nz[-1] + 1 if nz.size else 0)
        total += float((gaps // lanes).sum()) + nz.size + math.ceil(tail / lanes) + 1
    return total / max(1, masks.shape[0])


def _write_loop(model: HwModel, layer: HwLayer, lanes: int) -> Loop:
    n = layer.n_out
    if not layer.out_sparse:
        return Loop("WriteBeats", "write", math.ceil(n / layer.pack_out))
    masks = (layer.activity or {}).get("out_masks")
    if masks is not None and masks.shape[1] == n:
        return Loop("WriteNonZeros", "write", sparse_write_iterations(masks, lanes))
    nnz = layer.out_density * n
    return Loop("WriteNonZeros", "write", max(math.ceil(n / lanes), math.ceil(nnz)) + 1)


def stage_loops(model: HwModel, layer: HwLayer, lanes: int) -> list[Loop]:
    """The pipelined loops of ``layer``'s engine at ``lanes`` lanes, in program order."""
    if layer.op in ("clone", "add"):  # nnet::clone_stream / residual_add: a beat per cycle
        name = "CloneBeats" if layer.op == "clone" else "AddBeats"
        return [Loop(name, "compute", math.ceil(layer.n_in / model.pack_in(layer)))]
    pack_in = model.pack_in(layer)
    n_in, n_out = layer.n_in, layer.n_out
    read = [Loop("ReadBeats", "read", math.ceil(n_in / pack_in))]
    steps = math.ceil(n_in / lanes)
    if layer.engine in ("dense", "sparse_dense"):
        par = split(layer, lanes)
        groups = math.ceil(layer.out_pixels / par.pe) if layer.op == CONV2D else 1
        iters = row_steps(layer, lanes) * groups
        compute = [Loop("Steps", "compute", iters, accumulate_ii(layer))]
    elif layer.engine == "sparse_sparse":
        read = []  # one active input per step of the compute loop
        active = Loop(
            "ActiveInputs",
            "compute",
            _active_sum(layer, input_steps(layer, lanes)) + 1,  # + the end marker
            accumulate_ii(layer),
        )
        if layer.op == CONV2D:
            pixels = layer.out_pixels
            compute = [
                Loop("ClearAccumulators", "compute", pixels),
                active,
                Loop("Finish", "compute", pixels),
            ]
        else:  # register accumulators, cleared in one cycle (no loop)
            compute = [active, Loop("Finish", "compute", math.ceil(layer.out_shape[0] / lanes))]
    elif layer.engine == "kwta":
        compute = [Loop("Rank", "compute", steps)]
        for _ in range(4):
            compute += [
                Loop("Histogram", "compute", steps, HISTOGRAM_II),
                Loop("FindDigit", "compute", 256),
            ]
        compute.append(Loop("Select", "compute", steps))
    elif layer.engine == "maxpool":
        out_steps = math.ceil(n_out / lanes)
        if layer.in_sparse:
            read = []
            compute = [
                Loop("ClearCounts", "compute", out_steps),
                Loop(
                    "ActiveInputs",
                    "compute",
                    _active_sum(layer, pool_windows(layer)) + 1,
                    pool_ii(layer),
                ),
                Loop("Emit", "compute", out_steps),
            ]
        else:
            compute = [Loop("Windows", "compute", out_steps)]
    elif layer.engine == "softmax":  # float: max, sum of exp (a running sum), outputs
        compute = [
            Loop("Max", "compute", n_in),
            Loop("ExpSum", "compute", n_in, FLOAT_ADD_CYCLES),
            Loop("Outputs", "compute", n_in),
        ]
    else:  # relu
        compute = [Loop("Lanes", "compute", steps)]
    return read + compute + [_write_loop(model, layer, lanes)]


def unlooped_cycles(layer: HwLayer) -> int:
    """Single cycles outside any loop: the register accumulators' clear of a sparse-sparse
    linear layer."""
    return 1 if layer.engine == "sparse_sparse" and layer.op != CONV2D else 0


def stage_macs(layer: HwLayer) -> float:
    """Multiply-adds the stage actually does per sample (expected)."""
    if layer.engine == "dense":
        return float(layer.dense_macs)
    if layer.engine == "sparse_dense":
        return float(_row_nnz(layer).sum() * layer.out_pixels)
    if layer.engine == "sparse_sparse":
        w = layer.weights
        taps_total = layer.kernel[0] * layer.kernel[1]
        valid = layer.out_pixels / (layer.n_in / layer.in_shape[0]) if layer.op == CONV2D else 1.0
        active_in = layer.in_density * layer.n_in
        return active_in * (w.nnz / layer.n_kin) * taps_total * min(1.0, valid)
    return 0.0


@dataclass(frozen=True)
class StagePhases:
    """One stage's cycles per sample: each phase's loop cycles (iterations x II, without
    pipeline fill) and the whole stage's (with each loop's fill)."""

    read: int
    compute: int
    write: int
    total: int


def stage_phases(model: HwModel, layer: HwLayer, lanes: int) -> StagePhases:
    """The cycles of one stage with ``lanes`` lanes, from one listing of its loops."""
    loops = stage_loops(model, layer, lanes)
    phase = {p: math.ceil(sum(x.cycles for x in loops if x.phase == p)) for p in ("read",
             "compute", "write")}  # fmt: skip
    phase["compute"] += unlooped_cycles(layer)
    cycles = sum(x.cycles for x in loops) + unlooped_cycles(layer)
    return StagePhases(**phase, total=math.ceil(cycles) + PHASE_DEPTH * len(loops))


def stage_total(model: HwModel, layer: HwLayer, lanes: int) -> int:
    """Cycles of one stage per sample: its loops' cycles plus each loop's pipeline fill."""
    return stage_phases(model, layer, lanes).total


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
