"""Hostile model text (node, graph and file names) never becomes code or terminal escapes.

A node named ``"fc\\nint __attribute__((constructor)) pwn(){...}\\n//"`` used to end the ``//``
comment it was pasted into and become a function that the C simulation compiled and ran. Every
model-controlled string now goes through ``safe_text`` (comments, terminal) or ``NameTable``
(identifiers, file names); these tests feed the worst strings through the whole FPGA flow and
the CLI.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest

from tvm_sparse.safe_text import comment_text, terminal_text

from .test_fpga_names import _mlp

PAYLOAD = "int __attribute__((constructor)) pwn(){return 0;}"
HOSTILE = [
    f"fc\n{PAYLOAD}\n//",  # newline: ends a // comment
    f"fc */ {PAYLOAD} /*",  # ends a /* */ comment
    '#include "/etc/passwd"\n',
    "quote\" ' \\ back\\slash\\",
    "nul\x00byte",
    "../../../../tmp/escape",
    "\x1b[31mred\x1b[0m \x1b]0;title\x07",
    "x" * 10_000,
    "ünïcødé 名前 \u202etxt.exe",  # non-ASCII and a bidi override
]


@pytest.mark.parametrize("text", HOSTILE)
def test_comment_text_is_one_inert_line(text):
    safe = comment_text(text)
    assert re.fullmatch(r"[A-Za-z0-9 ._\-/:()+,=<>@!?%&~^|]+", safe), safe
    assert "*/" not in safe and "\n" not in safe and len(safe) <= 96


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_text_has_no_control_characters(text):
    safe = terminal_text(text, None)
    assert "\x1b" not in safe and "\n" not in safe and "\x00" not in safe
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in safe)


def _generated_files(root):
    """Every generated text file (not the test data, not the compiled C simulation)."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix != ".dat" and p.read_bytes()[:4] != b"\x7fELF"
    ]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("names", [HOSTILE[:5], HOSTILE[4:]], ids=["code", "paths-escapes"])
def test_hostile_names_stay_out_of_the_fpga_project(tmp_path, names):
    """The names reach comments only as inert text; the project builds and its C simulation
    gives the numbers the same model with plain names gives."""
    from tvm_sparse.codegen.fpga import compile_fpga

    hostile = _mlp(names)
    hostile.graph.name = f"graph\n{PAYLOAD}"
    path = tmp_path / "model\n#x */.onnx".replace("/", "")  # reaches defines.h
    onnx.save(hostile, str(path))
    project = compile_fpga(str(path), "fpga", output_dir=tmp_path / "evil", tb_samples=3)
    plain = compile_fpga(_mlp(["a", "b", "c", "d", "e"]), "fpga", output_dir=tmp_path / "plain",
                         tb_samples=3)  # fmt: skip
    assert project._csim.ok and plain._csim.ok
    np.testing.assert_array_equal(project._csim.output, plain._csim.output)
    for f in _generated_files(tmp_path / "evil"):
        text = f.read_text(errors="replace")
        assert "\x1b" not in text and "\x00" not in text and "\u202e" not in text, f
        assert "x" * 200 not in text, f  # the 10,000-character name is capped
        if f.name == "tvm_sparse_project.json":  # JSON escapes, and keeps the real names
            sources = [x["source"] for x in json.loads(text)["layers"]]
            assert set(sources) <= set(names)
            continue
        for line in text.splitlines():
            if PAYLOAD.split("(")[0] in line:  # only ever inside a one-line comment
                assert line.lstrip().startswith("//"), (f, line)
        assert f.resolve().is_relative_to((tmp_path / "evil").resolve())


def test_cli_prints_no_escape_sequences(tmp_path, capsys):
    """The report table, progress lines and errors quote model names without their control
    characters or escape sequences."""
    from tvm_sparse.cli import main

    model = _mlp(["\x1b[2J\x1b[31mfc\nforged line", "b", "c", "d", "e"])
    path = tmp_path / "m\x1b[31m.onnx"
    onnx.save(model, str(path))
    assert main(["analyze", str(path)]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "forged line" in captured.out  # shown, on the layer's own row
    assert all(not line.startswith("forged") for line in captured.out.splitlines())
    assert main(["compile", str(tmp_path / "missing\x1b[31m.onnx"), "-o",
                 str(tmp_path / "x.so")]) == 2  # fmt: skip
    assert "\x1b" not in capsys.readouterr().err
