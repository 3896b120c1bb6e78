"""benchmarks/layers_vs_ort.py matches a model's dense conv kernels to onnxruntime's nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "layers_vs_ort.py"


def test_conv_key_reads_the_shapes_from_a_kernel_name():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from layers_vs_ort import conv_key
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    name = "dense_conv2d_1x768x17x17_w192x768x1x1_23"
    assert conv_key(name) == ("1x768x17x17", "192x768x1x1")
    assert conv_key("dense_conv2d_winograd_1x32x149x149_1") is None
    assert conv_key("max_pool2d_s2_1x64x147x147") is None


def test_a_node_with_padded_output_channels_is_the_same_conv():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from layers_vs_ort import same_conv
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    ours = ("1x32x10x10", "24x32x1x1")
    assert same_conv(ours, ("1x32x10x10", "32x32x1x1"))  # onnxruntime's NCHWc block of 8/16
    assert same_conv(ours, ("1x32x10x10", "24x32x1x1"))
    assert not same_conv(ours, ("1x32x10x10", "48x32x1x1"))
    assert not same_conv(ours, ("1x32x10x10", "24x32x3x3"))
    assert not same_conv(ours, ("Relu", "1x32x10x10"))


def _two_convs(path: Path) -> None:
    """A 3x3 stride-2 conv (the implicit GEMM) and a 1x1 conv (the pointwise kernel)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((24, 32, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 10, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_each_conv_kernel_is_matched_to_its_node(tmp_path):
    path = tmp_path / "two_convs.onnx"
    _two_convs(path)
    lib = tmp_path / "two_convs.so"
    tvm_sparse.compile(str(path), "llvm", measure=False, sparse=False).export(str(lib))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), str(lib), "--runs", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    matched = proc.stdout.split("matched kernels")[0]
    assert "_w32x16x3x3_" in matched and "_w24x32x1x1_" in matched, proc.stdout
    assert "over 2 matched kernels" in proc.stdout
