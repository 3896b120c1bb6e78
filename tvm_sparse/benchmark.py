"""``tvm-sparse benchmark MODEL``: tvm-sparse against onnxruntime (and DeepSparse), like
``deepsparse.benchmark``.

    tvm-sparse benchmark MODEL [--batch-sizes 1,16] [--threads 1,2] [--time 5] [--rounds 10]
                         [--warmup 10] [--target llvm] [--dense] [--measure auto|all|none]
                         [--input-shapes ...] [--json out.json] [--no-onnxruntime]
                         [--no-deepsparse] [--deepsparse-python PATH]

Per configuration (batch size x thread count) the model is compiled with tvm-sparse, run by
onnxruntime and by DeepSparse on the same seeded random inputs, checked against onnxruntime's
outputs (rtol 1e-3, atol 1e-3 x the output's largest magnitude; a mismatch is reported, never
hidden), then timed. The engines take turns (``tvm_sparse.timing.take_turns``): ``--rounds``
rounds, in each of which every engine runs back to back for ``--time / --rounds`` seconds, the
order rotating per round, so a noisy spell of a shared machine hits them all alike.

What is timed: one ``perf_counter`` pair around every call, nothing grouped (``peers.sample_
calls``), after ``--warmup`` untimed calls. tvm-sparse: the VM's ``main`` on inputs already on the
device plus a device sync, as ``CompiledModule.benchmark`` does; the input transfer is not timed,
allocating the outputs is, copying them to numpy is not. onnxruntime: ``session.run`` on a feed
dict of numpy arrays made beforehand; ORT's own input binding and its numpy outputs are timed.
DeepSparse: ``engine.run`` on numpy arrays made beforehand, timed inside its server process (its
input validation is timed; the request to the server is not). Percentiles come from every sample
of every round; throughput is ``batch / mean latency`` (items per second of back-to-back calls);
``x onnxruntime`` is onnxruntime's p50 / the engine's p50.

TVM sizes its thread pool when it is imported, so each thread count runs in its own worker
process (``tvm_sparse.bench_worker``, ``TVM_NUM_THREADS`` set) that compiles the model for each
batch size there (the kernel choice depends on the thread count); onnxruntime gets as many
intra-op threads, DeepSparse as many cores. For a batch size other than the model's own, the
model is copied with its graph inputs' batch dim set to it (the first dim; the second of an
input an LSTM / GRU / RNN reads at layout 0; outputs' dims cleared, value_info dropped) so
onnxruntime and DeepSparse take it too; a model that cannot take it (a Reshape to a fixed
batch) fails that configuration, with the error, and the others go on.

Exit status: 0 when every configuration ran and tvm-sparse's outputs matched; 1 when one failed
or mismatched (the table and JSON still say which); 2 for bad input (the usual error line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

import numpy as np

from .safe_text import terminal_text

ENGINES = ("tvm-sparse", "onnxruntime", "deepsparse")
REFERENCE = "onnxruntime"
RTOL = 1e-3
# the --measure words of the compile and benchmark commands, as compile()'s ``measure``
MEASURE_MODES = {"auto": "auto", "all": True, "none": False}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on (its affinity mask), whatever TVM_NUM_THREADS says."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _int_list(text: str, what: str, allow_all: bool) -> list[int]:
    values: list[int] = []
    for item in (s.strip() for s in text.split(",")):
        if allow_all and item.lower() == "all":
            item = "0"
        if not item.isdigit() or (int(item) < 1 and not allow_all):
            hint = "positive integers or 0 / all (every core)" if allow_all else "positive integers"
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: expected {hint}, e.g. 1,16")
        value = int(item) or available_cores()
        if value not in values:
            values.append(value)
    return values


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,16"`` -> [1, 16] (duplicates dropped, order kept)."""
    return _int_list(text, "batch sizes", allow_all=False)


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]; 0 or ``all`` means every core this process may use."""
    return _int_list(text, "thread counts", allow_all=True)


def default_threads() -> list[int]:
    """1 and every core (one entry on a one-core machine)."""
    return parse_threads("1,all")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)

    return parse


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``benchmark`` to the ``tvm-sparse`` subcommands; returns its parser."""
    b = subparsers.add_parser(
        "benchmark",
        help="time tvm-sparse against onnxruntime and DeepSparse (latency percentiles)",
        description="Compile MODEL with tvm-sparse and time it against onnxruntime (and "
        "DeepSparse when its venv is found), the engines taking turns in rounds; prints latency "
        "percentiles and throughput per batch size and thread count.",
        epilog="Exit status: 0 when every configuration ran and tvm-sparse's outputs matched "
        "onnxruntime's, 1 when one failed or did not match, 2 for bad input.",
    )
    b.add_argument("model", help="ONNX file")
    b.add_argument(
        "--batch-sizes",
        type=parse_batch_sizes,
        default=None,
        metavar="B,B,...",
        help="batch sizes (default: the model's own, else 1)",
    )
    b.add_argument(
        "--threads",
        type=parse_threads,
        default=None,
        metavar="T,T,...",
        help="thread counts; 0 or 'all' = every core (default: 1 and every core)",
    )
    b.add_argument(
        "--time",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="timed seconds per engine per configuration (default 5)",
    )
    b.add_argument(
        "--rounds",
        type=_count(1),
        default=10,
        help="rounds the engines take turns in (default 10)",
    )
    b.add_argument(
        "--warmup", type=_count(0), default=10, help="untimed calls per engine first (default 10)"
    )
    b.add_argument("--target", default="llvm", help="tvm-sparse's target (default llvm)")
    b.add_argument("--dense", action="store_true", help="tvm-sparse with dense kernels only")
    b.add_argument(
        "--measure",
        choices=tuple(MEASURE_MODES),
        default="auto",
        help="tvm-sparse's kernel choice: time dense + best sparse (auto), all, none",
    )
    b.add_argument(
        "--input-shapes",
        metavar="NAME:DxD,...",
        help="static input shapes (their batch dim is replaced by each batch size)",
    )
    b.add_argument("--json", metavar="FILE", help="write every number here")
    b.add_argument(
        "--no-onnxruntime",
        action="store_true",
        help="do not time onnxruntime (its outputs still check the others')",
    )
    b.add_argument("--no-deepsparse", action="store_true", help="do not time DeepSparse")
    b.add_argument(
        "--deepsparse-python",
        metavar="PATH",
        help="python of DeepSparse's venv (default: $TVM_SPARSE_DEEPSPARSE_PYTHON, else "
        ".venv-deepsparse/bin/python beside the package)",
    )
    # here too, so `tvm-sparse benchmark -q` works as well as `tvm-sparse -q benchmark`
    b.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bar"
    )
    return b


# --------------------------------------------------------------------------------------------
# Inputs and the batch rewrite
# --------------------------------------------------------------------------------------------
# inputs of a recurrent node that carry the batch: X, sequence_lens, initial_h (, initial_c)
_RECURRENT_BATCHED = {"LSTM": (0, 4, 5, 6), "GRU": (0, 4, 5), "RNN": (0, 4, 5)}


def batch_axes(model) -> dict[str, int]:
    """The batch axis of the graph inputs where it is not the first: an input a recurrent node
    (LSTM, GRU, RNN) reads as X (``[seq, batch, in]``) or initial_h / initial_c (``[directions,
    batch, hidden]``) has it second at ``layout`` 0, ONNX's default. Other inputs: axis 0."""
    axes = {}
    for node in model.graph.node:
        slots = _RECURRENT_BATCHED.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if not slots:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        for position, name in enumerate(node.input):
            if name and position in slots and position != 4 and layout == 0:
                axes[name] = 1
    return axes


def batch_shapes(
    specs: Sequence, batch: int, source: str, axes: dict[str, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Every input's static shape at ``batch``: its batch dim (``axes``, else the first)
    replaced; other dims must be static (the model's or ``--input-shapes``'). Scalar inputs
    keep their shape."""
    from .errors import InputShapeError

    axes = axes or {}
    shapes = {}
    for spec in specs:
        if spec.shape is None:
            raise InputShapeError(
                f"{source}: input {spec.name!r} has no declared shape: give it with --input-shapes"
            )
        axis = axes.get(spec.name, 0)
        rest = [d for i, d in enumerate(spec.shape) if i != axis]
        if any(not isinstance(d, int) for d in rest):
            example = "x".join(str(d) for d in spec.example_shape())
            raise InputShapeError(
                f"{source}: input {spec.name!r} has dynamic dims {spec.shape_text()} beyond the "
                f"batch: give them with --input-shapes {spec.name}:{example}"
            )
        shape = list(spec.shape)
        if axis < len(shape):
            shape[axis] = batch
        shapes[spec.name] = tuple(shape)
    return shapes


def model_batch(specs: Sequence, axes: dict[str, int] | None = None) -> int:
    """The batch the model declares (the batch dim of its first input with a static one, axis
    0 unless ``axes`` says otherwise), else 1."""
    axes = axes or {}
    for spec in specs:
        axis = axes.get(spec.name, 0)
        if spec.shape and axis < len(spec.shape) and isinstance(spec.shape[axis], int):
            return spec.shape[axis]
    return 1


def has_dynamic_dims(model) -> bool:
    """Whether a graph input of ``model`` (initializers aside) declares a dim without a
    value."""
    from .frontend import onnx_input_specs

    return any(not spec.is_static for spec in onnx_input_specs(model, None))


def with_input_shapes(model, shapes: dict[str, tuple[int, ...]]):
    """A copy of ``model`` whose graph inputs have ``shapes``, with the outputs' dims cleared
    (the batch is not always their first: an RNN's Y is ``[seq, directions, batch, hidden]``)
    and ``value_info`` dropped (shape hints for the old batch that onnxruntime would refuse);
    None when the inputs already have those shapes (the file can be used as it is)."""
    from .onnx_fold import input_dims, with_input_dims

    inputs = [vi for vi in model.graph.input if vi.name in shapes]
    if all(input_dims(vi) == tuple(shapes[vi.name]) for vi in inputs):
        return None
    return with_input_dims(model, shapes)


def random_inputs(inputs: Sequence[dict], seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs for ``[{"name", "shape", "dtype"}]``, made as ``CompiledModule`` makes
    them (``module.random_arrays``)."""
    from .module import random_arrays

    return random_arrays(((spec["shape"], spec["dtype"]) for spec in inputs), seed)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
def compare_outputs(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict:
    """``{"match", "max_abs_diff", "detail"}``: every output within rtol 1e-3 of the reference
    with an absolute floor of 1e-3 x the reference's largest magnitude (exact for integers)."""
    if len(outputs) != len(reference):
        return {
            "match": False,
            "max_abs_diff": None,
            "detail": f"{len(outputs)} outputs, onnxruntime gives {len(reference)}",
        }
    worst = 0.0
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        out, ref = np.asarray(out), np.asarray(ref)
        if out.shape != ref.shape:
            return {
                "match": False,
                "max_abs_diff": None,
                "detail": f"output {i}: shape {list(out.shape)}, onnxruntime {list(ref.shape)}",
            }
        if ref.size == 0:
            continue
        if not np.issubdtype(ref.dtype, np.floating):
            if not np.array_equal(out, ref):
                return {"match": False, "max_abs_diff": None, "detail": f"output {i} differs"}
            continue
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        finite = np.isfinite(ref64)
        scale = max(float(np.abs(ref64[finite]).max()) if finite.any() else 0.0, 1e-6)
        diff = np.abs(out64 - ref64)
        worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
        if not np.allclose(out64, ref64, rtol=RTOL, atol=RTOL * scale, equal_nan=True):
            where = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
            return {
                "match": False,
                "max_abs_diff": worst,
                "detail": f"output {i}: max |diff| {worst:.3g} at {list(map(int, where))} "
                f"(tolerance {RTOL:g} relative + {RTOL * scale:.3g} absolute)",
            }
    return {"match": True, "max_abs_diff": worst, "detail": ""}


def summarize(samples_s: Sequence[float], batch: int) -> dict:
    """Latency statistics (ms) of per-call ``samples_s`` and the throughput they give."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return {
        "samples": int(ms.size),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "items_per_s": batch / (mean / 1e3),
    }


def add_ratios(engines: dict[str, dict]) -> None:
    """``x_onnxruntime`` (onnxruntime's p50 / the engine's p50) on every timed engine."""
    ref = engines.get(REFERENCE, {}).get("p50_ms")
    for entry in engines.values():
        if ref and entry.get("p50_ms"):
            entry["x_onnxruntime"] = ref / entry["p50_ms"]


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class Progress:
    """One progress line on ``stream``: rewritten in place (``\\r``) on a terminal, else a
    plain line when the phase changes (timing rounds: every 15 s at most). ``enabled=False``
    prints nothing but the messages."""

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = max(total, 1)
        self.done = 0
        self._width = 0
        self._last_kind = ""
        self._last_time = 0.0

    def percent(self, fraction: float) -> int:
        return int(100 * min(self.done + min(max(fraction, 0.0), 1.0), self.total) / self.total)

    def update(self, batch: int, threads: int, phase: str, fraction: float = 0.0) -> None:
        if not self.enabled:
            return
        pct = self.percent(fraction)
        what = f"batch {batch}, threads {threads}: {phase}"
        if self.tty:
            filled = pct * 20 // 100
            line = f"benchmark [{'#' * filled}{'.' * (20 - filled)}] {pct:3d}% {what}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()
            return
        kind = phase.split()[0] if phase else ""
        now = time.monotonic()
        if kind != self._last_kind or now - self._last_time >= 15.0:
            self.stream.write(f"tvm-sparse: benchmark [{pct:3d}%] {what}\n")
            self.stream.flush()
            self._last_kind, self._last_time = kind, now

    def config_done(self) -> None:
        self.done += 1
        self._last_kind = ""

    def clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def message(self, text: str) -> None:
        """A line for the user (shown even when quiet), the progress line cleared first."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------
def worker_command(spec_path: str, events_fd: int) -> list[str]:
    """The command of one worker (one thread count): events are written to ``events_fd``."""
    return [sys.executable, "-m", "tvm_sparse.bench_worker", spec_path, str(events_fd)]


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _log_tail(log: IO[bytes], lines: int = 6) -> str:
    log.seek(0)
    text = log.read().decode("utf-8", "replace")
    if os.environ.get("TVM_SPARSE_DEBUG"):
        return text
    kept = [ln.rstrip() for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(kept)


def failed_config(batch: int, threads: int, error: str) -> dict:
    return {"batch": batch, "threads": threads, "error": error, "engines": {}}


def _events(read_fd: int, proc: subprocess.Popen) -> Iterator[dict]:
    """The worker's events until its pipe closes, or until it has exited and the pipe is empty
    (a process it forked may still hold the pipe open)."""
    buffer = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                return
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            return
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def run_worker(spec: dict, threads: int, workdir: str, progress: Progress) -> list[dict]:
    """Run every configuration of ``spec`` at ``threads`` in worker processes; a worker that
    dies fails the configuration it was in (named, with the end of its output) and a new one
    takes the rest."""
    remaining = [c["batch"] for c in spec["configs"]]
    results: list[dict] = []
    attempt = 0
    while remaining:
        attempt += 1
        spec_path = os.path.join(workdir, f"worker_t{threads}_{attempt}.json")
        todo = [c for c in spec["configs"] if c["batch"] in remaining]
        with open(spec_path, "w") as f:
            json.dump({**spec, "threads": threads, "configs": todo}, f)
        env = dict(os.environ, TVM_NUM_THREADS=str(threads))
        read_fd, write_fd = os.pipe()
        with tempfile.TemporaryFile() as log:
            try:
                proc = subprocess.Popen(
                    worker_command(spec_path, write_fd),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    pass_fds=(write_fd,),
                )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            current, phase = None, "starting"
            try:
                for event in _events(read_fd, proc):
                    if event.get("event") == "phase":
                        current, phase = event["batch"], event["phase"]
                        progress.update(current, threads, phase, event.get("fraction", 0.0))
                    elif event.get("event") == "result":
                        result = event["result"]
                        results.append(result)
                        if result["batch"] in remaining:
                            remaining.remove(result["batch"])
                        progress.config_done()
                        current, phase = None, "starting"
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                os.close(read_fd)
            if remaining:
                batch = current if current in remaining else remaining[0]
                tail = _log_tail(log)
                error = (
                    f"the benchmark worker for batch {batch}, threads {threads} died "
                    f"({_exit_text(code)}) while {phase}"
                    + (f"; its last output:\n{_indent(tail)}" if tail else "")
                )
                results.append(failed_config(batch, threads, error))
                remaining.remove(batch)
                progress.config_done()
    return results


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------
# Report: table and JSON
# --------------------------------------------------------------------------------------------
TABLE_COLUMNS = (
    "engine",
    "batch",
    "threads",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "items/s",
    "x onnxruntime",
    "outputs match",
)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if value >= 1 else f"{value:#.4g}"  # 4 digits below 1 ms


def _match_cell(name: str, entry: dict) -> str:
    if "error" in entry:
        return "FAILED"
    if name == REFERENCE:
        return "reference"
    match = entry.get("outputs_match")
    return "-" if match is None else "yes" if match else "MISMATCH"


def table_rows(results: Sequence[dict]) -> list[list[str]]:
    """One row per engine per configuration (a failed configuration: one FAILED row)."""
    rows = []
    for res in results:
        engines = res.get("engines", {})
        if not engines and res.get("error"):
            engines = {"tvm-sparse": {"error": res["error"]}}
        for name in ENGINES:
            if name not in engines:
                continue
            e = engines[name]
            rate = e.get("items_per_s")
            ratio = e.get("x_onnxruntime")
            rows.append(
                [
                    name,
                    str(res["batch"]),
                    str(res["threads"]),
                    _ms(e.get("p50_ms")),
                    _ms(e.get("p90_ms")),
                    _ms(e.get("p99_ms")),
                    _ms(e.get("mean_ms")),
                    "-" if rate is None else f"{rate:.1f}",
                    "-" if ratio is None else f"{ratio:.2f}x",
                    _match_cell(name, e),
                ]
            )
    return rows


def format_table(results: Sequence[dict]) -> str:
    """The results as an aligned Markdown table of ``TABLE_COLUMNS``."""
    rows = table_rows(results)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(TABLE_COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join([first, *rest]) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(TABLE_COLUMNS), sep] + [line(r) for r in rows])


def header_line(report: dict) -> str:
    """The CPU, ISA and settings the numbers were taken with."""
    s = report["settings"]
    return (
        f"CPU: {report['cpu']}; ISA: {report['isa']}; {report['cores']} cores; target "
        f"{s['target']}; {s['time_s']:g} s per engine per config in {s['rounds']} rounds"
    )


def problems(results: Sequence[dict]) -> list[str]:
    """One line per failed configuration, failed engine, output mismatch and configuration
    whose outputs could not be checked."""
    lines = []
    for res in results:
        where = f"batch {res['batch']}, threads {res['threads']}"
        if res.get("error"):
            lines.append(f"FAILED {where}: {res['error']}")
        if res.get("reference_error"):
            lines.append(f"UNCHECKED {where}: onnxruntime failed: {res['reference_error']}")
        for name, entry in res.get("engines", {}).items():
            if "error" in entry and entry["error"] != res.get("error"):
                lines.append(f"FAILED {where}: {name}: {entry['error']}")
            elif entry.get("outputs_match") is False:
                lines.append(
                    f"MISMATCH {where}: {name}'s outputs differ from onnxruntime's: "
                    f"{entry.get('mismatch', '')}"
                )
    return lines


def build_report(
    model_path: str, settings: dict, results: list[dict], notes: Sequence[str]
) -> dict:
    """Everything the run measured, with the machine and versions, as one JSON-ready dict."""
    import tvm

    import tvm_sparse

    from .machine import cpu_model
    from .target import cpu_isa

    versions = {"tvm_sparse": tvm_sparse.__version__, "tvm": tvm.__version__}
    for res in results:
        for key, value in res.pop("versions", {}).items():
            versions.setdefault(key, value)
    return {
        "format": "tvm-sparse-benchmark",
        "version": 1,
        "model": os.path.abspath(model_path),
        "cpu": cpu_model(),
        "isa": cpu_isa("llvm").describe(),
        "cores": available_cores(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions,
        "settings": settings,
        "notes": list(notes),
        "results": results,
    }


def write_json(report: dict, path: str) -> None:
    """Write ``report`` to ``path`` (indented JSON)."""
    from .errors import TvmSparseError

    try:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    except OSError as err:
        raise TvmSparseError(f"--json {path}: cannot write it ({err.strerror or err})") from err


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _deepsparse_python(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(DeepSparse's python, None) or (None, why DeepSparse is skipped)."""
    from .errors import TvmSparseError
    from .peers import DEEPSPARSE_PYTHON, DEEPSPARSE_PYTHON_ENV

    if args.no_deepsparse:
        return None, None
    given = args.deepsparse_python or os.environ.get(DEEPSPARSE_PYTHON_ENV)
    if given:
        source = "--deepsparse-python" if args.deepsparse_python else DEEPSPARSE_PYTHON_ENV
        found = shutil.which(given) if os.sep not in given else given
        if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
            raise TvmSparseError(f"{source} {given}: no such executable")
        return found, None
    if DEEPSPARSE_PYTHON.exists():
        return str(DEEPSPARSE_PYTHON), None
    return None, (
        f"DeepSparse skipped: {DEEPSPARSE_PYTHON} not found (make deepsparse; or give "
        f"--deepsparse-python or {DEEPSPARSE_PYTHON_ENV})"
    )


def _onnxruntime_mode(args: argparse.Namespace) -> tuple[str, str | None]:
    """``time`` (timed and the reference), ``reference`` (outputs only) or ``none``."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        why = "onnxruntime skipped: not installed (pip install onnxruntime)"
        return "none", None if args.no_onnxruntime else why
    return ("reference" if args.no_onnxruntime else "time"), None


def run_benchmark(args: argparse.Namespace) -> int:
    """The ``benchmark`` command for parsed arguments."""
    from .frontend import load_onnx, onnx_input_specs, parse_input_shapes

    model = load_onnx(args.model)
    specs = onnx_input_specs(model, parse_input_shapes(args.input_shapes), args.model)
    axes = batch_axes(model)
    batches = args.batch_sizes or [model_batch(specs, axes)]
    threads = args.threads or default_threads()
    shapes = {b: batch_shapes(specs, b, args.model, axes) for b in batches}
    ds_python, ds_note = _deepsparse_python(args)
    ort_mode, ort_note = _onnxruntime_mode(args)
    progress = Progress(len(batches) * len(threads), enabled=not getattr(args, "quiet", False))
    notes = [n for n in (ort_note, ds_note) if n]
    for note in notes:
        progress.message(f"tvm-sparse: {note}")

    settings = {
        "batch_sizes": batches,
        "threads": threads,
        "time_s": args.time,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "target": args.target,
        "dense": args.dense,
        "measure": args.measure,
        "input_shapes": args.input_shapes,
        "onnxruntime": ort_mode == "time",
        "deepsparse_python": ds_python,
        "rtol": RTOL,
    }
    dtypes = {s.name: s.dtype for s in specs}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-benchmark-") as workdir:
        configs = []
        for b in batches:
            rewritten = with_input_shapes(model, shapes[b])
            path = os.path.abspath(args.model)
            if rewritten is not None:
                import onnx

                path = os.path.join(workdir, f"model_b{b}.onnx")
                onnx.save(rewritten, path)
            inputs = [
                {"name": n, "shape": list(s), "dtype": dtypes[n]} for n, s in shapes[b].items()
            ]
            # errors name the user's file, not the temporary copy
            source = args.model if rewritten is None else f"{args.model} (at batch {b})"
            # tvm-sparse compiles a model with dynamic dims from the file itself, specialized by
            # the shapes, as `compile --input-shapes` does (frontend.import_onnx folds its shape
            # plumbing for them); the copy with static dims is onnxruntime's
            own = os.path.abspath(args.model) if has_dynamic_dims(model) else path
            configs.append({"batch": b, "model": path, "compile_model": own, "source": source,
                            "inputs": inputs})  # fmt: skip
        spec = {
            "configs": configs,
            "target": args.target,
            "sparse": not args.dense,
            "measure": args.measure,
            "time_s": args.time,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "onnxruntime": ort_mode,
            "deepsparse_python": ds_python,
            "seed": 0,
        }
        for t in threads:
            results += run_worker(spec, t, workdir, progress)
    progress.clear()
    order = {(b, t): i for i, (b, t) in enumerate((b, t) for b in batches for t in threads)}
    results.sort(key=lambda r: order.get((r["batch"], r["threads"]), len(order)))

    report = build_report(args.model, settings, results, notes)
    print(f"tvm-sparse benchmark: {terminal_text(args.model, None)}")
    print(header_line(report))
    print(format_table(results))
    for problem in problems(results):  # errors quote the model's names: no escapes shown
        for line in problem.splitlines():
            print(terminal_text(line, None), file=sys.stderr)
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    bad = any(
        r.get("error") or r["engines"].get("tvm-sparse", {}).get("outputs_match") is False
        for r in results
    )
    return 1 if bad else 0
