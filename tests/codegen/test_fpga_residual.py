"""Residual networks on the fpga target: ResNet basic blocks (clone + add stages) end to end."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.calibration import forward
from tvm_sparse.codegen.fpga.cycles import PHASE_DEPTH
from tvm_sparse.codegen.fpga.estimator import estimate
from tvm_sparse.codegen.fpga.resources import STAGE_LUT
from tvm_sparse.errors import UnsupportedModelError

from .dataflow_sim import simulate_dataflow
from .test_fpga_cycles import assert_estimate_agrees

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")

# (in channels, out channels, size, stride): identity shortcut, downsample shortcut
BLOCKS = {"identity": (16, 16, 8, 1), "downsample": (16, 32, 8, 2)}


def _block(shortcut: str):
    cin, cout, size, stride = BLOCKS[shortcut]
    return models.resnet_block(cin, cout, size, stride, density=0.1)


@pytest.fixture(scope="module")
def tb_data():
    """Inputs and CPU-module outputs of each block (one golden run each)."""
    x = np.random.default_rng(3).standard_normal((3, 16, 8, 8)).astype(np.float32)
    return {s: (x, golden_outputs(_block(s), x)) for s in BLOCKS}


ENGINES = {  # conv1, conv2, downsample: conv2 reads conv1's ReLU output, the others the clone
    "dense": ["dense", "dense", "dense"],
    "sparse-dense": ["sparse_dense"] * 3,
    "sparse-sparse": ["sparse_dense", "sparse_sparse", "sparse_dense"],
}


@needs_gxx
@pytest.mark.parametrize("variant", ["dense", "sparse-dense", "sparse-sparse"])
@pytest.mark.parametrize("shortcut", ["identity", "downsample"])
def test_resnet_block_csim_matches_cpu(tmp_path, tb_data, shortcut, variant):
    project = compile_fpga(
        _block(shortcut), "fpga", output_dir=tmp_path, variant=variant, tb_data=tb_data[shortcut]
    )
    np.testing.assert_allclose(project._csim.output, project.tb_golden, rtol=1e-5, atol=1e-6)
    # the estimate (activity from other samples) against the cycles the C simulation counted
    other = np.random.default_rng(8).standard_normal((16, 16, 8, 8)).astype(np.float32)
    assert_estimate_agrees(project, other)
    hw = project.hw
    ops = [x.op for x in hw.layers]
    weighted = [x for x in hw.layers if x.weighted]
    if shortcut == "identity":
        assert ops == ["clone", "conv2d", "conv2d", "add"]
    else:
        assert ops == ["clone", "conv2d", "conv2d", "conv2d", "add"]
    assert [x.engine for x in weighted] == ENGINES[variant][: len(weighted)]
    clone, add = hw.layers[0], hw.layers[-1]
    assert add.relu and not add.in_sparse and not add.out_sparse
    # the add sums conv2 (the main branch) and the shortcut: the clone's port 1 or the downsample
    shortcut_src = (0, 1) if shortcut == "identity" else (3, 0)
    assert hw.sources(add) == [(2, 0), shortcut_src]
    assert [x.source for x in hw.layers[1:3]] == ["conv1", "conv2"]
    # the branch with fewer stages holds one sample per extra stage of the main branch
    behind = 2 if shortcut == "identity" else 1
    depth = behind * clone.n_out // clone.pack_out
    top = (tmp_path / "firmware" / "myproject.cpp").read_text()
    assert f"variable = s_input_clone_1 depth = {depth}\n" in top
    assert "variable = s_input_clone_0 depth = 2\n" in top
    assert "stage_conv2_add(s_conv2, " in top


@needs_gxx
def test_resnet_block_fixed_point_and_int8_build(tmp_path, tb_data):
    """The add sums in its accum_t: exact for ap_fixed, a calibrated format for int8."""
    fixed = compile_fpga(
        _block("downsample"),
        {"kind": "fpga", "precision": "ap_fixed<16,6>"},
        output_dir=tmp_path / "fixed",
        tb_data=tb_data["downsample"],
    )
    assert 0 < fixed._csim.max_rel_error < 0.01
    int8 = compile_fpga(
        _block("identity"),
        {"kind": "fpga", "precision": "int8"},
        output_dir=tmp_path / "int8",
        tb_data=tb_data["identity"],
    )
    add = int8.hw.layers[-1]
    # the add is the network's last stage: its output (the logits) leaves in 16 bits
    assert add.accum_t.startswith("ap_fixed<") and add.out_t.startswith("ap_fixed<16,")
    assert int8._csim.max_rel_error < 0.05  # 0.014 measured


def test_resnet_block_estimate_counts_clone_and_add(tb_data):
    """Cycles of the clone and the add are ceil(n / pack) + one pipeline depth; the skip FIFO is
    BRAM in the clone's row; the latency follows the longest branch; the numpy executor of the
    DAG equals the CPU module."""
    x, golden = tb_data["downsample"]
    project = compile_fpga(_block("downsample"), "fpga", tb_data=(x, golden))
    hw = project.hw
    y, _ = forward(hw, x)
    np.testing.assert_allclose(y, golden, rtol=1e-5, atol=1e-5)

    hw.input_pack = 4
    for layer in hw.layers:
        layer.pack_out = 4
    fold_prices = hw.memory_prices
    hw.memory_prices = None  # the device's shares (the fold search's prices are tried below)
    est = estimate(hw)
    rows = {r.name: r for r in est.layers}
    assert list(rows) == ["input_clone", "conv1", "conv2", "downsample", "conv2_add"]
    # clone: 16x8x8 = 1024 values in 4-value beats; add: 32x4x4 = 512 values
    assert rows["input_clone"].cycles == 1024 // 4 + PHASE_DEPTH == 276
    assert rows["conv2_add"].cycles == 512 // 4 + PHASE_DEPTH == 148
    assert rows["conv2_add"].dsp == 4 * 2  # a float adder (2 DSP) per value of a beat
    # the clone's port 1 feeds the downsample (1 stage against 2): one sample of 256 beats x
    # 128 bits, dual port. As BRAM it would be 2 BRAM36 of 512 x 72 (0.075% of the U250's
    # 2688); as dual-port LUTRAM (RAM64M8: 64 deep, 7 bits in 8 LUTs) 4 x ceil(128 / 7) x 8 =
    # 608 LUT (0.035% of 1.728M): the cheaper share wins, beside the stage's control logic
    assert hw.fifo_depth(hw.layers[0], 1) == 256 and hw.fifo_depth(hw.layers[0], 0) == 2
    assert rows["input_clone"].bram36 == 0
    assert rows["input_clone"].lut == STAGE_LUT + 608
    # at prices that make LUT dear, the clone's FIFO goes to BRAM: the residual stages price
    # their memories as every other stage does
    hw.memory_prices = {"lut": 1.0, "ff": 1e-9, "bram36": 1e-6, "uram": 1e-6}
    assert estimate(hw).layers[0].bram36 == 2 and estimate(hw).layers[0].lut == STAGE_LUT
    hw.memory_prices = fold_prices
    io = math.ceil(16 * 64 / 4) + math.ceil(32 * 16 / 4) + 2 * PHASE_DEPTH
    main = sum(rows[n].cycles for n in ("input_clone", "conv1", "conv2", "conv2_add"))
    assert rows["downsample"].cycles < rows["conv1"].cycles + rows["conv2"].cycles
    assert est.latency_cycles == io + main
    table = est.table()
    assert "input_clone" in table and "conv2_add" in table


def test_fixed_parallelism_leaves_clone_and_add_at_their_stream_width(tb_data):
    """A target's ``parallelism`` sets the engines' lanes and turns the auto folding off; a clone
    or an add has no lanes (it is as wide as its streams)."""
    x, golden = tb_data["identity"]
    project = compile_fpga(
        _block("identity"), {"kind": "fpga", "parallelism": 4}, tb_data=(x, golden)
    )
    lanes = {layer.op: layer.lanes for layer in project.hw.layers}
    assert lanes == {"clone": 1, "conv2d": 4, "add": 1}
    assert project.hw.input_pack == 1  # not folded: one value per beat
    assert project.estimate().layers[-1].cycles == 1024 + PHASE_DEPTH


@pytest.mark.parametrize("shortcut", ["identity", "downsample"])
def test_skip_fifo_depth_keeps_dataflow_at_the_estimated_ii(tb_data, shortcut):
    """In a beat-level model of the DATAFLOW pipeline the chosen depths run at the estimated II,
    as fast as an unbounded skip FIFO; shallower ones deadlock (identity: the clone blocks before
    conv1 has its sample) or lose throughput (the shortcut cannot take the next sample)."""
    x, golden = tb_data[shortcut]
    project = compile_fpga(_block(shortcut), "fpga", variant="sparse-dense", tb_data=(x, golden))
    hw = project.hw
    est = estimate(hw)
    # what a stage spends between its read and write beats (the model moves the beats itself;
    # a clone or an add is nothing but beats)
    compute = {
        layer.index: 0 if layer.op in ("clone", "add") else r.cycles - r.read - r.write
        for layer, r in zip(hw.layers, est.layers, strict=True)
    }
    clone = hw.layers[0]
    sample = clone.n_out // clone.pack_out

    def interval(skip_depth: int | None) -> int | None:
        def depth(index: int, port: int) -> int:
            chosen = hw.fifo_depth(hw.layers[index], port)
            return chosen if skip_depth is None or chosen == 2 else skip_depth

        done = simulate_dataflow(hw, compute, depth, samples=5)
        return None if done is None else done[-1] - done[-2]

    chosen = interval(None)
    assert chosen == interval(10**9) == est.ii_cycles
    if shortcut == "identity":  # two samples: one per main-branch stage
        assert hw.fifo_depth(clone, 1) == 2 * sample
        assert interval(sample - 1) is None
        assert interval(sample) > 1.5 * chosen
    else:  # one sample: the main branch has one stage more than the shortcut
        assert hw.fifo_depth(clone, 1) == sample
        assert interval(2) > 1.5 * chosen


def _two_blocks():
    """A stem conv, an identity block, a downsample block and a linear head: an add's output is
    the next clone's input."""
    g, rng = models._Graph(), np.random.default_rng(0)
    x = g.op("Relu", [models._conv_bn(g, rng, "input", (8, 3, 3), 0.5, 1, "stem")], "r")[0]
    for i, (cin, cout, stride) in enumerate([(8, 8, 1), (8, 16, 2)]):
        y = models._conv_bn(g, rng, x, (cout, cin, 3), 0.2, stride, f"b{i}c1")
        y = g.op("Relu", [y], f"b{i}r1")[0]
        y = models._conv_bn(g, rng, y, (cout, cout, 3), 0.2, 1, f"b{i}c2")
        if stride != 1 or cin != cout:
            x = models._conv_bn(g, rng, x, (cout, cin, 1), 0.5, stride, f"b{i}ds")
        x = g.op("Relu", [g.op("Add", [y, x], f"b{i}add")[0]], f"b{i}relu")[0]
    x = g.op("Flatten", [x], "flatten", axis=1)[0]
    w = rng.standard_normal((10, 16 * 4 * 4)).astype(np.float32) * 0.1
    x = models._gemm(g, x, w, np.zeros(10), "fc")
    return g.model("two_blocks", [1, 3, 8, 8], x, [1, 10])


@needs_gxx
def test_two_blocks_in_a_row_csim_matches_cpu(tmp_path):
    model = _two_blocks()
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    project = compile_fpga(
        model, "fpga", output_dir=tmp_path, tb_data=(x, golden_outputs(model, x))
    )
    np.testing.assert_allclose(project._csim.output, project.tb_golden, rtol=1e-5, atol=1e-6)
    hw = project.hw
    assert [layer.op for layer in hw.layers].count("clone") == 2
    second = hw.layer("b0c2_add_clone")
    assert hw.producers(second)[0].op == "add"  # the first block's add feeds the second clone
    assert [hw.layer(n).engine for n in ("b0c2", "b1c2")] == ["sparse_sparse"] * 2


@needs_gxx
def test_kwta_on_a_branch_csim_matches_cpu(tmp_path):
    """A value read by a (boosted) k-WTA and by the add: the k-WTA's own bindings count as one
    consumer, the add as the other, so the value is cloned."""
    g, rng = models._Graph(), np.random.default_rng(0)
    y = models._conv_bn(g, rng, "input", (8, 4, 3), 0.5, 1, "stem")
    boost = models._boost_factor(rng, (1, 8, 1, 1), 0.125)
    kept = models._kwta(g, y, [1, 8, 8, 8], 64, "kwinner", boost)
    model = g.model("kwta_branch", [1, 4, 8, 8], g.op("Add", [kept, y], "add")[0], [1, 8, 8, 8])
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    project = compile_fpga(
        model, "fpga", output_dir=tmp_path, tb_data=(x, golden_outputs(model, x))
    )
    np.testing.assert_allclose(project._csim.output, project.tb_golden, rtol=1e-5, atol=1e-6)
    hw = project.hw
    assert [layer.op for layer in hw.layers] == ["conv2d", "clone", "kwta", "add"]
    assert hw.sources(hw.layers[-1]) == [(2, 0), (1, 1)] and hw.layers[2].boost is not None


def _branches(join: str, n: int = 2):
    """input -> ``n`` 1x1 convs joined by Concat, or by a chain of Adds."""
    g = models._Graph()
    rng = np.random.default_rng(0)
    branches = []
    for i in range(n):
        w = g.const(f"b{i}.weight", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))
        branches.append(g.op("Conv", ["input", w], f"b{i}", kernel_shape=[1, 1])[0])
    if join == "concat":
        y = g.op("Concat", branches, "concat", axis=1)[0]
        return g.model("concat", [1, 4, 8, 8], y, [1, 4 * n, 8, 8])
    y = branches[0]
    for i, other in enumerate(branches[1:]):
        y = g.op("Add", [y, other], f"add{i}")[0]
    return g.model("adds", [1, 4, 8, 8], y, [1, 4, 8, 8])


def test_branches_the_backend_cannot_join_are_named():
    with pytest.raises(UnsupportedModelError, match=r"op 'relax.concat'"):
        compile_fpga(_branches("concat"), "fpga")
    with pytest.raises(UnsupportedModelError, match="feeds 3 ops"):
        compile_fpga(_branches("add", 3), "fpga")


def test_golden_cpu_module_matches_onnxruntime(tb_data):
    """The CPU module the C simulation is compared with is right: onnxruntime agrees."""
    from ..conftest import ort_run

    for shortcut, (x, golden) in tb_data.items():
        expected = np.concatenate([ort_run(_block(shortcut), x[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(golden, expected.reshape(len(x), -1), rtol=1e-4, atol=1e-5)
