"""The estimator's cycles against the generated code: the loops ``cycles.py`` counts are the loops
``nnet_sparse.h`` runs, checked by the C simulation's cycle counting (``NNET_COUNT_CYCLES``) and
by cycle counts worked out by hand for small layers."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.calibration import calibrate
from tvm_sparse.codegen.fpga.cycle_check import agreement_table, cycle_agreement
from tvm_sparse.codegen.fpga.cycles import (
    FLOAT_ADD_CYCLES,
    PHASE_DEPTH,
    accumulate_ii,
    row_steps,
    sparse_write_iterations,
    stage_total,
)
from tvm_sparse.codegen.fpga.estimator import estimate
from tvm_sparse.codegen.fpga.hw_model import HwLayer, HwModel, WeightStore
from tvm_sparse.codegen.fpga.target import parse_fpga_target
from tvm_sparse.codegen.fpga.writer import TEMPLATES

NNET = (TEMPLATES / "firmware" / "nnet_sparse.h").read_text()
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def test_every_pipelined_loop_ticks_its_ii():
    """Each ``PIPELINE II = x`` is followed by ``NNET_TICK(x)`` in the same loop body, and
    every tick but the single-cycle register steps is inside a pipelined loop."""
    pipelines = list(re.finditer(r"#pragma HLS PIPELINE II = (\S+)\n", NNET))
    assert len(pipelines) >= 20
    for m in pipelines:
        body = NNET[m.end() : m.end() + 200]
        tick = re.search(r"NNET_TICK\(([^)]+)\);", body)
        assert tick and tick.group(1) == m.group(1), NNET[m.start() : m.end() + 200]


def test_dependence_false_only_where_packing_proves_it():
    """``DEPENDENCE ... false`` appears only in the sparse-sparse engines, on the accumulators a
    packed column's distinct owners write (intra-iteration), never inter-iteration."""
    pragmas = re.findall(r"#pragma HLS DEPENDENCE ([^\n]+)", NNET)
    assert pragmas == ["variable = acc intra false"] * 2
    for engine in ("linear_sparse_sparse", "conv2d_sparse_sparse"):
        start = NNET.index(f"void {engine}(")
        body = NNET[start : NNET.index("\n}\n", start)]
        assert "DEPENDENCE variable = acc intra false" in body


def test_kwta_histograms_are_lane_private():
    assert "static unsigned hist[CONFIG_T::lanes][256];" in NNET
    assert "hist[l][(key[j] >> shift) & 255u]++" in NNET


# --- hand-computed cycle counts ----------------------------------------------------------------
def _model(layer: HwLayer, precision: str = "float") -> HwModel:
    target = parse_fpga_target({"kind": "fpga", "precision": precision})
    return HwModel("m", "sparse-dense", target, [layer], layer.in_shape, layer.out_shape, 1)


def _csr_linear(rows: list[int], lanes: int, pe_rows: int = 1) -> HwLayer:
    ptr = np.concatenate(([0], np.cumsum(rows))).astype(np.uint32)
    nnz = int(ptr[-1])
    store = WeightStore(
        "csr",
        {"val": np.ones(nnz, np.float32), "off": np.zeros(nnz, np.uint32), "ptr": ptr},
        nnz,
    )
    layer = HwLayer(0, "fc", "fc", "linear", "sparse_dense", (16,), (len(rows),), weights=store)
    layer.lanes = lanes
    return layer


def test_sparse_dense_linear_steps_by_hand():
    # rows of 3, 0, 5, 2 non-zeros; lanes 4 = SIMD min(4, longest row 5) = 4, PE 1:
    # steps per row max(1, ceil(nnz / 4)) = 1, 1, 2, 1 -> 5 steps
    layer = _csr_linear([3, 0, 5, 2], lanes=4)
    assert row_steps(layer) == 5
    # lanes 10 = SIMD 5 x PE 2: per row 1, 1, 1, 1; groups (0, 1) and (2, 3) -> 1 + 1
    layer.lanes = 10
    assert row_steps(layer) == 2
    # lanes 2 = SIMD 2, PE 1: 2, 1, 3, 1 -> 7 steps; float accumulator: II 4 each.
    # read 16 values (pack 1) + 7 * 4 + write 4 values (pack 1), three loops of fill
    layer.lanes = 2
    model = _model(layer)
    assert accumulate_ii(layer) == FLOAT_ADD_CYCLES == 4
    assert stage_total(model, layer, 2) == 16 + 7 * 4 + 4 + 3 * PHASE_DEPTH


def test_fixed_point_accumulates_at_ii_1():
    layer = _csr_linear([3, 0, 5, 2], lanes=2)
    layer.accum_t = "ap_fixed<32,12,AP_RND,AP_SAT>"
    assert accumulate_ii(layer) == 1
    assert stage_total(_model(layer), layer, 2) == 16 + 7 + 4 + 3 * PHASE_DEPTH


def test_kwta_cycles_by_hand():
    # n = 100, 8 lanes: 13 steps; rank 13 + 4 x (histogram 13 at II 2 + scan 256) + select 13;
    # read 100 + write 100 (pack 1); 12 loops of fill
    layer = HwLayer(0, "k", "k", "kwta", "kwta", (100,), (100,), {"k": 10})
    layer.lanes = 8
    compute = 13 + 4 * (2 * 13 + 256) + 13
    assert stage_total(_model(layer), layer, 8) == 100 + compute + 100 + 12 * PHASE_DEPTH


def test_sparse_write_iterations_by_hand():
    # 10 positions, non-zeros at 1 and 9, 4 lanes: [0..3] emits 1; [2..5] empty, skip to 6;
    # [6..9] emits 9; then the end marker: 4 iterations
    mask = np.zeros((1, 10), bool)
    mask[0, [1, 9]] = True
    assert sparse_write_iterations(mask, 4) == 4
    # all zero: ceil(10 / 4) = 3 skips + end marker; all non-zero: 10 + end marker
    assert sparse_write_iterations(np.zeros((1, 10), bool), 4) == 4
    assert sparse_write_iterations(np.ones((1, 10), bool), 4) == 11
    # two samples average
    assert sparse_write_iterations(np.stack([mask[0], np.ones(10, bool)]), 4) == 7.5


# --- the C simulation's counts --------------------------------------------------------------------
def assert_estimate_agrees(project, other_inputs: np.ndarray, tolerance: float = 0.10) -> None:
    """The estimate, with the activity measured on ``other_inputs`` (not the testbench samples
    the C simulation counted on), within ``tolerance`` of the counted cycles at every stage
    (the AXI input and output, every layer) and at the network's II. The other csim tests call
    this on the projects they build (tiny CNN in every variant, MLP, GSC super-sparse)."""
    calibrate(project.hw, other_inputs)
    est = estimate(project.hw)
    rows = cycle_agreement(est, project.csim_result.stage_cycles)
    assert len(rows) == len(project.hw.layers) + 2
    assert max(abs(r.rel_error) for r in rows) <= tolerance, agreement_table(rows)
    counted_ii = max(r.counted for r in rows)
    assert abs(est.ii_cycles - counted_ii) <= tolerance * counted_ii, agreement_table(rows)


@needs_gxx
def test_counting_sees_a_change_in_the_code(tmp_path):
    """The counts come from the compiled loops: a stage given more lanes counts fewer cycles,
    and the estimate follows."""
    model = models.pruned_mlp(layers=2, hidden=64, in_features=32, out_features=10, density=0.3)
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    data = (x, golden_outputs(model, x))
    other = np.random.default_rng(4).standard_normal((16, 32)).astype(np.float32)
    counts = []
    for lanes in (1, 8):
        target = {"kind": "fpga", "parallelism": lanes}
        project = compile_fpga(model, target, output_dir=tmp_path / str(lanes), tb_data=data)
        counts.append(sum(r.counted for r in project.cycle_agreement()[1:-1]))
        assert_estimate_agrees(project, other)
    assert counts[1] < counts[0] / 2
