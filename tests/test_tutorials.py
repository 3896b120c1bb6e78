"""Each tutorial runs start to finish (they check their own results against onnxruntime or
the torch module they compile)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("[0-9]*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(script), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "matches onnxruntime" in proc.stdout or "matches the torch module" in proc.stdout


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ has no numbered tutorial scripts"
