"""C simulation of generated HLS projects against the CPU module (g++, no vendor tools)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.hw_model import accumulator_pixel_banks, split
from tvm_sparse.errors import TvmSparseError

from .test_fpga_cycles import assert_estimate_agrees

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


@pytest.fixture(scope="module")
def tb_data():
    """Inputs and CPU-module outputs, one golden run per tiny model (with / without boosting)."""
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32)).astype(np.float32)
    return {b: (x, golden_outputs(models.tiny_sparse_cnn(boosting=b), x)) for b in (False, True)}


@pytest.mark.parametrize(
    "variant,boosting",
    [("sparse-sparse", False), ("sparse-sparse", True), ("sparse-dense", False), ("dense", False)],
)
def test_tiny_cnn_csim_matches_cpu(tmp_path, tb_data, variant, boosting):
    project = compile_fpga(
        models.tiny_sparse_cnn(boosting=boosting),
        "fpga",
        output_dir=tmp_path,
        variant=variant,
        tb_data=tb_data[boosting],
    )
    result = project._csim
    assert result is not None and result.ok
    np.testing.assert_allclose(result.output, project.tb_golden, rtol=1e-5, atol=1e-6)
    assert result.output.shape == (3, 12)
    # the engines the variant asks for are the ones generated
    engines = [layer.engine for layer in project.hw.layers if layer.weighted]
    expected = {
        "sparse-sparse": ["sparse_dense", "sparse_sparse", "sparse_sparse", "sparse_sparse"],
        "sparse-dense": ["sparse_dense", "sparse_dense", "sparse_dense", "dense"],
        "dense": ["dense"] * 4,
    }[variant]
    assert engines == expected
    other = np.random.default_rng(5).standard_normal((16, 1, 32, 32)).astype(np.float32)
    assert_estimate_agrees(project, other)
    for name in ("build_prj.tcl", "Makefile", "host/host.cpp", "myproject_test.cpp"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "tb_data" / "tb_output_predictions.dat").is_file()


def test_csim_mismatch_is_an_error(tmp_path, tb_data):
    project = compile_fpga(
        models.tiny_sparse_cnn(), "fpga", output_dir=tmp_path, run_csim=False, tb_data=tb_data[0]
    )
    golden = tmp_path / "tb_data" / "tb_output_predictions.dat"
    bad = project.tb_golden.copy()
    bad[0, 0] += 1.0
    golden.write_text("\n".join(" ".join(f"{v:.9g}" for v in row) for row in bad) + "\n")
    with pytest.raises(TvmSparseError, match="does not match"):
        project.csim()


def test_mlp_with_relu_csim_and_fixed_point_error(tmp_path):
    """ReLU activations feed sparse-sparse engines; ap_fixed reports its error, no exception."""
    model = models.pruned_mlp(layers=3, hidden=64, in_features=32, out_features=10, density=0.3)
    x = np.random.default_rng(2).standard_normal((4, 32)).astype(np.float32)
    data = (x, golden_outputs(model, x))
    exact = compile_fpga(model, "fpga", output_dir=tmp_path / "float", tb_data=data)
    assert exact._csim.ok
    fixed = compile_fpga(
        model,
        {"kind": "fpga", "precision": "ap_fixed<16,6>"},
        output_dir=tmp_path / "fixed",
        tb_data=data,
    )
    other = np.random.default_rng(6).standard_normal((16, 32)).astype(np.float32)
    assert_estimate_agrees(exact, other)
    assert_estimate_agrees(fixed, other)
    err = fixed._csim
    assert err.max_abs_error > 0  # quantization changes the numbers...
    assert err.max_rel_error < 0.01  # ...by little at 16 bits
    assert "ap_fixed<16,6" in (tmp_path / "fixed" / "firmware" / "parameters.h").read_text()
    int8 = compile_fpga(
        model, {"kind": "fpga", "precision": "int8"}, output_dir=tmp_path / "int8", tb_data=data
    )
    assert int8._csim.max_rel_error > err.max_rel_error
    assert int8._csim.to_dict()["mismatches"] > 0


@pytest.mark.slow
def test_gsc_super_sparse_csim_matches_cpu(tmp_path):
    project = compile_fpga(
        models.gsc_sparse_cnn(super_sparse=True), "fpga", output_dir=tmp_path, tb_samples=4
    )
    result = project._csim
    np.testing.assert_allclose(result.output, project.tb_golden, rtol=1e-5, atol=1e-6)
    assert result.top1_agreement == 1.0
    other = np.random.default_rng(7).standard_normal((16, *project.hw.input_shape))
    assert_estimate_agrees(project, other.astype(np.float32))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_kwta_ranks_nan_and_inf_like_the_cpu_and_onnxruntime(tmp_path):
    """NaN (either sign) ranks above +inf and takes a winner's place but is never kept; a row
    whose k-th largest is NaN keeps nothing; infinities rank and are kept as values. The
    testbench reads and compares NaN / Inf (a NaN matches only a NaN)."""
    from ..conftest import ort_run

    model = models.kwta_model((1, 64), 8)
    x = np.random.default_rng(0).standard_normal((6, 64)).astype(np.float32)
    x[0, [3, 9]] = np.nan
    x[1, :10] = np.nan  # the k-th largest is NaN: nothing is kept
    x[2, [1, 2]], x[2, 5] = np.inf, -np.inf
    x[3, 4] = -np.nan  # a NaN with the sign bit set
    x[4, :] = np.nan
    x[4, :3] = 1.0
    expected = np.concatenate([ort_run(model, x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(golden_outputs(model, x), expected)
    project = compile_fpga(model, "fpga", output_dir=tmp_path, tb_data=(x, expected))
    assert project._csim.ok
    np.testing.assert_array_equal(project._csim.output, expected)
    assert np.isinf(expected[2]).any() and not expected[1].any()


def test_compare_matches_nan_with_nan_only():
    from tvm_sparse.codegen.fpga.csim import compare

    golden = np.array([[1.0, np.nan, np.inf, -np.inf]], np.float32)
    assert compare(golden.copy(), golden, 1e-5, 1e-5)[2] == 0
    wrong = np.array([[1.0, 0.0, np.inf, np.inf]], np.float32)  # NaN lost, -inf flipped
    assert compare(wrong, golden, 1e-5, 1e-5)[2] == 2
    assert compare(np.array([[1.0, np.nan, np.nan, -np.inf]], np.float32), golden, 1, 1)[2] == 1


def _overlapping_pools_cnn() -> object:
    """conv 3x3 -> k-WTA -> max-pool 3x3 stride 1 -> conv 3x3 -> k-WTA -> max-pool 3x3 stride 2
    -> linear: every input of an overlapping pool lies in up to 9 windows, so successive steps
    of the sparse max-pool go back and forth between windows (the run registers' write-back),
    and the sparse-sparse conv's successive inputs add into the same output pixels."""
    rng = np.random.default_rng(11)
    g = models._Graph()
    x, in_ch, size = "input", 1, 12
    for i, (ch, k, stride) in enumerate([(6, 60, 1), (8, 40, 2)]):
        mask = models._per_unit_mask(rng, ch, in_ch * 9, 0.5)
        w = models._uniform(rng, (ch, in_ch * 9), int(mask[0].sum())) * mask
        x = models._conv(g, x, w.reshape(ch, in_ch, 3, 3), rng.uniform(-0.1, 0.1, ch), f"c{i}")
        size -= 2
        x = models._kwta(g, x, [1, ch, size, size], k, f"c{i}_kwinner")
        x = g.op("MaxPool", [x], f"c{i}_pool", kernel_shape=[3, 3], strides=[stride] * 2)[0]
        size = (size - 3) // stride + 1
        in_ch = ch
    x = g.op("Flatten", [x], "flatten", axis=1)[0]
    flat = in_ch * size * size
    w = models._uniform(rng, (10, flat), flat)
    x = models._gemm(g, x, w, rng.uniform(-0.1, 0.1, 10), "fc")
    return g.model("overlap", [1, 1, 12, 12], x, [1, 10])


@pytest.mark.parametrize(
    "precision,taps", [("float", None), ("int8", None), ("float", 9), ("int8", 9)]
)
def test_overlapping_sparse_pools_csim(tmp_path, precision, taps):
    """The sparse max-pool's and k-WTA histogram's run registers and the sparse-sparse conv's
    interleaved partial sums on inputs that revisit windows and pixels: float C simulation
    equals the CPU module; int8 keeps its top-1, and both count the cycles the estimate says.
    With ``taps`` the conv takes that many kernel positions a step (its accumulator planes
    then cut into pixel banks)."""
    model = _overlapping_pools_cnn()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 1, 12, 12)).astype(np.float32)
    golden = golden_outputs(model, x)
    target = {"kind": "fpga", "precision": precision}
    if taps:  # every slot of taps columns a step
        target["parallelism"] = {"c1": 1024}
    project = compile_fpga(
        model,
        target,
        output_dir=tmp_path,
        variant="sparse-sparse",
        tb_data=(x, golden),
        calibration_data=rng.standard_normal((20, 1, 12, 12)).astype(np.float32),
    )
    engines = {layer.name: layer.engine for layer in project.hw.layers}
    assert engines["c1"] == "sparse_sparse"
    c1 = project.hw.layer("c1")
    if taps:
        assert split(c1).taps == taps and accumulator_pixel_banks(c1) > 1
    pools = [layer for layer in project.hw.layers if layer.op == "maxpool2d"]
    assert [layer.in_sparse for layer in pools] == [True, True]
    result = project.csim_result
    if precision == "float":
        np.testing.assert_allclose(result.output, golden, rtol=1e-5, atol=1e-6)
    else:
        # measured: 12.0 dB, top-1 6 / 6 (the k-WTA of a random network turns 8-bit noise
        # into other winners); dropping a partial-sum copy gives 0.4 dB, 1 / 6
        assert result.sqnr_db >= 9.0, result.summary()
        assert result.top1_agreement >= 5 / 6, result.summary()
    other = rng.standard_normal((16, 1, 12, 12)).astype(np.float32)
    assert_estimate_agrees(project, other)
