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
    FLOAT_COMPARE_CYCLES,
    PHASE_DEPTH,
    accumulate_ii,
    accumulator_copies,
    pool_ii,
    row_steps,
    sparse_write_iterations,
    stage_total,
    update_latency,
)
from tvm_sparse.codegen.fpga.estimator import estimate
from tvm_sparse.codegen.fpga.hw_model import (
    HwLayer,
    HwModel,
    WeightStore,
    accumulator_pixel_banks,
    split,
)
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


def _body(function: str) -> str:
    """The body of the function whose signature starts ``function`` (a name, or a name and
    the start of its parameters to pick an overload)."""
    start = NNET.index(f" {function}" if "(" in function else f" {function}(")
    return NNET[start : NNET.index("\n}\n", start)]


def test_dependence_pragmas_only_where_the_code_proves_them():
    """Every ``DEPENDENCE`` pragma, and the engine whose code makes it true:

    - ``acc intra false``: the sparse-sparse engines, where a packed column's owners are
      distinct, so one step's scatter-adds never meet;
    - ``acc inter RAW distance = acc_copies true``: the sparse-sparse conv, whose step i adds
      into partial-sum copy i mod acc_copies (a copy is read again acc_copies steps later);
    - ``hist`` / ``mx`` / ``cnt intra RAW false``: the run registers of the k-WTA histogram
      and the sparse max-pool, which write back one address and read another in a step (the
      else branch of ``bin == run_bin`` / ``p != run_p``). No ``inter false`` anywhere."""
    pragmas = re.findall(r"#pragma HLS DEPENDENCE ([^\n]+)", NNET)
    expected = {
        "variable = acc intra false": ("linear_sparse_sparse", "conv2d_sparse_sparse"),
        "variable = acc inter RAW distance = CONFIG_T::acc_copies true": ("conv2d_sparse_sparse",),
        "variable = hist intra RAW false": ("kth_largest_key",),
        "variable = mx intra RAW false": ("maxpool2d(hls::stream<elem",),
        "variable = cnt intra RAW false": ("maxpool2d(hls::stream<elem",),
    }
    assert sorted(pragmas) == sorted(p for p, where in expected.items() for _ in where)
    for pragma, functions in expected.items():
        for function in functions:
            assert f"DEPENDENCE {pragma}" in _body(function), (pragma, function)
    assert "inter false" not in NNET
    conv = _body("conv2d_sparse_sparse")
    assert "acc[copy]" in conv and "if (++copy == CONFIG_T::acc_copies) copy = 0;" in conv


def test_kwta_histograms_are_lane_private_runs():
    """A lane's histogram is its own; the lane keeps its current bin's count in registers and
    touches its RAM only when the bin changes (write one bin, read another), and FindDigit
    takes the register for the bin a lane's run is on."""
    assert "static unsigned hist[CONFIG_T::lanes][256];" in NNET
    body = _body("kth_largest_key")
    assert "if (run_bin[l] < 256) hist[l][run_bin[l]] = run_count[l];" in body
    assert "run_count[l] = hist[l][bin] + 1;" in body
    assert "count += run_bin[l] == (unsigned)d ? run_count[l] : hist[l][d];" in body


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
    # n = 100, 8 lanes: 13 steps; rank 13 + 4 x (histogram 13 at II 1 + scan 256) + select 13;
    # read 100 + write 100 (pack 1); 12 loops of fill
    layer = HwLayer(0, "k", "k", "kwta", "kwta", (100,), (100,), {"k": 10})
    layer.lanes = 8
    compute = 13 + 4 * (13 + 256) + 13
    assert stage_total(_model(layer), layer, 8) == 100 + compute + 100 + 12 * PHASE_DEPTH


def test_sparse_maxpool_cycles_by_hand():
    # 2 x 4 x 4 sparse input, 3 x 3 windows at stride 1 -> 2 x 2 x 2, 2 lanes, dense output.
    # Windows per input row position: 0 -> 1, 1 -> 2, 2 -> 2, 3 -> 1 (same for columns), so the
    # corner (0, 0) lies in 1 window, (1, 1) in 4. Active: (0, 0) always, (1, 1) half the time.
    pool = {"pool": (3, 3), "stride": (1, 1)}
    layer = HwLayer(0, "p", "p", "maxpool2d", "maxpool", (2, 4, 4), (2, 2, 2), pool)
    layer.in_sparse, layer.lanes = True, 2
    freq = np.zeros(32)
    freq[0], freq[5] = 1.0, 0.5
    layer.activity = {"in_freq": freq}
    layer.in_t = layer.out_t = "ap_fixed<8,3,AP_RND,AP_SAT>"
    # clear 4 steps + (1 x 1 + 0.5 x 4 windows + the end marker) at II 1 + emit 4 + write 8
    assert stage_total(_model(layer, "int8"), layer, 2) == 4 + 4 + 4 + 8 + 4 * PHASE_DEPTH
    assert pool_ii(layer) == 1
    layer.in_t = "float"  # the running max's float compare is carried: II 2
    assert pool_ii(layer) == FLOAT_COMPARE_CYCLES == 2
    assert stage_total(_model(layer), layer, 2) == 4 + 2 * 4 + 4 + 8 + 4 * PHASE_DEPTH


def _packed_conv(
    kernel=(2, 2), in_hw=(3, 3), out_c=2, stride=(1, 1), dilation=(1, 1), pad=(0, 0)
) -> HwLayer:
    """A 1 -> ``out_c`` channel sparse-sparse conv, one packed slot per column (owners in
    turn), no residual; sparse input, one lane."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, stride, dilation, pad
    h, w = in_hw
    oh = (h + 2 * pt - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    n_kin = kh * kw
    store = WeightStore(
        "packed",
        {
            "val": np.ones(n_kin, np.float32),
            "owner": (np.arange(n_kin) % out_c).astype(np.uint8),
            "rptr": np.zeros(n_kin + 1, np.uint32),
            "ridx": np.zeros(1, np.uint8),
            "rval": np.zeros(1, np.float32),
        },
        n_kin,
        n_groups=1,
    )
    attrs = {"kernel": kernel, "stride": stride, "dilation": dilation, "pad": pad}
    layer = HwLayer(0, "c", "c", "conv2d", "sparse_sparse", (1, h, w), (out_c, oh, ow), attrs,
                    weights=store)  # fmt: skip
    layer.in_sparse = True
    return layer


def test_sparse_sparse_conv_interleaves_partial_sums():
    """Fixed point: as many accumulator copies as the read-modify-write takes (RAM read 1 +
    add 1), so the ActiveInputs loop runs at II 1; float keeps one copy at II 1 + 4."""
    fixed = _packed_conv()
    fixed.accum_t = "ap_fixed<24,12,AP_RND,AP_SAT>"
    assert update_latency(fixed) == 2
    assert accumulator_copies(fixed) == 2 and accumulate_ii(fixed) == 1
    flt = _packed_conv()  # accum_t float
    assert accumulator_copies(flt) == 1 and accumulate_ii(flt) == 1 + FLOAT_ADD_CYCLES
    # one active input in the corner, every sample: 4 taps one at a time (1 lane), 1 step each
    # (one slot per column): 4 steps + the end marker. Clear 4 pixels, finish 4, write 8.
    fixed.activity = {"in_freq": np.eye(1, 9).ravel()}
    model = _model(fixed, "int8")
    assert stage_total(model, fixed, 1) == 4 + 5 + 4 + 8 + 4 * PHASE_DEPTH
    flt.activity = fixed.activity
    assert stage_total(_model(flt), flt, 1) == 4 + 5 * 5 + 4 + 8 + 4 * PHASE_DEPTH


def _tap_pixels_by_loop(layer: HwLayer, taps: int, y: int, x: int) -> list[list[int]]:
    """The engine's Taps loop, written out: per tap group, the output pixels the valid taps of
    input (y, x) scatter to."""
    kh_n, kw_n = layer.kernel
    (sh, sw), (dh, dw) = layer.attrs["stride"], layer.attrs["dilation"]
    pt, pl = layer.attrs["pad"]
    _, oh, ow = layer.out_shape
    groups = []
    for tg in range(-(-kh_n * kw_n // taps)):
        pixels = []
        for t in range(taps):
            tap = tg * taps + t
            if tap >= kh_n * kw_n:
                continue
            ty, tx = y + pt - tap // kw_n * dh, x + pl - tap % kw_n * dw
            if ty < 0 or tx < 0 or ty % sh or tx % sw or ty // sh >= oh or tx // sw >= ow:
                continue
            pixels.append(ty // sh * ow + tx // sw)
        groups.append(pixels)
    return groups


@pytest.mark.parametrize(
    "kernel,stride,dilation,pad,in_hw,taps",
    [
        ((5, 5), (1, 1), (1, 1), (0, 0), (14, 14), 9),  # the GSC cnn2 fold
        ((5, 5), (1, 1), (1, 1), (0, 0), (14, 14), 2),
        ((3, 3), (1, 1), (1, 1), (1, 1), (8, 8), 3),
        ((3, 3), (2, 2), (1, 1), (1, 1), (9, 9), 9),
        ((3, 3), (1, 1), (2, 2), (2, 2), (7, 7), 4),
        ((1, 7), (1, 1), (1, 1), (0, 3), (1, 12), 7),
        ((3, 3), (1, 1), (1, 1), (0, 0), (3, 3), 9),  # one output pixel
    ],
)
def test_accumulator_pixel_banks_keep_a_steps_taps_apart(kernel, stride, dilation, pad, in_hw,
                                                         taps):  # fmt: skip
    """With ``pixel mod banks`` banks, the taps one step scatters never share a bank at any
    input position (so each bank takes one read-modify-write a cycle), and one bank fewer
    would let two of them meet somewhere (unless it is already the taps' or pixels' count)."""
    layer = _packed_conv(kernel, in_hw, 1, stride, dilation, pad)
    lanes = taps  # one slot a column: a lane a tap
    assert split(layer, lanes).taps == taps
    banks = accumulator_pixel_banks(layer, lanes)
    fewest = min(taps, layer.out_pixels)  # a step's taps reach at most every pixel
    assert fewest <= banks <= layer.out_pixels

    def clash(b: int) -> bool:
        for y in range(in_hw[0]):
            for x in range(in_hw[1]):
                for pixels in _tap_pixels_by_loop(layer, taps, y, x):
                    if len({p % b for p in pixels}) < len(pixels):
                        return True
        return False

    assert not clash(banks)
    assert banks == fewest or clash(banks - 1)


def test_accumulator_planes_are_partitioned_as_counted():
    """The conv's accumulators: copies and output channels completely partitioned, each plane
    cyclic by acc_pixel_banks: the banks the estimator charges (out_c x pixel banks per copy)."""
    conv = _body("conv2d_sparse_sparse")
    assert "acc[CONFIG_T::acc_copies][CONFIG_T::out_c][CONFIG_T::out_h * CONFIG_T::out_w]" in conv
    for pragma in (
        "variable = acc complete dim = 1",
        "variable = acc complete dim = 2",
        "variable = acc cyclic factor = CONFIG_T::acc_pixel_banks dim = 3",
    ):
        assert f"#pragma HLS ARRAY_PARTITION {pragma}\n" in conv


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
