"""The GSC networks as nupic.torch writes them (the zoo's PyTorch forms, exported to ONNX) on the
fpga target: TopK's exactly-k k-WTA, a final log-softmax, and a clear refusal of local k-WTA."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tvm_sparse.codegen.fpga import compile_fpga, golden_outputs
from tvm_sparse.codegen.fpga.calibration import forward
from tvm_sparse.errors import UnsupportedModelError
from tvm_sparse.torch_frontend import export_onnx_file
from tvm_sparse.zoo import gsc

from .test_fpga_cycles import assert_estimate_agrees


def _onnx(name: str, tmp_path) -> str:
    import torch

    net = gsc.build(name, sparsity=0.9)
    x = torch.from_numpy(gsc._images(1, 0))
    return export_onnx_file(net, (x,), str(tmp_path / f"{name}.onnx"), ["input"])


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_break_ties_kwta_and_log_softmax_csim_match_the_cpu(tmp_path):
    """nupic's break-ties k-WTA (TopK + scatter: exactly k win) and the log-softmax the
    classifier ends with: C simulation equal to the CPU module, cycles as estimated."""
    path = _onnx("gsc_kwta_break_ties", tmp_path)
    x = gsc._images(4, 1)
    project = compile_fpga(
        path, "fpga", output_dir=tmp_path / "hls", tb_data=(x, golden_outputs(path, x))
    )
    hw = project.hw
    assert [layer.attrs.get("exact") for layer in hw.layers if layer.op == "kwta"] == [True] * 3
    assert hw.layers[-1].op == "softmax" and hw.layers[-1].attrs["log"]
    np.testing.assert_allclose(project.csim_result.output, project.tb_golden, rtol=1e-5, atol=1e-5)
    # the numpy executor picks the same winners
    np.testing.assert_allclose(forward(hw, x)[0], project.tb_golden, rtol=1e-4, atol=1e-4)
    assert_estimate_agrees(project, gsc._images(16, 2))


def test_exact_kwta_keeps_k_of_tied_values_lowest_index_first():
    """Ties at the k-th value: the threshold rule keeps all of them, exact keeps k."""
    from tvm_sparse.codegen.fpga.hw_model import HwLayer, HwModel
    from tvm_sparse.codegen.fpga.target import parse_fpga_target

    layer = HwLayer(0, "k", "k", "kwta", "kwta", (6,), (6,), {"k": 3, "exact": True})
    model = HwModel("m", "dense", parse_fpga_target("fpga"), [layer], (6,), (6,), 1)
    x = np.array([[1.0, 5.0, 2.0, 2.0, 2.0, 0.5]], np.float32)
    np.testing.assert_array_equal(forward(model, x)[0], [[0, 5, 2, 2, 0, 0]])
    layer.attrs["exact"] = False
    np.testing.assert_array_equal(forward(model, x)[0], [[0, 5, 2, 2, 2, 0]])


def test_local_kwta_is_refused_by_name(tmp_path):
    path = _onnx("gsc_kwta2d_local", tmp_path)
    with pytest.raises(UnsupportedModelError, match="local .*global"):
        compile_fpga(path, "fpga", tb_samples=1)
