"""Peer runtimes for benchmarks (onnxruntime, DeepSparse) and the timing loops they share.

Every runner times with the same loops (``median_time``; ``sample_calls`` for per-call
latencies), and the benchmarks make the runtimes take turns in short rounds
(``tvm_sparse.timing.take_turns``), so ratios between runtimes measured in one run mean something
on a shared, noisy machine. DeepSparse 1.8 needs numpy<2 and onnx 1.14, so it lives in its own
venv (``.venv-deepsparse/``, made by benchmarks/setup_deepsparse.sh) where tvm_sparse is not
installed: this file doubles as the server that venv's python runs by path
(``python .../tvm_sparse/peers.py --deepsparse-server SPEC``), which is why it imports only numpy
and the standard library at module level, and nothing of tvm_sparse.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time as _time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run by path, Python puts this folder first on sys.path, where modules of tvm_sparse
    # (profile.py, models.py, ...) would shadow the standard library's and DeepSparse's own.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# where `make deepsparse` puts DeepSparse's venv, beside the package of an editable install
DEEPSPARSE_PYTHON = REPO_ROOT / ".venv-deepsparse" / "bin" / "python"
DEEPSPARSE_PYTHON_ENV = "TVM_SPARSE_DEEPSPARSE_PYTHON"
_RESULT_TAG = "PEERS_RESULT "


def default_deepsparse_python() -> Path:
    """DeepSparse's python: ``$TVM_SPARSE_DEEPSPARSE_PYTHON`` when set, else the repository's
    ``.venv-deepsparse/bin/python`` (which may not exist)."""
    env = os.environ.get(DEEPSPARSE_PYTHON_ENV)
    return Path(env) if env else DEEPSPARSE_PYTHON


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def median_time(
    fn: Callable[[], Any], min_time: float = 0.5, min_repeats: int = 5, warmup: int = 2
) -> float:
    """Median seconds per call of `fn`, sampled until `min_time` has passed and `min_repeats`
    samples exist.

    Fast calls (batch 1 is often tens of microseconds) are grouped so one sample lasts about
    1 ms, which keeps timer resolution and loop overhead out of the number. The median, not
    the mean, so a neighbour's burst on a shared machine does not move it much.
    """
    for _ in range(warmup):
        fn()
    start = _time.perf_counter()
    fn()
    once = _time.perf_counter() - start
    number = max(1, int(1e-3 / max(once, 1e-9)))
    samples: list[float] = []
    deadline = _time.perf_counter() + min_time
    while len(samples) < min_repeats or _time.perf_counter() < deadline:
        start = _time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((_time.perf_counter() - start) / number)
    return statistics.median(samples)


def sample_calls(fn: Callable[[], Any], seconds: float, min_samples: int = 1) -> list[float]:
    """Seconds of each call of ``fn``, called back to back for about ``seconds`` (at least
    ``min_samples`` calls): one ``perf_counter`` pair around each call, nothing grouped, so the
    tail of the distribution (p99) is seen. Warm-up is the caller's."""
    samples: list[float] = []
    clock = _time.perf_counter
    deadline = clock() + seconds
    while True:
        start = clock()
        fn()
        end = clock()
        samples.append(end - start)
        if end >= deadline and len(samples) >= min_samples:
            return samples


# --------------------------------------------------------------------------------------------
# onnxruntime
# --------------------------------------------------------------------------------------------
def _as_feed(names: Sequence[str], inputs: Any) -> dict[str, np.ndarray]:
    """Accept a dict name->array, a list of arrays (in model input order) or one array."""
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if len(inputs) != len(names):
        raise ValueError(f"model takes {len(names)} inputs {list(names)}, got {len(inputs)}")
    return dict(zip(names, inputs, strict=True))


class OrtRunner:
    """onnxruntime on CPU with `threads` intra-op threads, sequential execution, all graph
    optimizations: ORT at its best on this machine, the baseline to beat."""

    name = "onnxruntime"

    def __init__(self, model: Any, threads: int = 1, optimize: bool = True):
        """``optimize=False``: no graph optimization (no fusion, no constant folding), the
        graph's own order of float operations: onnxruntime's second opinion on an output."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = ort.GraphOptimizationLevel
        opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
        is_path = isinstance(model, (str, os.PathLike))
        source = os.fspath(model) if is_path else model.SerializeToString()
        self.session = ort.InferenceSession(
            source, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.threads = threads

    def run(self, inputs: Any) -> list[np.ndarray]:
        """Outputs of the model, in graph order."""
        return self.session.run(None, _as_feed(self.input_names, inputs))

    def time(self, inputs: Any, min_time: float = 0.5, min_repeats: int = 5) -> float:
        """Median seconds per inference."""
        return self.timer(inputs, min_repeats)(min_time)

    def timer(self, inputs: Any, min_repeats: int = 3) -> Callable[[float], float]:
        """``timer(seconds)`` -> median seconds per inference, timed for about ``seconds``."""
        feed = _as_feed(self.input_names, inputs)
        return lambda seconds: median_time(
            lambda: self.session.run(None, feed), seconds, min_repeats, warmup=1
        )


# --------------------------------------------------------------------------------------------
# DeepSparse (in its own venv, as a subprocess)
# --------------------------------------------------------------------------------------------
class DeepSparseRunner:
    """DeepSparse 1.8 (Neural Magic's sparse CPU engine) served from `.venv-deepsparse` by a
    subprocess that compiles the model once and then times it on request, so it can take turns
    with the in-process runtimes (`tvm_sparse.timing.take_turns`): `start`, then `time_for`
    (median seconds) or `samples_for` (seconds of every call) per round, then `close` (or use it
    in a `with`). When the venv is missing, `start` returns None and `skip_reason` says why
    (printed once to stderr). `python` defaults to `default_deepsparse_python()`.

    Check its outputs against onnxruntime in every benchmark: on this AVX2 machine DeepSparse
    1.8 returned wrong values for sparse Gemms with 200 or 216 input features (multiples of 8
    but not of 16; 192, 208, 256, 1600 were right), which includes the tiny GSC model."""

    name = "deepsparse"

    def __init__(self, model: Any, threads: int = 1, python: str | os.PathLike | None = None):
        self.python = Path(python) if python is not None else default_deepsparse_python()
        self.threads = threads
        self._tmp = tempfile.TemporaryDirectory(prefix="peers_ds_")
        if isinstance(model, (str, os.PathLike)):
            self.model_path = os.fspath(model)
        else:
            self.model_path = os.path.join(self._tmp.name, "model.onnx")
            with open(self.model_path, "wb") as f:
                f.write(model.SerializeToString())
        self.skip_reason: str | None = None
        if not self.python.exists():
            self.skip_reason = (
                f"DeepSparse skipped: {self.python} not found (run benchmarks/setup_deepsparse.sh "
                f"or set {DEEPSPARSE_PYTHON_ENV})"
            )
        self._warned = False
        self.version: str | None = None  # DeepSparse's, once started
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    @property
    def available(self) -> bool:
        return self.skip_reason is None

    def _skip(self) -> None:
        if not self._warned:
            print(self.skip_reason, file=sys.stderr)
            self._warned = True

    def start(self, inputs: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray] | None:
        """Compile the model in the server and run it once on ``inputs``: its outputs, or None
        when DeepSparse is not installed. The batch size is the first dim of the first input."""
        if not self.available:
            self._skip()
            return None
        self.close()
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        in_path = os.path.join(self._tmp.name, "inputs.npz")
        out_path = os.path.join(self._tmp.name, "outputs.npz")
        np.savez(in_path, *arrays)
        spec = {
            "model": self.model_path,
            "inputs": in_path,
            "outputs": out_path,
            "threads": self.threads,
        }
        cmd = [os.fspath(self.python), os.fspath(Path(__file__).resolve())]
        cmd += ["--deepsparse-server", json.dumps(spec)]
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1")
        # stderr to a file, not a pipe: DeepSparse logs there, and a full pipe would block it
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=env,
        )  # fmt: skip
        # the server answers once the model is compiled and has run once
        self.version = self._reply().get("version")
        with np.load(out_path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def time_for(self, seconds: float, min_repeats: int = 3) -> float:
        """Median seconds per inference, timed in the server for about ``seconds``."""
        reply = self._ask("time_for", {"seconds": seconds, "min_repeats": min_repeats})
        return float(reply["median_s"])

    def samples_for(self, seconds: float, warmup: int = 0) -> list[float]:
        """Seconds of every inference (``sample_calls``) timed in the server for about
        ``seconds``, after ``warmup`` untimed ones."""
        reply = self._ask("samples_for", {"samples": True, "seconds": seconds, "warmup": warmup})
        return [float(t) for t in reply["samples_s"]]

    def _ask(self, what: str, request: dict) -> dict:
        """Send one timing request to the started server; its answer."""
        if self._proc is None:
            raise RuntimeError(f"DeepSparseRunner.{what} before start()")
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith(_RESULT_TAG):
                return json.loads(line[len(_RESULT_TAG) :])
        code = self._proc.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:]
        self._proc = None
        raise RuntimeError(f"DeepSparse server failed (exit {code}):\n{tail}")

    def close(self) -> None:
        """Stop the server (it exits at the end of its input)."""
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> DeepSparseRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deepsparse_server(spec: dict) -> None:
    """Runs inside .venv-deepsparse: compile, run once, write outputs, answer with DeepSparse's
    version; then one timing per input line until EOF, each answered on one line:
    ``{"seconds", "min_repeats"}`` -> ``{"median_s"}`` (``median_time``), or
    ``{"samples": true, "seconds", "warmup"}`` -> ``{"samples_s": [...]}``, the seconds of every
    call (``sample_calls``) after ``warmup`` untimed calls."""
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    import deepsparse

    with np.load(spec["inputs"]) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    engine = deepsparse.compile_model(
        spec["model"], batch_size=int(arrays[0].shape[0]), num_cores=int(spec["threads"])
    )
    np.savez(spec["outputs"], *engine.run(arrays))
    print(_RESULT_TAG + json.dumps({"version": deepsparse.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("samples"):
            for _ in range(int(request.get("warmup", 0))):
                engine.run(arrays)
            answer = {"samples_s": sample_calls(lambda: engine.run(arrays), request["seconds"])}
        else:
            seconds = median_time(
                lambda: engine.run(arrays), request["seconds"], request["min_repeats"], warmup=1
            )
            answer = {"median_s": seconds}
        print(_RESULT_TAG + json.dumps(answer), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--deepsparse-server":
        _deepsparse_server(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: peers.py --deepsparse-server JSON  (used by DeepSparseRunner)")
