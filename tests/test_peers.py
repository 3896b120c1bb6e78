"""tvm_sparse.peers: the per-call sampling loop and the DeepSparse server run by path.

The server runs under DeepSparse's own venv (numpy<2, no tvm_sparse): here a stand-in
``deepsparse`` package takes its place, and the server is run by path the way
``DeepSparseRunner`` runs it. (tests/benchmarks/test_peers.py covers the runner's protocol.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tvm_sparse import peers


def test_sample_calls_times_every_call():
    calls = []
    samples = peers.sample_calls(lambda: calls.append(1), 0.0, min_samples=5)
    assert len(samples) == len(calls) == 5 and all(t >= 0 for t in samples)
    assert len(peers.sample_calls(lambda: None, 0.01)) >= 1


def test_default_deepsparse_python_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(peers.DEEPSPARSE_PYTHON_ENV, str(tmp_path / "python"))
    assert peers.default_deepsparse_python() == tmp_path / "python"
    monkeypatch.delenv(peers.DEEPSPARSE_PYTHON_ENV)
    assert peers.default_deepsparse_python() == peers.DEEPSPARSE_PYTHON


def test_deepsparse_server_runs_by_path_without_the_package_on_its_path(tmp_path):
    """The server file is run by DeepSparse's python, where tvm_sparse is not installed: it must
    import nothing of the package, and its own folder (tvm_sparse/, whose profile.py and
    models.py would shadow other modules) must not be on sys.path."""
    fake = tmp_path / "fake" / "deepsparse"
    fake.mkdir(parents=True)
    here = os.path.dirname(os.path.abspath(peers.__file__))
    (fake / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys
            __version__ = "0.0-fake"
            assert {here!r} not in [os.path.abspath(p or ".") for p in sys.path], sys.path
            assert "tvm_sparse" not in sys.modules

            class _Engine:
                def run(self, arrays):
                    return [arrays[0] + 1]

            def compile_model(path, batch_size, num_cores):
                return _Engine()
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(fake.parent))  # no tvm_sparse, no sitecustomize
    x = np.ones((2, 3), np.float32)
    np.savez(tmp_path / "in.npz", x)
    spec = {
        "model": "unused.onnx",
        "inputs": str(tmp_path / "in.npz"),
        "outputs": str(tmp_path / "out.npz"),
        "threads": 1,
    }
    requests = [
        {"samples": True, "seconds": 0.01, "warmup": 2},
        {"seconds": 0.01, "min_repeats": 3},
    ]
    proc = subprocess.run(
        [sys.executable, peers.__file__, "--deepsparse-server", json.dumps(spec)],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines()]
    assert replies[0] == {"version": "0.0-fake"}
    assert len(replies[1]["samples_s"]) >= 1 and all(t > 0 for t in replies[1]["samples_s"])
    assert replies[2]["median_s"] > 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["arr_0"], x + 1)
