"""benchmarks/kernel_context.py runs on a compiled module and names every kernel it times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tvm_sparse
from tvm_sparse import models

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_context.py"


@pytest.fixture(scope="module")
def tiny_lib(tmp_path_factory) -> tuple[Path, str]:
    """The tiny CNN compiled and exported, and its input's name."""
    tmp_path = tmp_path_factory.mktemp("kernel_context")
    path = models.save(models.tiny_sparse_cnn(), tmp_path / "tiny.onnx")
    lib = tmp_path / "tiny.so"
    module = tvm_sparse.compile(str(path), "llvm", measure=False)
    module.export(str(lib))
    return lib, module.inputs[0].name


def _run(lib: Path, *given: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(lib), *given, "--reps", "2", "--sweep-mb", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("given", ["shape", "inputs"])
def test_every_kernel_is_timed_in_each_context(tmp_path, tiny_lib, given):
    lib, name = tiny_lib
    if given == "shape":
        proc = _run(lib, "--shape", "1,1,32,32")
    else:  # by name from an .npz, as a model of several or integer inputs needs
        feeds = tmp_path / "feeds.npz"
        np.savez(feeds, **{name: np.ones((1, 1, 32, 32), np.float32)})
        proc = _run(lib, "--inputs", str(feeds))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("after the sweep, re-read")[1]
    kernels = [line for line in table.splitlines() if " arg0 " in line]
    assert len(kernels) >= 3, proc.stdout  # the convs, the k-WTA, the linear
    assert "first calls of" in proc.stdout


def test_an_npz_without_an_input_says_which(tmp_path, tiny_lib):
    lib, name = tiny_lib
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, other=np.ones(3, np.float32))
    proc = _run(lib, "--inputs", str(feeds))
    assert proc.returncode != 0 and name in proc.stderr and "other" in proc.stderr
