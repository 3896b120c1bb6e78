"""Fuzz the loader and the compiler with mutated real models; nothing may crash.

    python benchmarks/fuzz_models.py [--analyze 2000] [--compile 300] [--fpga 30]
                                     [--workers 2] [--seed 0] [--json out.json]

Seeds are small models (a 2-layer MLP, the tiny k-WTA CNN, a 1-layer BERT, the demo MLP).
Each mutation is one of: flipped bytes, truncation, input dims 0 / negative / 2^31, a dropped or
reshaped initializer, a dangling input, a duplicate output name, a cycle, an unknown op or
opset, a wrong dtype, external data pointing outside the model's folder, NaN / Inf weights, odd
names. Every case runs the ``tvm-sparse`` command line (``analyze``, ``compile`` for llvm, and
``compile --target fpga`` with its C simulation on the small ones) inside a worker process with a
time limit and a memory budget; a worker that dies is replaced.

Allowed outcomes: success (for ``compile``: the module's output equals onnxruntime's where
onnxruntime runs the model), or exit 2 with one ``tvm-sparse: error:`` line. Not allowed: a
signal (segfault, abort), a Python traceback (an exception escaping the CLI), a hang, memory
over the budget, a file written outside the output folder, a wrong answer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from worker_pool import run_jobs, serve

DISALLOWED = ("crash", "traceback", "timeout", "memory", "escaped-file", "wrong", "bad-error")


@dataclass
class Case:
    name: str
    command: str  # analyze | compile | fpga
    payload: bytes  # the mutated model file's bytes
    mutation: str
    external: dict  # extra files to write beside the model: {relative name: bytes}


@dataclass
class Outcome:
    case: str
    command: str
    mutation: str
    status: str  # ok | error | one of DISALLOWED
    detail: str
    seconds: float


# -- seed models --------------------------------------------------------------------------------


def seed_models() -> dict[str, onnx.ModelProto]:
    """Small real models: a case compiles in seconds."""
    from tvm_sparse import models

    seeds = {
        "mlp": models.pruned_mlp(layers=2, hidden=32, in_features=16, out_features=8, density=0.3),
        "kwta_cnn": models.tiny_sparse_cnn(),
        "demo_mlp": models.pruned_mlp(layers=2, hidden=64, density=0.1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        from tvm_sparse.models_bert import tiny_pruned_bert_onnx

        try:
            path = tiny_pruned_bert_onnx(os.path.join(tmp, "bert.onnx"))
            seeds["bert1"] = onnx.load(path)
        except Exception as err:  # noqa: BLE001 - torch/transformers missing: fuzz the rest
            print(f"(no BERT seed: {err})", file=sys.stderr)
    return seeds


# -- mutations ----------------------------------------------------------------------------------


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def flip_bytes(model, rng):
    data = bytearray(model.SerializeToString())
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data), {}


def truncate(model, rng):
    data = model.SerializeToString()
    return data[: rng.randrange(1, len(data))], {}


def odd_input_dims(model, rng):
    m = _copy(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    if dims:
        dims[rng.randrange(len(dims))].dim_value = rng.choice([0, -1, -7, 2**31, 2**40, 1])
    return m.SerializeToString(), {}


def drop_initializer(model, rng):
    m = _copy(model)
    if m.graph.initializer:
        del m.graph.initializer[rng.randrange(len(m.graph.initializer))]
    return m.SerializeToString(), {}


def reshape_initializer(model, rng):
    m = _copy(model)
    if m.graph.initializer:
        i = rng.randrange(len(m.graph.initializer))
        arr = numpy_helper.to_array(m.graph.initializer[i])
        flat = arr.reshape(-1)
        new = flat[: max(1, flat.size // rng.choice([2, 3]))].copy() if flat.size > 1 else flat
        if rng.random() < 0.5 and new.size % 2 == 0:
            new = new.reshape(2, -1)
        m.graph.initializer[i].CopyFrom(numpy_helper.from_array(new, m.graph.initializer[i].name))
    return m.SerializeToString(), {}


def dangling_input(model, rng):
    m = _copy(model)
    node = m.graph.node[rng.randrange(len(m.graph.node))]
    if node.input:
        node.input[rng.randrange(len(node.input))] = "no_such_tensor"
    return m.SerializeToString(), {}


def duplicate_output(model, rng):
    m = _copy(model)
    if len(m.graph.node) > 1:
        a, b = rng.sample(range(len(m.graph.node)), 2)
        m.graph.node[b].output[0] = m.graph.node[a].output[0]
    return m.SerializeToString(), {}


def make_cycle(model, rng):
    m = _copy(model)
    if len(m.graph.node) > 1 and m.graph.node[0].input:
        m.graph.node[0].input[0] = m.graph.node[-1].output[0]
    return m.SerializeToString(), {}


def unknown_op(model, rng):
    m = _copy(model)
    node = m.graph.node[rng.randrange(len(m.graph.node))]
    if rng.random() < 0.5:
        node.op_type = rng.choice(["FancyOp", "Conv3dTranspose", "", "Relu\n"])
    else:
        node.domain = rng.choice(["com.example", "ai.onnx.ml", "x" * 300])
    return m.SerializeToString(), {}


def odd_opset(model, rng):
    m = _copy(model)
    m.opset_import[0].version = rng.choice([0, 1, 6, 99, 10**6, -3])
    return m.SerializeToString(), {}


def wrong_dtype(model, rng):
    m = _copy(model)
    if rng.random() < 0.5 and m.graph.initializer:
        init = m.graph.initializer[rng.randrange(len(m.graph.initializer))]
        arr = numpy_helper.to_array(init)
        dtype = rng.choice([np.int64, np.float64, np.float16, np.int8, np.bool_])
        init.CopyFrom(numpy_helper.from_array(arr.astype(dtype), init.name))
    else:
        m.graph.input[0].type.tensor_type.elem_type = rng.choice(
            [TensorProto.DOUBLE, TensorProto.INT64, TensorProto.STRING, TensorProto.BOOL, 99]
        )
    return m.SerializeToString(), {}


def external_outside(model, rng):
    m = _copy(model)
    if not m.graph.initializer:
        return m.SerializeToString(), {}
    init = m.graph.initializer[rng.randrange(len(m.graph.initializer))]
    raw = numpy_helper.to_array(init).tobytes()
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    location = rng.choice(["../outside.bin", "/etc/passwd", "../../../../etc/hostname", "w.bin"])
    del init.external_data[:]
    init.external_data.add(key="location", value=location)
    extra = {"w.bin": raw} if location == "w.bin" else {}
    if rng.random() < 0.3:
        init.external_data.add(key="length", value=str(2**40))
    return m.SerializeToString(), extra


def nan_weights(model, rng):
    m = _copy(model)
    for init in m.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1 and rng.random() < 0.5:
            arr = arr.copy()
            arr.reshape(-1)[rng.randrange(arr.size)] = rng.choice([np.nan, np.inf, -np.inf])
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return m.SerializeToString(), {}


def odd_names(model, rng):
    m = _copy(model)
    names = ["a\nb", "*/ x", '#include "x"', "q\"'\\", "nul\x00x", "../x", "\x1b[31m", "ü名",
             "x" * 5000, ""]  # fmt: skip
    for node in m.graph.node:
        if rng.random() < 0.6:
            node.name = rng.choice(names)
    if rng.random() < 0.3:
        m.graph.name = rng.choice(names)
    return m.SerializeToString(), {}


MUTATIONS = {
    f.__name__: f
    for f in (
        flip_bytes, truncate, odd_input_dims, drop_initializer, reshape_initializer,
        dangling_input, duplicate_output, make_cycle, unknown_op, odd_opset, wrong_dtype,
        external_outside, nan_weights, odd_names,
    )
}  # fmt: skip


def make_cases(n: int, command: str, seeds: dict, rng: random.Random, only=None) -> list[Case]:
    names = [k for k in seeds if only is None or k in only]
    cases = []
    for i in range(n):
        seed = rng.choice(names)
        mutation = rng.choice(list(MUTATIONS))
        payload, extra = MUTATIONS[mutation](seeds[seed], rng)
        cases.append(Case(f"{command}-{i}-{seed}-{mutation}", command, payload, mutation, extra))
    return cases


# -- one case, in a worker ----------------------------------------------------------------------


def _ort_reference(path: str, x: np.ndarray):
    """onnxruntime's output, or None where onnxruntime refuses or fails on the model."""
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    except Exception:  # noqa: BLE001 - onnxruntime refusing the model is an answer
        return None


def run_case(case: Case) -> Outcome:
    from tvm_sparse.cli import main as cli_main

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        work = os.path.join(root, "work")
        os.makedirs(work)
        model_path = os.path.join(work, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(case.payload)
        for rel, data in case.external.items():
            with open(os.path.join(work, rel), "wb") as f:
                f.write(data)
        before = set(_tree(root))
        out = os.path.join(work, "out.so" if case.command == "compile" else "proj")
        argv = {
            "analyze": ["analyze", model_path],
            "compile": ["compile", model_path, "-o", out, "--measure", "none"],
            "fpga": ["compile", model_path, "--target", "fpga", "-o", out],
        }[case.command]
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = cli_main(argv)
        except SystemExit as err:  # argparse
            rc = err.code if isinstance(err.code, int) else 2
        except MemoryError:
            return _outcome(case, "memory", "MemoryError past the worker's budget", start)
        except BaseException as err:  # noqa: BLE001 - exactly what the harness looks for
            return _outcome(case, "traceback", f"{type(err).__name__}: {err}", start)
        escaped = [p for p in set(_tree(root)) - before if not p.startswith(work)]
        if escaped:
            return _outcome(case, "escaped-file", ", ".join(escaped[:3]), start)
        err_lines = [ln for ln in stderr.getvalue().splitlines() if ln.startswith("tvm-sparse:")]
        if rc == 2:
            errors = [ln for ln in err_lines if ln.startswith("tvm-sparse: error:")]
            if len(errors) != 1:
                return _outcome(case, "bad-error", stderr.getvalue()[-300:], start)
            return _outcome(case, "error", errors[0][19:200], start)
        if rc != 0:
            return _outcome(case, "bad-error", f"exit {rc}: {stderr.getvalue()[-200:]}", start)
        if case.command == "compile":
            return _check_compiled(case, model_path, out, start)
        return _outcome(case, "ok", "", start)


def _check_compiled(case: Case, model_path: str, lib: str, start: float) -> Outcome:
    import tvm_sparse

    module = tvm_sparse.load(lib)
    sizes = [int(np.prod(spec.example_shape())) for spec in module.inputs]
    if sum(sizes) > 1 << 24:  # a legal but huge input: compiling it was the test
        return _outcome(case, "ok", f"compiled; not run ({sum(sizes):,} input values)", start)
    inputs = module.random_inputs(seed=1)
    try:
        got = module.run(*inputs)
    except Exception as err:  # noqa: BLE001 - a named run error is allowed
        from tvm_sparse.errors import TvmSparseError

        if isinstance(err, TvmSparseError):
            return _outcome(case, "error", f"run: {err}"[:200], start)
        return _outcome(case, "traceback", f"run: {type(err).__name__}: {err}", start)
    got = got[0] if isinstance(got, tuple) else got
    ref = _ort_reference(model_path, inputs[0]) if len(inputs) == 1 else None
    if ref is None or ref.shape != got.shape:
        return _outcome(case, "ok", "no onnxruntime reference", start)
    finite = np.abs(ref[np.isfinite(ref)])
    scale = max(float(finite.max(initial=0.0)), 1e-6)
    same = np.allclose(got, ref, rtol=1e-3, atol=1e-3 * scale, equal_nan=True)
    if not same and not np.isfinite(ref).all():
        # NaN / Inf weights: the documented zero-skipping difference (README, strict_nan)
        return _outcome(case, "ok", "non-finite output (zero-skipping semantics)", start)
    return _outcome(case, "ok" if same else "wrong", "" if same else "differs from ort", start)


def _tree(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out


def _outcome(case: Case, status: str, detail: str, start: float) -> Outcome:
    return Outcome(case.name, case.command, case.mutation, status, detail,
                   time.perf_counter() - start)  # fmt: skip


def _worker_main(conn, memory_mb: int) -> None:
    import resource

    os.environ.setdefault("TVM_NUM_THREADS", "1")
    os.environ["TVM_SPARSE_ISOLATE"] = "0"  # one process per case already
    budget = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))
    serve(conn, run_case)


def _failed(case: Case, kind: str, detail: str, seconds: float) -> Outcome:
    return Outcome(case.name, case.command, case.mutation, kind, detail, seconds)


def run_all(cases: list[Case], workers: int, timeout_s: float, memory_mb: int,
            progress=None) -> list[Outcome]:  # fmt: skip
    """Every case through a pool of ``workers`` processes (``worker_pool``), each under a
    ``memory_mb`` data budget."""
    return run_jobs(cases, _worker_main, (memory_mb,), workers, timeout_s, _failed, progress)


def summary(results: list[Outcome], seconds: float) -> str:
    lines = [f"{len(results)} cases in {seconds:.0f} s"]
    for command in ("analyze", "compile", "fpga"):
        got = [r for r in results if r.command == command]
        if got:
            counts = Counter(r.status for r in got)
            lines.append(f"  {command:8s} {len(got):5d}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(counts.items())))  # fmt: skip
    bad = [r for r in results if r.status in DISALLOWED]
    lines.append(f"disallowed outcomes: {len(bad)}")
    for r in bad[:40]:
        lines.append(f"  {r.status:12s} {r.case}: {r.detail[:160]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--analyze", type=int, default=2000)
    p.add_argument("--compile", type=int, default=300)
    p.add_argument("--fpga", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--memory-mb", type=int, default=6144)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    seeds = seed_models()
    small = {"mlp", "kwta_cnn"}
    cases = (
        make_cases(args.analyze, "analyze", seeds, rng)
        + make_cases(args.compile, "compile", seeds, rng)
        + make_cases(args.fpga, "fpga", seeds, rng, only=small)
    )
    start = time.perf_counter()

    def progress(result: Outcome, done: int) -> None:
        if done % 100 == 0 or result.status in DISALLOWED:
            print(f"[{done}/{len(cases)}] {result.status} {result.case} {result.detail[:100]!r}",
                  file=sys.stderr, flush=True)  # fmt: skip

    results = run_all(cases, args.workers, args.timeout, args.memory_mb, progress)
    print(summary(results, time.perf_counter() - start))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)
    return 1 if any(r.status in DISALLOWED for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
