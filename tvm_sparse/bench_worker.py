"""One thread count of ``tvm-sparse benchmark``, in its own process (``TVM_NUM_THREADS`` is set
by the parent before TVM is imported here).

    python -m tvm_sparse.bench_worker SPEC.json EVENTS_FD

For each configuration of the spec (a batch size, its model file and input shapes): compile with
tvm-sparse, open onnxruntime, start DeepSparse's server, check the outputs against onnxruntime's,
then time the engines in turns. Progress (``{"event": "phase"}``) and each configuration's result
(``{"event": "result"}``) go to ``EVENTS_FD`` as JSON lines, so what TVM, LLVM or DeepSparse print
cannot get in their way. A failure of one configuration is caught and reported in its result; the
parent handles a worker that dies. See ``tvm_sparse.benchmark`` for what is timed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from .benchmark import MEASURE_MODES, add_ratios, compare_outputs, random_inputs, summarize
from .peers import DeepSparseRunner, OrtRunner, sample_calls
from .timing import take_turns

# how far through a configuration each phase is, for the progress bar
_COMPILE, _ORT, _DEEPSPARSE, _CHECK, _TIMING = 0.0, 0.3, 0.35, 0.45, 0.5


class _Events:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def send(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()


def _detail(err: BaseException) -> str:
    from .errors import TvmSparseError, error_detail

    if isinstance(err, TvmSparseError):
        return str(err)
    return f"{type(err).__name__}: {error_detail(err)}"


def _server_error(err: BaseException) -> str:
    """DeepSparse's server failure as one line: what failed and the last line it printed."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _as_list(out: Any) -> list[np.ndarray]:
    return list(out) if isinstance(out, tuple) else [out]


def run_config(spec: dict, config: dict, events: _Events) -> dict:
    """Compile, check and time one configuration; its result (``error`` set when it failed)."""
    result = _run_config(spec, config, events)
    source = config.get("source")
    if source:  # name the user's model, not its temporary copy at this batch size
        for entry in [result, *result["engines"].values()]:
            for key in ("error", "reference_error"):
                if entry.get(key):
                    entry[key] = entry[key].replace(config["model"], source)
    return result


def _run_config(spec: dict, config: dict, events: _Events) -> dict:
    import tvm_sparse

    batch, threads = config["batch"], int(spec["threads"])
    result: dict = {"batch": batch, "threads": threads, "error": None, "engines": {}}
    engines: dict[str, dict] = result["engines"]
    versions: dict[str, str] = {}
    result["versions"] = versions

    now = ["starting"]

    def phase(text: str, fraction: float) -> None:
        now[0] = text
        events.send("phase", batch=batch, phase=text, fraction=fraction)

    inputs = random_inputs(config["inputs"], seed=int(spec.get("seed", 0)))
    calls: dict[str, Callable[[], Any]] = {}

    phase("compiling tvm-sparse", _COMPILE)
    start = time.perf_counter()
    try:
        module = tvm_sparse.compile(
            config.get("compile_model", config["model"]),
            spec["target"],
            input_shapes={i["name"]: tuple(i["shape"]) for i in config["inputs"]},
            sparse=spec["sparse"],
            measure=MEASURE_MODES[spec["measure"]],
        )
        compile_s = time.perf_counter() - start
        outputs = _as_list(module.run(*inputs))
        calls["tvm-sparse"] = module.device_call(*inputs)
    except Exception as err:  # noqa: BLE001 - any failure fails this configuration only
        result["error"] = f"tvm-sparse: {_detail(err)}"
        return result
    engines["tvm-sparse"] = {"compile_s": compile_s}

    reference = None
    if spec["onnxruntime"] != "none":
        phase("starting onnxruntime", _ORT)
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
        start = time.perf_counter()
        try:
            ort = OrtRunner(config["model"], threads=threads)
            reference = ort.run(inputs)
            if spec["onnxruntime"] == "time":
                engines["onnxruntime"] = {"compile_s": time.perf_counter() - start}
                session, feed = ort.session, dict(zip(ort.input_names, inputs, strict=True))
                calls["onnxruntime"] = lambda: session.run(None, feed)
        except Exception as err:  # noqa: BLE001
            if spec["onnxruntime"] == "time":
                engines["onnxruntime"] = {"error": _detail(err)}
            result["reference_error"] = _detail(err)

    deepsparse = None
    ds_outputs = None
    if spec.get("deepsparse_python"):
        phase("compiling deepsparse", _DEEPSPARSE)
        start = time.perf_counter()
        try:
            deepsparse = DeepSparseRunner(
                config["model"], threads=threads, python=spec["deepsparse_python"]
            )
            ds_outputs = deepsparse.start(inputs)
            engines["deepsparse"] = {"compile_s": time.perf_counter() - start}
            versions["deepsparse"] = deepsparse.version or "?"
        except Exception as err:  # noqa: BLE001
            engines["deepsparse"] = {"error": _server_error(err)}
            if deepsparse is not None:
                deepsparse.close()
            deepsparse = None

    try:
        phase("checking outputs", _CHECK)
        checked = {"tvm-sparse": outputs}
        if ds_outputs is not None:
            checked["deepsparse"] = ds_outputs
        for name, outs in checked.items():
            if reference is None:
                engines[name]["outputs_match"] = None
                continue
            verdict = compare_outputs(outs, reference)
            engines[name]["outputs_match"] = verdict["match"]
            engines[name]["max_abs_diff"] = verdict["max_abs_diff"]
            if not verdict["match"]:
                engines[name]["mismatch"] = verdict["detail"]

        timed = [name for name in ("tvm-sparse", "onnxruntime", "deepsparse") if name in engines]
        timed = [name for name in timed if "error" not in engines[name]]
        rounds = int(spec["rounds"])
        round_s = float(spec["time_s"]) / rounds
        warmup = int(spec["warmup"])
        samples: dict[str, list[float]] = {name: [] for name in timed}
        turns = [0]
        failed: set[str] = set()

        def timer(name: str) -> Callable[[], float]:
            def one_round() -> float:
                r = turns[0] // len(timed)
                turns[0] += 1
                phase(f"timing round {r + 1}/{rounds}", _TIMING + (1 - _TIMING) * r / rounds)
                if name in failed:
                    return float("nan")
                if name == "deepsparse":
                    try:
                        got = deepsparse.samples_for(round_s, warmup=warmup if r == 0 else 0)
                    except RuntimeError as err:  # the server died: the others go on
                        engines[name]["error"] = _server_error(err)
                        failed.add(name)
                        return float("nan")
                else:
                    if r == 0:
                        for _ in range(warmup):
                            calls[name]()
                    got = sample_calls(calls[name], round_s)
                samples[name] += got
                return float(np.median(got)) * 1e3

            return one_round

        medians = take_turns({name: timer(name) for name in timed}, rounds)
    except Exception as err:  # noqa: BLE001
        result["error"] = f"{now[0]}: {_detail(err)}"
        return result
    finally:
        if deepsparse is not None:
            deepsparse.close()

    for name in timed:
        if name in failed:
            continue
        engines[name].update(summarize(samples[name], batch))
        engines[name]["round_p50_ms"] = medians[name]
    add_ratios(engines)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m tvm_sparse.bench_worker SPEC.json EVENTS_FD", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    with os.fdopen(int(argv[1]), "w") as stream:
        events = _Events(stream)
        for config in spec["configs"]:
            events.send("result", result=run_config(spec, config, events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
