"""Gather indices out of range: an error, as in onnxruntime, never a clamped (wrong) row."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

import tvm_sparse
from tvm_sparse.errors import RunError, TvmSparseError


def _gather_model(ids_shape, rows=10, width=4, axis=0, ids_const=None):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((rows, width)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "E")]
    inputs = []
    if ids_const is None:
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape))
    else:
        inits.append(numpy_helper.from_array(np.asarray(ids_const, np.int64), "ids"))
    # a runtime data operand too, so a constant index is not folded away by the frontend
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width]))
    nodes = [
        helper.make_node("Add", ["E", "x"], ["Ex"]),
        helper.make_node("Gather", ["Ex", "ids"], ["y"], axis=axis),
    ]
    ids = list(ids_shape) if ids_const is None else list(np.shape(ids_const))
    out = ids + [width] if axis == 0 else [rows] + ids
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("axis", [0, 1])
def test_in_range_indices_match_onnxruntime_and_out_of_range_raise(axis):
    model = _gather_model([2, 3], axis=axis)
    compiled = tvm_sparse.compile(model, "llvm")
    session = _ort(model)
    x = np.zeros((10, 4), np.float32)
    extent = 10 if axis == 0 else 4
    good = np.array([[0, extent - 1, -1], [-extent, 1, 2]], np.int64)
    np.testing.assert_array_equal(
        compiled.run(good, x), session.run(None, {"ids": good, "x": x})[0]
    )
    for value in (extent, -extent - 1, 2**40):
        bad = good.copy()
        bad[1, 2] = value
        with pytest.raises(InvalidArgument, match="out of data bounds"):
            session.run(None, {"ids": bad, "x": x})
        with pytest.raises(RunError, match=rf"\[-{extent}, {extent - 1}\] for axis {axis}"):
            compiled.run(bad, x)


def test_dynamic_index_count_is_checked_at_every_length():
    """Indices of a symbolic length (a dynamic sequence): the check kernel takes any length."""
    model = _gather_model(["n"])
    compiled = tvm_sparse.compile(model, "llvm")
    session = _ort(model)
    x = np.ones((10, 4), np.float32)
    for n in (1, 7):
        ids = np.arange(n, dtype=np.int64)
        np.testing.assert_array_equal(
            compiled.run(ids, x), session.run(None, {"ids": ids, "x": x})[0]
        )
        with pytest.raises(RunError, match="out of range"):
            compiled.run(ids + 10, x)


def test_constant_index_out_of_range_fails_the_compile_with_the_gather_named():
    model = _gather_model(None, ids_const=[1, 12])
    with pytest.raises(TvmSparseError, match=r"Gather: an index is out of range.*1 \.\. 12"):
        tvm_sparse.compile(model, "llvm")


def test_cli_run_reports_the_bad_index_without_a_traceback(tmp_path):
    import onnx

    path = tmp_path / "gather.onnx"
    onnx.save(_gather_model([3]), path)
    lib = tmp_path / "gather.so"
    cli = [sys.executable, "-m", "tvm_sparse.cli"]
    subprocess.run([*cli, "compile", str(path), "-o", str(lib)], check=True, capture_output=True)
    np.savez(tmp_path / "bad.npz", ids=np.array([0, 1, 99], np.int64), x=np.zeros((10, 4), "f4"))
    done = subprocess.run(
        [*cli, "run", str(lib), "--inputs", str(tmp_path / "bad.npz")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Gather: an index is out of range" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_check_leaves_the_callers_subnormals_alone():
    """The check kernel runs outside FlushDenormals: a failed check returns early, and inside
    it the calling thread kept FTZ / DAZ set (numpy then flushed subnormals to zero; hypothesis
    tests after it in the same process failed)."""
    compiled = tvm_sparse.compile(_gather_model([3]), "llvm")
    tiny = np.array([1e-40], np.float32)  # a subnormal
    assert tiny[0] != 0 and (tiny * np.float32(1.0))[0] != 0
    with pytest.raises(RunError):
        compiled.run(np.array([0, 1, 99], np.int64), np.zeros((10, 4), np.float32))
    assert (tiny * np.float32(1.0))[0] != 0, "the calling thread was left flushing subnormals"
    assert np.float32(1e-39) / np.float32(10) != 0
