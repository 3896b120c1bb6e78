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
