"""int8 builds: per-output-channel weight scales, calibrated activation ranges, the logits' SQNR
and top-1 against the float CPU module, measured by C simulation of the generated code."""

from __future__ import annotations

import importlib.util
import re
import shutil

import numpy as np
import pytest

from tvm_sparse import models
from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.calibration import forward, forward_with_noise
from tvm_sparse.codegen.fpga.csim import sqnr_db
from tvm_sparse.codegen.fpga.number_formats import _int_bits, optimal_range, quantize
from tvm_sparse.zoo.gsc import _images

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
INT8 = {"kind": "fpga", "precision": "int8"}


def _bits(c_type: str) -> tuple[int, int]:
    """(W, I) of an ``ap_fixed<W,I,...>`` type name."""
    m = re.match(r"ap_fixed<(\d+),(-?\d+)", c_type)
    assert m, c_type
    return int(m.group(1)), int(m.group(2))


def _linear_model(w: np.ndarray, b: np.ndarray):
    """One Gemm(x, W, b, transB=1): [1, K] -> [1, O]."""
    g = models._Graph()
    y = models._gemm(g, "input", w, b, "fc")
    return g.model("fc", [1, w.shape[1]], y, [1, w.shape[0]])


def test_per_channel_scales_of_a_hand_computed_layer(tmp_path):
    """Row 0's weights are ~1000x smaller than row 2's: one power-of-two format per tensor
    (8 bits covering +-4) rounds all of them to 0, per-channel scales keep them."""
    w = np.array(
        [
            [0.004, -0.002, 0.001, 0.003],
            [0.5, -0.25, 0.125, 0.0],
            [-3.0, 1.5, 0.75, 2.0],
        ],
        np.float32,
    )
    b = np.array([0.01, -0.1, 0.5], np.float32)
    x = np.array([[1.0, -0.5, 0.25, 0.75], [-1.0, 1.0, 0.5, -0.25], [0.5, 0.5, -1.0, 1.0]])
    x = x.astype(np.float32)
    model = _linear_model(w, b)
    golden = golden_outputs(model, x)
    project = compile_fpga(model, INT8, output_dir=tmp_path, tb_data=(x, golden))
    layer = project.hw.layers[0]
    out = project.csim_result.output

    # by hand: scale[o] = max |w[o]| / 127 in the 18-bit scale format; integer weights
    scale_w, scale_i = _bits(layer.scale_t)
    assert scale_w == 18
    scale = quantize(np.abs(w).max(axis=1) / 127.0, 18, scale_i)
    q = np.rint(w / scale[:, None])
    assert np.abs(q).max(axis=1).tolist() == [127, 127, 127]  # every row uses its 8 bits
    np.testing.assert_allclose(layer.weight_scale, scale)
    # x in its calibrated ap_fixed<8,I>, exact accumulation, bias in accumulator units,
    # requantized by acc * scale[o] to the 16-bit output
    in_w, in_i = _bits(project.hw.input_t)
    acc_w, acc_i = _bits(layer.accum_t)
    out_w, out_i = _bits(layer.out_t)
    assert (in_w, out_w) == (8, 16)
    xq = quantize(x, 8, in_i)
    bias = quantize((b / scale).astype(np.float32), acc_w, acc_i)
    expected = quantize((xq @ q.T + bias) * scale, out_w, out_i)
    np.testing.assert_array_equal(out.astype(np.float64), expected)

    # row 0 keeps its answer; a per-tensor ap_fixed<8,3> weight would leave only the bias
    per_tensor = quantize(w, 8, 3)
    assert not per_tensor[0].any()
    np.testing.assert_allclose(out[:, 0], golden[:, 0], rtol=0.02, atol=1e-3)
    assert np.min(np.abs(out[:, 0] - b[0])) > 1e-3


def test_optimal_range_clips_the_tail_rather_than_halving_resolution():
    """Standard normal values reach 4.4 (the max needs ap_fixed<8,4>); saturating the few
    beyond 4 costs less than twice the step for all the others: ap_fixed<8,3>. A far outlier
    (30) is worth one more integer bit, not three."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_000)
    assert _int_bits(float(np.abs(x).max())) == 4
    for values, best in ((x, 3), (np.append(x, 30.0), 5)):
        errors = {i: np.sum((quantize(values, 8, i) - values) ** 2) for i in range(2, 7)}
        assert min(errors, key=errors.get) == best
        chosen = optimal_range(values)
        assert _int_bits(chosen) == best
        assert quantize(chosen, 8, best) == chosen  # the format's largest value


def test_sqnr_definition():
    ref = np.array([[3.0, 4.0]], np.float32)
    assert sqnr_db(ref.copy(), ref) == np.inf
    assert sqnr_db(ref + np.array([[0.05, 0.0]], np.float32), ref) == pytest.approx(
        10 * np.log10(25.0 / 0.0025), rel=1e-4
    )


def test_int8_relu_mlp_keeps_the_answer(tmp_path):
    """Without k-WTA (ReLU: no winner to lose), int8 with per-channel scales keeps the logits:
    SQNR >= 30 dB and top-1 >= 95% on 100 samples, calibrated on 100 others."""
    model = models.pruned_mlp(layers=3, hidden=128, in_features=64, out_features=12, density=0.2)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((100, 64)).astype(np.float32)
    calib = rng.standard_normal((100, 64)).astype(np.float32)
    project = compile_fpga(
        model,
        INT8,
        output_dir=tmp_path,
        tb_data=(x, golden_outputs(model, x)),
        calibration_data=calib,
    )
    result = project.csim_result
    assert result.sqnr_db >= 30.0, result.summary()
    assert result.top1_agreement >= 0.95, result.summary()
    assert result.to_dict()["sqnr_db"] == result.sqnr_db
    assert "SQNR" in result.summary()


@pytest.mark.slow
def test_int8_gsc_super_sparse(tmp_path):
    """The GSC super-sparse network at int8, 60 samples, calibrated on 100 others.

    Its k-WTA layers turn a change of a value near the threshold into another winner: the
    float network itself, given noise of 40 dB (what 8 bits of input and weights add) after
    its first conv, keeps under 10 dB of logits SQNR. The int8 build must do as well as that
    (it adds no error beyond its bits); issue #19's target (>= 30 dB, top-1 >= 95%) needs
    what 8 bits do not give, and is reported as an expected failure until it is reached."""
    model = models.gsc_sparse_cnn(super_sparse=True)
    x, calib = _images(60, 1000), _images(100, 2000)
    golden = golden_outputs(model, x)
    project = compile_fpga(
        model, INT8, output_dir=tmp_path, tb_data=(x, golden), calibration_data=calib
    )
    result = project.csim_result
    assert result.headers != "compat" or importlib.util.find_spec("hls4ml") is None
    ceiling = sqnr_db(forward_with_noise(project.hw, x, 40.0), golden)
    assert result.sqnr_db >= ceiling - 3.0, (result.summary(), ceiling)
    assert result.top1_agreement >= 0.6, result.summary()
    if result.sqnr_db < 30.0 or result.top1_agreement < 0.95:
        pytest.xfail(f"issue #19's int8 target not reached: {result.summary()}")


@pytest.mark.parametrize("after", [0, 1, 2])
def test_noise_after_any_layer(tmp_path, after):
    """``forward_with_noise`` runs the layers after ``after`` on its noisy output: without
    noise (300 dB) the float network's answer, with 40 dB about 40 dB on a ReLU MLP's logits
    (the benchmark's --sensitivity took the first layer only, and crashed past it)."""
    model = models.pruned_mlp(layers=3, hidden=64, in_features=32, out_features=10, density=0.3)
    x = np.random.default_rng(3).standard_normal((50, 32)).astype(np.float32)
    project = compile_fpga(model, {"kind": "fpga", "precision": "float"}, output_dir=tmp_path,
                           tb_data=(x, golden_outputs(model, x)), run_csim=False)  # fmt: skip
    exact, _ = forward(project.hw, x)
    np.testing.assert_allclose(forward_with_noise(project.hw, x, 300.0, after), exact, rtol=1e-5)
    noisy = forward_with_noise(project.hw, x, 40.0, after)
    assert 25.0 < sqnr_db(noisy, exact) < 60.0
