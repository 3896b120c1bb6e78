"""``tvm-sparse benchmark``: the command, its JSON, the batch rewrite, failures and DeepSparse.

No timing is asserted (the machine is shared): only that samples were taken, the statistics are
consistent with each other and outputs were compared.
"""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from tvm_sparse import benchmark, models
from tvm_sparse.cli import main as cli_main

from .test_cli import _assert_one_line_error, _cli

DEEPSPARSE_PYTHON = "/work/main/.venv-deepsparse/bin/python"


def _mlp(tmp_path, name="mlp.onnx"):
    model = models.pruned_mlp(layers=2, hidden=32, in_features=16, out_features=8, density=0.3)
    return models.save(model, tmp_path / name)


def _check_engine(entry: dict, batch: int) -> None:
    assert entry["samples"] > 0
    assert entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"] <= entry["max_ms"]
    assert entry["min_ms"] <= entry["p50_ms"] and entry["std_ms"] >= 0
    # throughput is batch / mean latency
    assert entry["items_per_s"] == pytest.approx(batch / (entry["mean_ms"] / 1e3), rel=1e-9)
    assert len(entry["round_p50_ms"]) == 2  # one median per round


def test_benchmark_two_batch_sizes_writes_json(tmp_path):
    path = _mlp(tmp_path)
    out = tmp_path / "out.json"
    proc = _cli(
        "benchmark", path, "--batch-sizes", "1,2", "--threads", "1", "--time", "0.2",
        "--rounds", "2", "--json", out, "--no-deepsparse",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # progress lines (stderr is not a terminal here), the CPU line and the table on stdout
    assert "batch 2, threads 1: timing round 1/2" in proc.stderr, proc.stderr
    assert "CPU: " in proc.stdout and "ISA: " in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| engine"))
    for column in ("p50 ms", "p99 ms", "items/s", "x onnxruntime", "outputs match"):
        assert column in header
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| tvm", "| onnx"))]
    assert len(rows) == 4 and all(row.rstrip(" |").endswith(("yes", "reference")) for row in rows)

    report = json.loads(out.read_text())
    assert report["model"] == os.path.abspath(path)
    assert report["cpu"] and report["isa"]
    assert {"tvm_sparse", "tvm", "onnxruntime"} <= set(report["versions"])
    assert "deepsparse" not in report["versions"]
    assert [(r["batch"], r["threads"]) for r in report["results"]] == [(1, 1), (2, 1)]
    for result in report["results"]:
        assert result["error"] is None
        engines = result["engines"]
        assert set(engines) == {"tvm-sparse", "onnxruntime"}
        for entry in engines.values():
            _check_engine(entry, result["batch"])
        ours = engines["tvm-sparse"]
        assert ours["outputs_match"] is True and ours["compile_s"] > 0
        assert ours["x_onnxruntime"] == pytest.approx(
            engines["onnxruntime"]["p50_ms"] / ours["p50_ms"]
        )


def test_missing_and_non_onnx_models_are_one_line_errors(tmp_path):
    _assert_one_line_error(
        _cli("benchmark", tmp_path / "missing.onnx"), "missing.onnx", "no such file"
    )
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    _assert_one_line_error(_cli("benchmark", bad, "--no-deepsparse"), "bad.onnx")
    path = _mlp(tmp_path)
    _assert_one_line_error(
        _cli("benchmark", path, "--deepsparse-python", tmp_path / "nope" / "python"),
        "--deepsparse-python",
        "no such executable",
    )
    _assert_one_line_error(
        _cli("benchmark", path, "--input-shapes", "nothing:1x16"), "unknown input"
    )


@pytest.mark.parametrize(
    "flag, value", [("--batch-sizes", "1,x"), ("--batch-sizes", "0"), ("--threads", "-1")]
)
def test_bad_list_values_are_argparse_errors(tmp_path, flag, value):
    proc = _cli("benchmark", tmp_path / "m.onnx", flag, value)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and f"argument {flag}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_parsers():
    cores = benchmark.available_cores()
    assert benchmark.parse_batch_sizes("1, 16,1") == [1, 16]
    assert benchmark.parse_threads("1,0") == ([1] if cores == 1 else [1, cores])
    assert benchmark.parse_threads("all") == [cores]
    assert benchmark.default_threads() == benchmark.parse_threads("1,all")


def test_batch_rewrite_makes_a_static_batch_1_model_run_at_batch_3(tmp_path):
    import onnx
    import onnxruntime as ort

    from tvm_sparse.frontend import onnx_input_specs

    model = onnx.load(_mlp(tmp_path))
    assert model.graph.value_info  # shape inference left hints for batch 1
    specs = onnx_input_specs(model, None)
    assert benchmark.model_batch(specs) == 1
    shapes = benchmark.batch_shapes(specs, 3, "mlp.onnx")
    assert shapes == {"input": (3, 16)}
    assert benchmark.with_input_shapes(model, {"input": (1, 16)}) is None  # as it is
    rewritten = benchmark.with_input_shapes(model, shapes)
    assert not benchmark.has_dynamic_dims(model) and not benchmark.has_dynamic_dims(rewritten)
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    assert benchmark.has_dynamic_dims(dynamic)  # compiled from the file, with the shapes
    assert not rewritten.graph.value_info
    onnx.checker.check_model(rewritten)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 16]

    x = benchmark.random_inputs([{"name": "input", "shape": [3, 16], "dtype": "float32"}])[0]
    sess = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x})
    assert y.shape == (3, 8)
    single = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y[1:2], single.run(None, {"input": x[1:2]})[0], rtol=1e-5)


def test_dynamic_dims_beyond_the_batch_need_input_shapes():
    from tvm_sparse.errors import InputShapeError
    from tvm_sparse.frontend import TensorSpec

    specs = [TensorSpec("ids", ("N", "seq"), "int64")]
    with pytest.raises(InputShapeError, match="--input-shapes ids:1x1"):
        benchmark.batch_shapes(specs, 4, "bert.onnx")
    assert benchmark.batch_shapes([TensorSpec("x", ("N", 8), "float32")], 4, "m") == {"x": (4, 8)}


@pytest.mark.parametrize("layout", [0, 1])
def test_a_recurrent_models_batch_is_the_axis_its_lstm_reads(layout):
    """An LSTM at layout 0 (ONNX's default) reads X as [seq, batch, in] and initial_h as
    [directions, batch, hidden]: the benchmark's batch goes there, not in the first dim (which
    made a "batch 2" run a 2-step sequence, and batch 1 a one-direction initial state)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tvm_sparse.frontend import onnx_input_specs

    seq, batch, feat, hidden, dirs = 5, 1, 3, 4, 2
    rng = np.random.default_rng(0)
    w = rng.standard_normal((dirs, 4 * hidden, feat)).astype(np.float32)
    r = rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32)
    x_shape = [seq, batch, feat] if layout == 0 else [batch, seq, feat]
    h_shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    y_shape = [seq, dirs, batch, hidden] if layout == 0 else [batch, seq, dirs, hidden]
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "", "", "h0"], ["y"], hidden_size=hidden,
        direction="bidirectional", layout=layout,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "lstm",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, h_shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    axes = benchmark.batch_axes(model)
    assert axes == ({"x": 1, "h0": 1} if layout == 0 else {})
    specs = onnx_input_specs(model, None)
    assert benchmark.model_batch(specs, axes) == 1
    shapes = benchmark.batch_shapes(specs, 3, "lstm.onnx", axes)
    at3 = {"x": [seq, 3, feat], "h0": [dirs, 3, hidden]}
    if layout == 1:
        at3 = {"x": [3, seq, feat], "h0": [3, dirs, hidden]}
    assert {k: list(v) for k, v in shapes.items()} == at3
    rewritten = benchmark.with_input_shapes(model, shapes)
    onnx.checker.check_model(rewritten)
    if layout == 1:
        return  # onnxruntime: "Batchwise recurrent operations (layout == 1) are not supported"
    feeds = benchmark.random_inputs(
        [{"name": n, "shape": list(v), "dtype": "float32"} for n, v in shapes.items()]
    )
    sess = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, dict(zip(shapes, feeds)))
    assert y.shape == (seq, dirs, 3, hidden)


def test_benchmark_at_batch_3_runs_the_rewritten_model(tmp_path):
    path = _mlp(tmp_path)
    out = tmp_path / "b3.json"
    proc = _cli(
        "-q", "benchmark", path, "--batch-sizes", "3", "--threads", "1", "--time", "0.1",
        "--rounds", "2", "--json", out, "--no-deepsparse", "--measure", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "benchmark [" not in proc.stderr  # -q: no progress
    (result,) = json.loads(out.read_text())["results"]
    assert result["batch"] == 3 and result["engines"]["tvm-sparse"]["outputs_match"] is True
    _check_engine(result["engines"]["onnxruntime"], 3)


@pytest.mark.slow
def test_a_batch_the_model_cannot_take_fails_that_config_and_the_others_run(tmp_path):
    # the tiny GSC network reshapes to a fixed batch of 1 (its k-WTA): batch 3 fails, named,
    # and batch 1 still runs
    out = tmp_path / "cnn.json"
    cnn = models.save(models.tiny_sparse_cnn(), tmp_path / "cnn.onnx")
    proc = _cli(
        "-q", "benchmark", cnn, "--batch-sizes", "3,1", "--threads", "1", "--time", "0.1",
        "--rounds", "2", "--json", out, "--no-deepsparse", "--measure", "none",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "batch 3, threads 1" in failed[0], proc.stderr
    assert "cnn.onnx (at batch 3)" in failed[0] and "Reshape" in failed[0]
    assert "tmp" not in failed[0].replace(str(tmp_path), "")  # not the temporary copy
    assert "| tvm-sparse  |     3 |" in proc.stdout and "FAILED" in proc.stdout
    bad, good = json.loads(out.read_text())["results"]
    assert bad["batch"] == 3 and "Reshape" in bad["error"] and not bad["engines"]
    assert good["batch"] == 1 and good["error"] is None
    assert good["engines"]["tvm-sparse"]["outputs_match"] is True


def test_no_onnxruntime_still_checks_against_it(tmp_path):
    out = tmp_path / "o.json"
    proc = _cli(
        "benchmark", _mlp(tmp_path), "--batch-sizes", "1", "--threads", "1", "--time", "0.05",
        "--rounds", "2", "--json", out, "--no-deepsparse", "--no-onnxruntime", "--measure", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert set(result["engines"]) == {"tvm-sparse"}
    assert result["engines"]["tvm-sparse"]["outputs_match"] is True
    assert "x_onnxruntime" not in result["engines"]["tvm-sparse"]


_FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    spec = json.load(open(sys.argv[1]))
    events = os.fdopen(int(sys.argv[2]), "w")
    for config in spec["configs"]:
        b = config["batch"]
        events.write(json.dumps({"event": "phase", "batch": b, "phase": "timing round 1/2"}))
        events.write("\\n")
        events.flush()
        print("worker output before the crash", flush=True)
        if b == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        result = {"batch": b, "threads": spec["threads"], "error": None, "engines": {}}
        events.write(json.dumps({"event": "result", "result": result}) + "\\n")
    """
)


def test_a_worker_that_dies_fails_its_config_by_name_and_the_rest_go_on(
    tmp_path, monkeypatch, capsys
):
    script = tmp_path / "fake_worker.py"
    script.write_text(_FAKE_WORKER)
    monkeypatch.setattr(
        benchmark,
        "worker_command",
        lambda spec, fd: [sys.executable, str(script), spec, str(fd)],
    )
    out = tmp_path / "crash.json"
    argv = ["benchmark", _mlp(tmp_path), "--batch-sizes", "1,2", "--threads", "1"]
    code = cli_main([*argv, "--no-deepsparse", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    message = next(line for line in captured.err.splitlines() if line.startswith("FAILED"))
    assert "worker for batch 1, threads 1 died (killed by SIGSEGV) while timing round 1/2" in (
        message
    )
    assert "worker output before the crash" in captured.err  # the end of its output
    first, second = json.loads(out.read_text())["results"]
    assert first["batch"] == 1 and "SIGSEGV" in first["error"]
    assert second["batch"] == 2 and second["error"] is None  # a new worker took the rest


def test_compare_outputs_and_summary():
    ref = [np.array([[1.0, -2.0, 0.0]], np.float32)]
    assert benchmark.compare_outputs([ref[0] + 1e-4], ref)["match"]
    verdict = benchmark.compare_outputs([ref[0] + np.float32([[0, 0, 0.5]])], ref)
    assert not verdict["match"] and "output 0" in verdict["detail"]
    assert verdict["max_abs_diff"] == pytest.approx(0.5)
    assert not benchmark.compare_outputs([ref[0][:, :2]], ref)["match"]
    assert not benchmark.compare_outputs([], ref)["match"]
    ints = [np.array([3, 1], np.int64)]
    assert benchmark.compare_outputs(ints, ints)["match"]
    assert not benchmark.compare_outputs([np.array([3, 2], np.int64)], ints)["match"]

    stats = benchmark.summarize([0.001, 0.002, 0.003, 0.010], batch=4)
    assert stats["samples"] == 4 and stats["p50_ms"] == pytest.approx(2.5)
    assert stats["mean_ms"] == pytest.approx(4.0)
    assert stats["items_per_s"] == pytest.approx(1000.0)
    engines = {"tvm-sparse": {"p50_ms": 1.0}, "onnxruntime": {"p50_ms": 3.0}}
    benchmark.add_ratios(engines)
    assert engines["tvm-sparse"]["x_onnxruntime"] == 3.0


def test_table_marks_mismatches_and_failures():
    results = [
        {
            "batch": 1,
            "threads": 2,
            "error": None,
            "engines": {
                "tvm-sparse": {"p50_ms": 0.5, "outputs_match": False, "mismatch": "output 0"},
                "onnxruntime": {"p50_ms": 1.0},
                "deepsparse": {"error": "DeepSparse server failed"},
            },
        },
        benchmark.failed_config(4, 2, "tvm-sparse: cannot reshape"),
    ]
    text = benchmark.format_table(results)
    assert "MISMATCH" in text and text.count("FAILED") == 2 and "reference" in text
    lines = benchmark.problems(results)
    assert any(line.startswith("MISMATCH batch 1, threads 2: tvm-sparse") for line in lines)
    assert any("deepsparse: DeepSparse server failed" in line for line in lines)
    assert any(line.startswith("FAILED batch 4, threads 2") for line in lines)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_prints_lines_otherwise():
    tty = _Tty()
    progress = benchmark.Progress(2, stream=tty)
    progress.update(1, 1, "compiling tvm-sparse")
    progress.update(1, 1, "timing round 1/4", 0.5)
    progress.config_done()
    progress.update(16, 1, "timing round 4/4", 0.875)
    progress.clear()
    text = tty.getvalue()
    assert "\n" not in text and text.count("\r") >= 4
    assert " 25% batch 1, threads 1: timing round 1/4" in text
    assert " 93% batch 16, threads 1: timing round 4/4" in text

    plain = io.StringIO()
    progress = benchmark.Progress(1, stream=plain)
    for r in range(1, 5):
        progress.update(2, 4, f"timing round {r}/4", r / 4)
    lines = plain.getvalue().splitlines()
    assert lines == ["tvm-sparse: benchmark [ 25%] batch 2, threads 4: timing round 1/4"]
    silent = io.StringIO()
    benchmark.Progress(1, stream=silent, enabled=False).update(1, 1, "compiling")
    assert silent.getvalue() == ""


@pytest.mark.skipif(not os.path.exists(DEEPSPARSE_PYTHON), reason="no DeepSparse venv")
def test_deepsparse_is_timed_and_checked(tmp_path):
    out = tmp_path / "ds.json"
    proc = _cli(
        "benchmark", _mlp(tmp_path), "--batch-sizes", "2", "--threads", "1", "--time", "0.2",
        "--rounds", "2", "--json", out, "--deepsparse-python", DEEPSPARSE_PYTHON,
        "--measure", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["versions"].get("deepsparse")
    (result,) = report["results"]
    ds = result["engines"]["deepsparse"]
    assert "error" not in ds, ds
    _check_engine(ds, 2)
    assert ds["outputs_match"] is not None and "x_onnxruntime" in ds
    assert "| deepsparse" in proc.stdout
