"""The tvm-sparse command line: compile / run / analyze, and one-line errors for bad input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tvm_sparse import cli, models

from .conftest import assert_close, ort_run


def _cli(*args, cwd=None):
    cmd = [sys.executable, "-m", "tvm_sparse.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)


def _cli_here(*args) -> subprocess.CompletedProcess:
    """``cli.main`` in this process, its output captured as ``_cli``'s: for the error paths,
    which end before any work (a subprocess costs ~2.5 s of imports; ``test_missing_model``
    keeps one error on the real command line)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tvm-sparse: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.slow
def test_compile_run_analyze(tmp_path):
    model = models.tiny_sparse_cnn()
    onnx_path = models.save(model, tmp_path / "tiny.onnx")
    lib = tmp_path / "out" / "tiny.so"
    proc = _cli("compile", onnx_path, "--target", "llvm", "-o", lib, "--report")
    assert proc.returncode == 0, proc.stderr
    assert "cnn2" in proc.stdout and (tmp_path / "out" / "tiny.json").exists()
    for phase in ("Import", "Sparsify", "Build (TIR lowering + LLVM)"):
        assert phase in proc.stdout, proc.stdout  # --report prints the time per phase

    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", input=x)
    proc = _cli(
        "run",
        lib,
        "--inputs",
        tmp_path / "in.npz",
        "-o",
        tmp_path / "o.npz",
        "--print-time",
        "--repeat",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "time: median" in proc.stdout
    assert_close(np.load(tmp_path / "o.npz")["output_0"], ort_run(model, x))

    proc = _cli("run", lib, "--profile", "--repeat", "3", "--profile-json", tmp_path / "p.json")
    assert proc.returncode == 0 and "output_0: shape [1, 12]" in proc.stdout  # random inputs
    assert "kwta" in proc.stdout and "VM built-ins" in proc.stdout, proc.stdout
    calls = json.loads((tmp_path / "p.json").read_text())["calls"]
    # the convs' kernels by name (which kernel each conv gets is a measured choice: sparse_conv
    # on an idle machine, a dense conv schedule when the measurement says so)
    assert any("conv" in c["symbol"] for c in calls), calls

    proc = _cli("analyze", onnx_path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [layer["activation"]["kind"] for layer in data["layers"]] == [
        "dense",
        "kwta",
        "kwta",
        "kwta",
    ]
    proc = _cli("analyze", onnx_path)
    assert proc.returncode == 0 and "kwta" in proc.stdout


def test_missing_model(tmp_path):
    _assert_one_line_error(
        _cli("analyze", tmp_path / "missing.onnx"), "missing.onnx", "no such file"
    )


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    _assert_one_line_error(_cli_here("compile", bad, "-o", tmp_path / "x.so"), "bad.onnx")


def test_truncated(tmp_path):
    full = open(models.save(models.tiny_sparse_cnn(), tmp_path / "t.onnx"), "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full[: len(full) // 3])
    _assert_one_line_error(_cli_here("analyze", cut), "cut.onnx")


def test_unsupported_op(tmp_path):
    path = models.save(models.model_with_unsupported_op(), tmp_path / "det.onnx")
    _assert_one_line_error(_cli_here("compile", path, "-o", tmp_path / "x.so"), "det0", "Det")


def test_dynamic_shape_is_compiled_for_any_size_and_input_shapes_specialize(tmp_path):
    path = models.save(models.model_with_dynamic_batch(features=8), tmp_path / "dyn.onnx")
    proc = _cli("analyze", path)
    assert proc.returncode == 0, proc.stderr
    assert "dynamic dims" in proc.stderr and "--input-shapes input:1x8" in proc.stderr
    proc = _cli("analyze", path, "--input-shapes", "input:2x8")
    assert proc.returncode == 0, proc.stderr
    assert "dynamic dims" not in proc.stderr
    _assert_one_line_error(_cli_here("analyze", path, "--input-shapes", "input:2x2x8"), "3 dims")


def test_bad_target(tmp_path):
    path = models.save(models.pruned_mlp(layers=1, hidden=8, density=1.0), tmp_path / "m.onnx")
    _assert_one_line_error(
        _cli_here("compile", path, "--target", "quantum", "-o", tmp_path / "m.so"), "quantum"
    )


@pytest.mark.slow
def test_run_with_wrong_input_shape(tmp_path):
    path = models.save(models.pruned_mlp(layers=1, hidden=8, density=1.0), tmp_path / "m.onnx")
    lib = tmp_path / "m.so"
    assert _cli("compile", path, "-o", lib).returncode == 0
    np.savez(tmp_path / "in.npz", input=np.zeros((3, 8), np.float32))
    _assert_one_line_error(
        _cli_here("run", lib, "--inputs", tmp_path / "in.npz"), "input", "[1, 8]", "[3, 8]"
    )
    np.savez(tmp_path / "in64.npz", input=np.zeros((1, 8), np.float64))
    _assert_one_line_error(_cli_here("run", lib, "--inputs", tmp_path / "in64.npz"), "float64")
    _assert_one_line_error(_cli_here("run", lib, "--inputs", tmp_path / "nope.npz"), "nope.npz")
    _assert_one_line_error(_cli_here("run", tmp_path / "nothing.so"), "nothing.so")
