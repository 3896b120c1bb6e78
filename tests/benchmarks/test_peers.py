"""The benchmark harness's timing protocol: per-round ratios and the DeepSparse server.

No timing is asserted (the machine is shared); these check how the rounds are paired and that
the DeepSparse server speaks its protocol and fails loudly. A stand-in ``deepsparse`` package (an
engine that doubles its input) replaces the real one, which lives in its own venv.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))

from peers import DeepSparseRunner, ratio_summary  # noqa: E402


def test_ratio_summary_pairs_rounds_instead_of_dividing_medians():
    # per-round ratios 10, 3, 3: the median is 3, where median(peer) / median(ours) would be 4.5
    assert ratio_summary([10.0, 6.0, 9.0], [1.0, 2.0, 3.0]) == (3.0, 3.0, 10.0)
    with pytest.raises(ValueError):
        ratio_summary([1.0, 2.0], [1.0])


def test_deepsparse_runner_without_its_venv_skips(tmp_path, capsys):
    runner = DeepSparseRunner("model.onnx", python=tmp_path / "missing" / "python")
    assert not runner.available
    assert runner.start(np.zeros((1, 4), np.float32)) is None
    assert "DeepSparse skipped" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="before start"):
        runner.time_for(0.01)


@pytest.fixture
def fake_deepsparse(tmp_path, monkeypatch):
    """A ``deepsparse`` package whose engine returns 2 * input, first on the server's path."""
    package = tmp_path / "fake" / "deepsparse"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            __version__ = "0.0-fake"

            class _Engine:
                def __init__(self, batch_size):
                    self.batch_size = batch_size

                def run(self, arrays):
                    assert arrays[0].shape[0] == self.batch_size
                    return [arrays[0] * 2]

            def compile_model(path, batch_size, num_cores):
                open(path).close()  # the model file must exist
                return _Engine(batch_size)
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(package.parent))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read by the fake")
    return str(model)


def test_deepsparse_server_compiles_once_then_times_on_request(fake_deepsparse):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with DeepSparseRunner(fake_deepsparse, python=sys.executable) as runner:
        outputs = runner.start(x)
        np.testing.assert_array_equal(outputs[0], 2 * x)
        times = [runner.time_for(0.01) for _ in range(3)]  # one server, several rounds
        assert all(t > 0 for t in times)
        proc = runner._proc
    assert runner._proc is None and proc.poll() == 0  # closed: the server exited cleanly


def test_deepsparse_server_failure_names_the_cause(tmp_path):
    if importlib.util.find_spec("deepsparse") is not None:
        pytest.skip("deepsparse is importable here: the server would not fail")
    runner = DeepSparseRunner(str(tmp_path / "model.onnx"), python=sys.executable)
    with pytest.raises(RuntimeError, match="(?s)server failed.*No module named 'deepsparse'"):
        runner.start(np.zeros((1, 4), np.float32))
    runner.close()


def test_an_output_is_checked_against_onnxruntime_and_its_own_spread():
    """Within 1e-3 of the output's scale: accepted, onnxruntime's second opinion never asked;
    past it but within what onnxruntime's unoptimized graph differs by (an ill-conditioned
    model): accepted and said in the row; past both: MISMATCH with both errors."""
    from harness import checked

    ref = np.array([1000.0, -2.0, 3.0], np.float32)
    asked = []

    def spread() -> float:
        asked.append(1)
        return 4e-3

    row: dict = {}
    assert checked("tvm_sparse", ref + 0.5, ref, spread, row) and not asked and row == {}
    assert checked("tvm_sparse", ref + np.array([0, 3.0, 0]), ref, spread, row)
    assert row["tvm_sparse_check"] == "error 3.0e-03 within onnxruntime's own 4.0e-03"
    assert not checked("tvm_dense", ref + np.array([0, 0, 5.0]), ref, spread, row)
    assert row["tvm_dense_ms"] == "MISMATCH (5.0e-03; onnxruntime's own 4.0e-03)"


def test_onnxruntime_unoptimized_is_a_second_opinion(tmp_path):
    """``OrtRunner(optimize=False)`` runs the graph as written, and gives its answer."""
    from onnx import TensorProto, helper, save

    from tvm_sparse.peers import OrtRunner

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, tmp_path / "relu.onnx")
    import onnxruntime as ort

    data = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    levels = {True: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              False: ort.GraphOptimizationLevel.ORT_DISABLE_ALL}  # fmt: skip
    for optimize, level in levels.items():
        runner = OrtRunner(str(tmp_path / "relu.onnx"), optimize=optimize)
        assert runner.session.get_session_options().graph_optimization_level == level
        np.testing.assert_array_equal(runner.run([data])[0], np.maximum(data, 0))
