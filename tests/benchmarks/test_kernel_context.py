"""benchmarks/kernel_context.py runs on a compiled module and names every kernel it times."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tvm_sparse
from tvm_sparse import models

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_context.py"


def test_every_kernel_is_timed_in_each_context(tmp_path):
    path = models.save(models.tiny_sparse_cnn(), tmp_path / "tiny.onnx")
    lib = tmp_path / "tiny.so"
    module = tvm_sparse.compile(str(path), "llvm", measure=False)
    module.export(str(lib))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(lib), "--shape", "1,1,32,32", "--reps", "2",
         "--sweep-mb", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("after the sweep, re-read")[1]
    kernels = [line for line in table.splitlines() if " arg0 " in line]
    assert len(kernels) >= 3, proc.stdout  # the convs, the k-WTA, the linear
    assert "first calls of" in proc.stdout
