"""Auto-tuning: every kernel of a model searched on this machine or an RPC device, records on disk.

Two kinds of tasks, because the two kinds of kernels are built differently:

- **Kernel tasks** (one per layer and candidate kernel: dense GEMM, CSR, BSR, sparse conv,
  sparse-sparse). The sparse kernels are block-free TIR whose loop extents come from the packed
  weight, so MetaSchedule cannot transform them; their schedule lives in the builders' keyword
  knobs (register tile, batch tile, column panel, output tile, packing budget, parallel).
  Tuning builds the kernel with a knob setting **on the layer's real weights** (the real index
  and value arrays, so the measurement sees the real sparsity structure), times it, and keeps
  the fastest. The builder's own default (the hand schedule) is always trial 0, so a tuned
  kernel is never slower than the hand schedule. An XGBoost model fitted on the knobs -> log time
  of the trials so far picks the next setting when the space is larger than the trial budget.
  Records: ``RECORDS_DIR/kernel_records.json``, keyed by a hash of (candidate, shapes, epilogue,
  weight and bias bytes, target).
- **MetaSchedule tasks**: the fused TIR functions left after legalization that no tvm-sparse
  kernel covers (pooling, k-WTA plumbing, reshapes...). They are tuned by MetaSchedule with
  the XGBoost cost model into a MetaSchedule JSON database in ``RECORDS_DIR``, which
  ``compile(tuning_records=RECORDS_DIR)`` applies with ``MetaScheduleApplyDatabase``. The default
  (dlight) schedule is measured and committed as a record too, so the database's best is never
  worse than what compile would do without it.

Re-running ``tune`` on the same model finds the records and measures nothing again. With more
trials than before, a task continues where it stopped.

At compile time, :func:`use_records` makes a records directory active and
:func:`tuned_choice` answers, per layer, which candidate won and builds it with its best knobs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tvm

from ..passes.layers import CONV2D, LINEAR, LayerSpec
from ..target import num_cores
from .kernel import KernelCall

log = logging.getLogger("tvm_sparse")

KERNEL_RECORDS = "kernel_records.json"
MS_TASKS = "ms_tasks.json"
_VERSION = 1
_XGB_WARMUP = 4  # trials measured (default first, then random) before the model guides the rest


# =============================================================================== data


@dataclasses.dataclass
class TaskResult:
    """One tuned task: what it is, its default (hand / dlight) time and its best time."""

    name: str
    kind: str  # "kernel" or "metaschedule"
    default_s: float | None
    best_s: float | None
    trials: int
    reused: bool
    knobs: dict | None = None
    layer: str = ""
    candidate: str = ""
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if not self.default_s or not self.best_s:
            return None
        return self.default_s / self.best_s


@dataclasses.dataclass
class TuneSummary:
    """What ``tune`` did: one row per task, where the records are, how long it took."""

    records_dir: str
    target: str
    tasks: list[TaskResult]
    wall_s: float

    @property
    def reused(self) -> int:
        return sum(t.reused for t in self.tasks)

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks if not t.reused)

    def table(self) -> str:
        """A fixed-width table: task, default ms, tuned ms, speedup, trials, knobs."""
        head = f"{'task':44} {'kind':6} {'default ms':>10} {'tuned ms':>9} {'x':>5} {'trials':>6}"
        lines = [head, "-" * len(head)]
        for t in self.tasks:
            d = f"{t.default_s * 1e3:10.4f}" if t.default_s else f"{'-':>10}"
            b = f"{t.best_s * 1e3:9.4f}" if t.best_s else f"{'-':>9}"
            x = f"{t.speedup:5.2f}" if t.speedup else f"{'-':>5}"
            kind = "knobs" if t.kind == "kernel" else "ms"
            extra = json.dumps(t.knobs) if t.knobs else t.note
            lines.append(f"{t.name[:44]:44} {kind:6} {d} {b} {x} {t.trials:6d}  {extra}")
        lines.append(
            f"{len(self.tasks)} tasks, {self.reused} reused, {self.trials} new trials, "
            f"{self.wall_s:.1f} s; records in {self.records_dir}"
        )
        return "\n".join(lines)


# =============================================================================== records


def _atomic_write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    if data.get("version") != _VERSION:
        log.warning("%s: records version %s ignored", path, data.get("version"))
        return {}
    return data.get("records", {})


class KernelRecords:
    """The knob records of one directory: ``key -> {candidate, layer, trials, best}``."""

    def __init__(self, records_dir: str | os.PathLike):
        self.path = os.path.join(os.fspath(records_dir), KERNEL_RECORDS)
        self.records: dict[str, dict] = _read_json(self.path)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        self.records[key] = record
        _atomic_write_json(self.path, {"version": _VERSION, "records": self.records})

    def best_knobs(self, key: str) -> dict | None:
        rec = self.records.get(key)
        return None if rec is None or rec.get("best") is None else dict(rec["best"]["knobs"])

    def best_seconds(self, key: str) -> float | None:
        rec = self.records.get(key)
        return None if rec is None or rec.get("best") is None else float(rec["best"]["seconds"])


def open_database(records_dir: str | os.PathLike):
    """The MetaSchedule JSON database of a records directory (created when missing)."""
    from tvm.s_tir import meta_schedule as ms

    path = os.fspath(records_dir)
    os.makedirs(path, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=path, allow_missing=True)


@dataclasses.dataclass
class Records:
    """Everything ``tune`` wrote to one directory."""

    records_dir: str
    kernels: KernelRecords
    database: Any  # ms.database.JSONDatabase


def load_records(records_dir: str | os.PathLike) -> Records:
    """Open a records directory (as written by ``tune``) for lookups."""
    path = os.fspath(records_dir)
    if not os.path.isdir(path):
        from ..errors import TvmSparseError

        raise TvmSparseError(f"{path}: tuning records directory not found")
    return Records(path, KernelRecords(path), open_database(path))


_ACTIVE: contextvars.ContextVar[KernelRecords | None] = contextvars.ContextVar(
    "tvm_sparse_tuning_records", default=None
)


@contextlib.contextmanager
def use_records(records_dir: str | os.PathLike | None) -> Iterator[KernelRecords | None]:
    """Make the kernel records of ``records_dir`` active for :func:`tuned_choice` (None: none)."""
    records = KernelRecords(records_dir) if records_dir is not None else None
    token = _ACTIVE.set(records)
    try:
        yield records
    finally:
        _ACTIVE.reset(token)


# =============================================================================== keys


def kernel_key(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> str:
    """Hash of everything a kernel's speed depends on: candidate, shapes, epilogue, weights,
    target. Two layers with identical weights share a record (the knobs transfer exactly)."""
    meta = {
        "candidate": candidate,
        "kind": layer.kind,
        "x_shape": [int(d) for d in layer.x_shape],
        "out_shape": [int(d) for d in layer.out_shape],
        "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.conv_attrs.items()},
        "activation": layer.activation,
        "target": str(target),
    }
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(np.ascontiguousarray(layer.weight, dtype=np.float32).tobytes())
    if layer.bias is not None:
        h.update(np.ascontiguousarray(layer.bias, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def best_knobs(candidate: str, key: str, records_dir: str | os.PathLike | None = None):
    """Best knobs recorded for ``key`` (see :func:`kernel_key`), from ``records_dir`` or the
    records made active by :func:`use_records`; None when there is no record."""
    records = KernelRecords(records_dir) if records_dir is not None else _ACTIVE.get()
    if records is None:
        return None
    rec = records.get(key)
    if rec is None or rec.get("candidate") != candidate:
        return None
    return records.best_knobs(key)


# =============================================================================== knob spaces


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _product(**axes: list) -> list[dict]:
    out: list[dict] = [{}]
    for name, values in axes.items():
        out = [{**o, name: v} for o in out for v in values]
    return out


def _dense_linear_space(layer: LayerSpec, cores: int) -> list[dict]:
    m, n = layer.rows, layer.weight.shape[0]
    mrs = [4, 5, 6] if m >= 4 else [m]
    col_cap = max(16, _round_up(n, 16))
    nbs = [nb for nb in (16, 32, 64, 128) if nb <= col_cap and (m < 4 or nb <= 32)]
    par = [True, False] if cores > 1 else [False]
    return [{"tiling": t} for t in _product(mr=mrs, nb=nbs, k_unroll=[1, 4], parallel=par)]


def _panel_space(m: int, cores: int, block_cols: int) -> list[dict]:
    """CSR / BSR: the row / block kernel (``min_batch = m + 1``; ``row_batch`` rows per decoded
    chunk) or the transposed batch-panel kernel (``min_batch = m``; batch tile, panel width)."""
    par = [True, False] if cores > 1 else [False]
    small = _product(min_batch=[m + 1], row_batch=[1, 2, 4] if m > 1 else [1], parallel=par)
    if m < 2:
        return small
    tiles = [t for t in (8, 16, 32, 64) if t <= _round_up(m, 8)]
    cols = [None] + [c for c in (64, 128, 256, 512, 1024, 2048) if c >= block_cols]
    panel = _product(min_batch=[m], m_tile=tiles, panel_cols=cols, row_block=[None, 64, 256])
    return small + [{**p, "parallel": q} for p in panel for q in par]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _sparse_conv_space(layer: LayerSpec, cores: int) -> list[dict]:
    oh, ow = layer.out_shape[2], layer.out_shape[3]
    tiles = [
        (th, tw)
        for th in _divisors(oh)
        for tw in _divisors(ow)
        if 8 <= th * tw <= 128 or (oh * ow < 8 and (th, tw) == (oh, ow))
    ]
    # prefer whole rows (contiguous vectors), then bigger tiles: a bounded, sensible subset
    tiles.sort(key=lambda t: (t[1] != ow, -t[0] * t[1]))
    par = [True, False] if cores > 1 else [False]
    return _product(tile=[list(t) for t in tiles[:12]], parallel=par)


def _dense_conv_space(layer: LayerSpec, cores: int) -> list[dict]:
    ow = layer.out_shape[3]
    mrs = [4, 5, 6] if ow >= 4 else [ow]
    par = [True, False] if cores > 1 else [False]
    return [{"tiling": t} for t in _product(mr=mrs, nb=[16, 32], parallel=par)]


def _sparse_sparse_space(layer: LayerSpec, cores: int) -> list[dict]:
    groups = [None, 1, 2, 4, 8, 16]
    par = [True, False] if cores > 1 and layer.rows > 1 else [None]
    space = _product(max_groups=groups, parallel=par)
    if layer.kind == CONV2D:
        space = [{**s, "vector": v} for s in space for v in (None, True, False)]
    return space


def knob_space(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
    """All knob settings of one candidate kernel; ``{}`` (the builder's defaults) comes first.

    Knobs the builder does not take are dropped (and the duplicates this makes), so a builder
    that loses a knob narrows the space instead of breaking the tuner.
    """
    cores = num_cores(target)
    if layer.kind == LINEAR and candidate == "dense":
        space = _dense_linear_space(layer, cores)
    elif layer.kind == LINEAR and candidate == "csr":
        space = _panel_space(layer.rows, cores, 1)
    elif layer.kind == LINEAR and candidate.startswith("bsr"):
        space = _panel_space(layer.rows, cores, int(candidate[3:].split("x")[1]))
    elif layer.kind == CONV2D and candidate == "dense":
        space = _dense_conv_space(layer, cores) if layer.conv_attrs.get("groups", 1) == 1 else []
    elif layer.kind == CONV2D and candidate == "sparse_conv":
        space = _sparse_conv_space(layer, cores)
    elif candidate == "sparse_sparse":
        space = _sparse_sparse_space(layer, cores)
    else:
        space = []
    builder = _builder(candidate, layer)
    params = set(inspect.signature(builder).parameters) if builder is not None else set()
    out, seen = [{}], {"{}"}
    for setting in space:
        setting = {k: v for k, v in setting.items() if k in params}
        key = json.dumps(setting, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(setting)
    return out


# =============================================================================== builders


def _builder(candidate: str, layer: LayerSpec) -> Callable | None:
    from . import dense_x86, sparse_x86

    if candidate == "dense":
        return dense_x86.dense_linear if layer.kind == LINEAR else dense_x86.dense_conv2d
    if candidate == "csr":
        return sparse_x86.csr_linear
    if candidate.startswith("bsr"):
        return sparse_x86.bsr_linear
    if candidate == "sparse_conv":
        return sparse_x86.sparse_conv2d
    if candidate == "sparse_sparse":
        from . import sparse_sparse_x86

        name = "sparse_sparse_linear" if layer.kind == LINEAR else "sparse_sparse_conv2d"
        return getattr(sparse_sparse_x86, name, None)
    return None


def _builder_kwargs(knobs: dict) -> dict:
    """JSON knobs -> builder keyword arguments (GemmTiling objects, tuples)."""
    from .dense_x86 import GemmTiling

    out = {}
    for name, value in knobs.items():
        if name == "tiling":
            out[name] = GemmTiling(**value)
        elif name == "tile":
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def build_candidate(
    candidate: str, layer: LayerSpec, target: tvm.target.Target, knobs: dict | None = None
) -> KernelCall:
    """Build one candidate kernel of ``layer`` with ``knobs`` (None / {}: the hand schedule)."""
    builder = _builder(candidate, layer)
    if builder is None:
        raise ValueError(f"no builder for candidate {candidate!r} of a {layer.kind} layer")
    kwargs = _builder_kwargs(knobs or {})
    if layer.kind == LINEAR:
        args: tuple = (layer.rows, layer.weight)
        if candidate.startswith("bsr"):
            r, c = (int(v) for v in candidate[3:].split("x"))
            args = (*args, (r, c))
        return builder(*args, layer.bias, layer.activation, target, **kwargs)
    attrs = layer.conv_attrs
    return builder(
        layer.x_shape,
        layer.weight,
        layer.bias,
        strides=attrs["strides"],
        padding=attrs["padding"],
        dilation=attrs["dilation"],
        groups=attrs["groups"],
        activation=layer.activation,
        target=target,
        **kwargs,
    )


def layer_input(layer: LayerSpec, seed: int = 0) -> np.ndarray:
    """The activation a layer is measured on: normal values, zeroed to the layer's expected
    input density (k-WTA / ReLU), so sparse-sparse kernels see realistic sparsity."""
    rng = np.random.default_rng(seed)
    shape = (layer.rows, layer.x_shape[-1]) if layer.kind == LINEAR else tuple(layer.x_shape)
    x = rng.standard_normal(shape).astype("float32")
    if layer.input_density is not None:
        x *= rng.random(shape) < layer.input_density
    return x


# =============================================================================== measuring


class LocalMeasurer:
    """Builds and times kernels in this process, on this machine's CPU."""

    where = "local"

    def __init__(self, target: tvm.target.Target, repeat: int = 3, min_repeat_ms: int = 30):
        self.target = target
        self.repeat = repeat
        self.min_repeat_ms = min_repeat_ms

    def _load(self, executable) -> tuple[Any, Any]:
        return executable.jit(), tvm.cpu()

    def run(self, mod: tvm.IRModule, args: list[np.ndarray], out_index: int = -1):
        """Build ``mod`` (its ``main``), time it on ``args`` and return (seconds, output)."""
        executable = tvm.compile(mod, target=self.target)
        lib, dev = self._load(executable)
        tensors = [tvm.runtime.tensor(a, dev) for a in args]
        lib["main"](*tensors)
        out = tensors[out_index].numpy()
        timer = lib.time_evaluator(
            "main", dev, number=1, repeat=self.repeat, min_repeat_ms=self.min_repeat_ms
        )
        return float(np.median(timer(*tensors).results)), out

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class RPCMeasurer(LocalMeasurer):
    """Builds here, runs on a device that a TVM RPC tracker hands out for ``key``."""

    where = "rpc"

    def __init__(self, target: tvm.target.Target, tracker: str, key: str, **kwargs):
        super().__init__(target, **kwargs)

        self.host, self.port = _split_tracker(tracker)
        self.key = key
        self._session = None
        self.tmp = tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_")
        self.count = 0

    @property
    def session(self):
        """The device session, requested from the tracker on first use."""
        if self._session is None:
            from tvm import rpc

            tracker = rpc.connect_tracker(self.host, self.port)
            self._session = tracker.request(self.key, priority=1, session_timeout=0)
        return self._session

    def release(self) -> None:
        """Give the device back to the tracker (MetaSchedule's runner requests its own)."""
        import gc

        self._session = None
        gc.collect()  # the session closes when its last reference (modules, tensors) goes

    def _load(self, executable) -> tuple[Any, Any]:
        self.count += 1
        name = f"k{self.count}.so"
        path = os.path.join(self.tmp.name, name)
        executable.export_library(path)
        self.session.upload(path)
        return self.session.load_module(name), self.session.cpu()

    def close(self) -> None:
        self.release()
        self.tmp.cleanup()


def _split_tracker(tracker: str) -> tuple[str, int]:
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        from ..errors import TvmSparseError

        raise TvmSparseError(f"--rpc-tracker must be HOST:PORT, got {tracker!r}")
    return host, int(port)


def _kernel_module(call: KernelCall) -> tvm.IRModule:
    return tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")})


def measure_kernel(measurer: LocalMeasurer, call: KernelCall, x: np.ndarray):
    """(seconds, output) of one kernel on ``x`` with its constants."""
    out = np.zeros(call.out_shape, dtype=call.out_dtype)
    return measurer.run(_kernel_module(call), [x, *call.consts, out])


# =============================================================================== knob search


def _features(knobs: dict) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in knobs.items():
        if isinstance(value, dict):
            for sub, v in _features(value).items():
                flat[f"{name}.{sub}"] = v
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                flat[f"{name}.{i}"] = float(v)
        else:
            flat[name] = -1.0 if value is None else float(value)
    return flat


def _next_index(space: list[dict], tried: dict[int, float | None], rng: random.Random) -> int:
    """The next setting to measure: defaults first, a few random ones, then XGBoost's pick."""
    untried = [i for i in range(len(space)) if i not in tried]
    if 0 in untried:
        return 0
    measured = [(i, s) for i, s in tried.items() if s is not None and i != 0]
    if len(measured) + 1 < _XGB_WARMUP or rng.random() < 0.15:
        return rng.choice(untried)
    try:
        import xgboost as xgb
    except ImportError:  # no cost model: random search over the same space
        return rng.choice(untried)
    names = sorted({k for s in space for k in _features(s)})

    def row(i: int) -> list[float]:
        f = _features(space[i])
        return [f.get(n, -2.0) for n in names]

    xs = np.array([row(i) for i, _ in measured])
    ys = np.log(np.array([s for _, s in measured]))
    params = {"max_depth": 3, "eta": 0.3, "nthread": 1, "verbosity": 0}
    booster = xgb.train(params, xgb.DMatrix(xs, label=ys), num_boost_round=40)
    pred = booster.predict(xgb.DMatrix(np.array([row(i) for i in untried])))
    return untried[int(np.argmin(pred))]


def _same(actual: np.ndarray, expected: np.ndarray) -> bool:
    scale = max(float(np.max(np.abs(expected))) if expected.size else 0.0, 1e-6)
    return bool(np.allclose(actual, expected, rtol=1e-3, atol=1e-3 * scale, equal_nan=True))


class KernelSearch:
    """The knob search of one candidate kernel of one layer, one trial per :meth:`step`.

    Stepping all searches round-robin (what ``tune`` does) measures every hand schedule
    first and then improves every layer a little at a time, so a tune stopped early is still
    useful everywhere. Every trial is written to the records at once.
    """

    def __init__(self, candidate, layer, target, records, measurer, trials, progress, label):
        self.candidate, self.layer, self.target = candidate, layer, target
        self.records, self.measurer, self.progress, self.label = records, measurer, progress, label
        self.key = kernel_key(candidate, layer, target)
        self.space = knob_space(candidate, layer, target)
        self.rec = records.get(self.key) or {
            "candidate": candidate,
            "layer": layer.name,
            "trials": [],
        }
        done = {json.dumps(t["knobs"], sort_keys=True): t for t in self.rec["trials"]}
        self.budget = min(trials, len(self.space))
        self.tried = {
            i: done[k].get("seconds")
            for i, s in enumerate(self.space)
            if (k := json.dumps(s, sort_keys=True)) in done
        }
        self.reused = len(self.tried) >= self.budget
        self.new_trials = 0
        self._x: np.ndarray | None = None
        self._reference: np.ndarray | None = None
        self._rng = random.Random(0)

    @property
    def done(self) -> bool:
        return len(self.tried) >= self.budget

    def _measure(self, knobs: dict):
        call = build_candidate(self.candidate, self.layer, self.target, knobs)
        return measure_kernel(self.measurer, call, self._x)

    def step(self) -> None:
        """Measure the next setting (the hand schedule first, then XGBoost's picks)."""
        if self._x is None:
            self._x = layer_input(self.layer)
        i = _next_index(self.space, self.tried, self._rng)
        knobs = self.space[i]
        entry: dict = {"knobs": knobs}
        try:
            seconds, out = self._measure(knobs)
            if self._reference is None and i != 0:  # every setting is checked against the
                _, self._reference = self._measure({})  # hand schedule's output
            if i == 0:
                self._reference = out
            elif not _same(out, self._reference):
                raise ValueError("output differs from the default schedule's")
            entry["seconds"] = seconds
        except Exception as err:  # noqa: BLE001 - a failing setting is recorded and skipped
            entry["error"] = str(err).strip().splitlines()[-1][:200] if str(err) else repr(err)
            seconds = None
        self.tried[i] = seconds
        self.new_trials += 1
        best = self.rec.get("best")
        if seconds is not None and (best is None or seconds < best["seconds"]):
            best = {"knobs": knobs, "seconds": seconds}
        self.rec["trials"].append(entry)
        self.rec.update(best=best, space=len(self.space))
        self.records.put(self.key, self.rec)
        shown = f"{seconds * 1e3:.4f} ms" if seconds is not None else "failed"
        best_ms = f"{best['seconds'] * 1e3:.4f} ms" if best else "-"
        self.progress(
            f"  {self.label}: trial {len(self.tried)}/{self.budget} {shown} "
            f"(best {best_ms}) {knobs or 'default'}"
        )

    def result(self) -> TaskResult:
        best = self.rec.get("best")
        default = next((t.get("seconds") for t in self.rec["trials"] if t["knobs"] == {}), None)
        return TaskResult(
            name=f"{self.layer.name}:{self.candidate}",
            kind="kernel",
            default_s=default,
            best_s=best["seconds"] if best else None,
            trials=len(self.tried) if self.reused else self.new_trials,
            reused=self.reused,
            knobs=best["knobs"] if best else None,
            layer=self.layer.name,
            candidate=self.candidate,
        )


# =============================================================================== task extraction


@dataclasses.dataclass
class KernelTask:
    layer: LayerSpec
    candidate: str


def _compile_phases(imported, target: tvm.target.Target):
    """The module exactly as ``compile`` has it when the tuning database is applied.

    The same ``pre_schedule_passes`` as ``passes.pipeline.build_pipeline``, so the MetaSchedule
    workloads recorded here match the ones compile looks up.
    """
    from ..passes import pipeline as tvm_sparse_pipeline

    sparsify = tvm_sparse_pipeline.Sparsify(
        tvm_sparse_pipeline.SparsifyOptions(layer_names=imported.weighted_nodes)
    )
    with target:
        phases = tvm_sparse_pipeline.pre_schedule_passes(target, sparsify)
        return tvm.transform.Sequential(phases, name="tvm_sparse.tune")(imported.mod), sparsify


def extract_kernel_tasks(imported, target: tvm.target.Target, candidates: str = "all"):
    """One task per (layer, candidate kernel); ``candidates="chosen"``: only the kernel that
    compile picks by estimate for each layer."""
    from ..passes.analyze_sparsity import analyze_function
    from ..passes.canonicalize import canonicalize
    from ..passes.choose_kernels import choose_layer
    from .registry import candidates_for

    mod = canonicalize(imported.mod)
    tasks = []
    for layer, _act in analyze_function(mod["main"], imported.weighted_nodes):
        names = [c.name for c in candidates_for(layer, target, sparse=True)]
        if candidates == "chosen":
            names = [choose_layer(layer, target).chosen]
        tasks += [KernelTask(layer, n) for n in names if _builder(n, layer) is not None]
    return tasks


def _has_blocks(func: tvm.tirx.PrimFunc) -> bool:
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        return bool(sch.get_child_blocks(sch.get_sblock("root")))
    except Exception:  # noqa: BLE001 - no root block: an ir_builder loop nest (TopK)
        return False


def extract_ms_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[list, list[str]]:
    """MetaSchedule tasks for the dense leftovers, and notes on the functions left out.

    Left out: our scheduled kernels, functions without blocks (TVM's TopK is an ir_builder
    loop nest) and functions with integer inputs (MetaSchedule's runner fills them with random
    values, which are out-of-range indices for ``take``).
    """
    from tvm.s_tir import meta_schedule as ms

    keep, skipped = [], []
    for task in ms.relax_integration.extract_tasks(mod, target):
        func = task.dispatched[0]["main"]
        attrs = func.attrs or {}
        if attrs.get("tirx.is_scheduled", False):
            continue
        if not _has_blocks(func):
            skipped.append(f"{task.task_name} (no blocks)")
            continue
        if any(not str(p.dtype).startswith("float") for p in func.params):
            skipped.append(f"{task.task_name} (integer inputs)")
            continue
        keep.append(task)
    keep.sort(key=lambda t: t.task_name)
    return keep, skipped


# =============================================================================== MetaSchedule


def _random_args(func: tvm.tirx.PrimFunc, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    args = []
    for p in func.params:  # TVM 0.27: PrimFunc params are the buffers themselves
        shape = [int(d) for d in p.shape]
        dtype = str(p.dtype)
        if dtype.startswith("float"):
            args.append(rng.standard_normal(shape).astype(dtype))
        else:
            args.append(np.zeros(shape, dtype=dtype))
    return args


def default_schedule(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    """The schedule compile gives a leftover without records (dlight + ours), as a traced
    Schedule; None when no rule applies (the function runs unscheduled)."""
    from .leftover_x86 import cpu_leftover_rules, gpu_leftover_rules

    rules = cpu_leftover_rules() if str(target.kind.name) == "llvm" else gpu_leftover_rules()
    with target:
        for rule in rules:
            sch = rule.apply(func, target, False)
            if sch is not None:
                return sch
    return None


def _commit_default(db, task, target, measurer) -> float | None:
    """Measure the default schedule of ``task`` and commit it as a tuning record."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    func = mod["main"]
    sch = default_schedule(func, target)
    if sch is None:  # unscheduled: a trace that only looks the blocks up (an empty trace is
        sch = s_tir.Schedule(mod)  # ignored by the database's top-k)
        sch.get_child_blocks(sch.get_sblock("root"))
    scheduled, trace = sch.mod, sch.trace
    try:
        seconds, _ = measurer.run(scheduled, _random_args(func))
    except Exception as err:  # noqa: BLE001 - no default record; MetaSchedule's still count
        log.warning("%s: default schedule failed to run: %s", task.task_name, err)
        return None
    record = ms.database.TuningRecord(
        trace,
        db.commit_workload(mod),
        run_secs=[seconds],
        target=target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(func),
    )
    db.commit_tuning_record(record)
    return seconds


def _ms_runner(rpc_tracker: str | None, rpc_key: str | None):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20)
    if rpc_tracker is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=120)
    host, port = _split_tracker(rpc_tracker)
    config = ms.runner.RPCConfig(
        tracker_host=host, tracker_port=port, tracker_key=rpc_key, session_timeout_sec=120
    )
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


def in_process_builder():
    """A MetaSchedule builder that compiles in this process, one candidate after another.

    MetaSchedule's LocalBuilder starts a fresh process pool for every batch, and each worker
    imports TVM (seconds, more on a loaded machine): for the small leftover functions that
    start-up costs more than the builds, and loaded machines hit its 30 s timeout.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    artifact = default_export(default_build(item.mod, item.target, None))
                    results.append(ms.builder.BuilderResult(artifact, None))
                except Exception as err:  # noqa: BLE001 - a failed candidate, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"build failed: {err}"))
            return results

    return InProcessBuilder()


def tune_ms_task(
    task,
    target: tvm.target.Target,
    records_dir: str,
    db,
    state: dict,
    measurer: LocalMeasurer,
    trials: int,
    tools: tuple,
    progress: Callable[[str], None],
) -> TaskResult:
    """Tune one leftover function with MetaSchedule (XGBoost cost model) into ``db``."""
    from tvm.s_tir import meta_schedule as ms

    mod = task.dispatched[0]
    key = hashlib.sha256(f"{mod.script()}\n{target}".encode()).hexdigest()[:32]
    entry = state.get(key, {"name": task.task_name, "trials": 0})
    if entry["trials"] >= trials:
        return TaskResult(task.task_name, "metaschedule", entry.get("default_s"),
                          entry.get("best_s"), entry["trials"], True)  # fmt: skip
    if entry.get("default_s") is None:
        entry["default_s"] = _commit_default(db, task, target, measurer)
    new = trials - entry["trials"]
    progress(f"  {task.task_name}: MetaSchedule, {new} trials (default {_ms(entry['default_s'])})")
    # One context per task, built here: MetaSchedule's own helper configures per-task log
    # files through the logging module and fails once something else reconfigured logging.
    context = ms.TuneContext(
        mod=mod,
        target=task.target,
        space_generator="post-order-apply",
        search_strategy="evolutionary",
        task_name=task.task_name,
        rand_state=len(state) + 1,
        num_threads="physical",
    ).clone()
    measurer.release()  # an RPC device serves one session at a time
    with _quiet_ms():
        ms.tune_tasks(
            tasks=[context],
            task_weights=[1.0],
            work_dir=records_dir,
            max_trials_global=new,
            num_trials_per_iter=min(new, 16),
            builder=tools[0],
            runner=tools[1],
            database=db,
            cost_model="xgb",
        )
    top = db.get_top_k(db.commit_workload(mod), 1)
    entry["best_s"] = float(np.mean([float(s) for s in top[0].run_secs])) if top else None
    entry["trials"] = trials
    state[key] = entry
    _atomic_write_json(os.path.join(records_dir, MS_TASKS), {"version": _VERSION, "records": state})
    progress(f"  {task.task_name}: best {_ms(entry['best_s'])}")
    return TaskResult(task.task_name, "metaschedule", entry["default_s"], entry["best_s"],
                      new, False)  # fmt: skip


@contextlib.contextmanager
def _quiet_ms():
    """MetaSchedule logs every iteration at INFO; keep its table out of our progress lines."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    level = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4f} ms" if seconds else "-"


# =============================================================================== tune


def tune(
    model: Any,
    target: Any = "llvm",
    *,
    trials: int = 64,
    records_dir: str | os.PathLike,
    input_shapes: str | dict | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    progress: Callable[[str], None] | None = print,
    candidates: str = "all",
    metaschedule: bool = True,
) -> TuneSummary:
    """Tune every kernel of ``model`` and write the records to ``records_dir``.

    ``trials`` is the most settings measured per task. ``candidates``: "all" tunes every
    candidate kernel of every layer (the tuned times then decide dense vs sparse per layer at
    compile), "chosen" only the kernel compile picks by estimate. ``metaschedule=False`` skips
    the leftovers. With ``rpc_tracker="HOST:PORT"`` and ``rpc_key`` every measurement runs on
    the device the tracker hands out; building stays here.
    """
    from ..frontend import import_model
    from ..target import resolve_target

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if candidates not in ("all", "chosen"):
        raise ValueError(f"candidates must be 'all' or 'chosen', got {candidates!r}")
    if (rpc_tracker is None) != (rpc_key is None):
        from ..errors import TvmSparseError

        raise TvmSparseError("RPC tuning needs both --rpc-tracker and --rpc-key")
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    tgt = resolve_target(target)
    records_dir = os.fspath(records_dir)
    os.makedirs(records_dir, exist_ok=True)
    imported = import_model(model, input_shapes)
    kernel_tasks = extract_kernel_tasks(imported, tgt, candidates)
    ms_tasks, skipped = [], []
    if metaschedule:
        mod, _ = _compile_phases(imported, tgt)
        ms_tasks, skipped = extract_ms_tasks(mod, tgt)
    db = open_database(records_dir)  # compile needs the database files even when empty
    say(
        f"tuning {imported.source}: {len(kernel_tasks)} kernel tasks, {len(ms_tasks)} "
        f"MetaSchedule tasks, up to {trials} trials each, on {rpc_tracker or 'this machine'}"
    )
    if skipped:
        say(f"  not tuned: {', '.join(skipped)}")
    measurer = (
        RPCMeasurer(tgt, rpc_tracker, rpc_key) if rpc_tracker else LocalMeasurer(tgt)
    )  # fmt: skip
    results: list[TaskResult] = []
    try:
        records = KernelRecords(records_dir)
        total = len(kernel_tasks) + len(ms_tasks)
        searches = [
            KernelSearch(t.candidate, t.layer, tgt, records, measurer, trials, say,
                         f"[{i}/{total}] {t.layer.name} {t.candidate}")
            for i, t in enumerate(kernel_tasks, 1)
        ]  # fmt: skip
        while any(not s.done for s in searches):  # round-robin: one trial per task per round
            for search in searches:
                if not search.done:
                    search.step()
        for search in searches:
            results.append(search.result())
            say(_result_line(search.label, results[-1]))
        state = _read_json(os.path.join(records_dir, MS_TASKS))
        tools = (in_process_builder(), _ms_runner(rpc_tracker, rpc_key)) if ms_tasks else ()
        for j, task in enumerate(ms_tasks, len(kernel_tasks) + 1):
            label = f"[{j}/{total}] {task.task_name}"
            res = tune_ms_task(task, tgt, records_dir, db, state, measurer, trials, tools, say)
            results.append(res)
            say(_result_line(label, res))
    finally:
        measurer.close()
    summary = TuneSummary(records_dir, str(tgt), results, time.perf_counter() - start)
    say(f"done: {len(results)} tasks, reused {summary.reused} tasks, {summary.trials} new trials "
        f"in {summary.wall_s:.1f} s")  # fmt: skip
    return summary


def _result_line(label: str, res: TaskResult) -> str:
    if res.reused:
        return f"{label}: reused ({res.trials} trials, best {_ms(res.best_s)})"
    x = f", {res.speedup:.2f}x" if res.speedup else ""
    return f"{label}: best {_ms(res.best_s)} (default {_ms(res.default_s)}{x})"


# =============================================================================== compile side


def tuned_choice(layer: LayerSpec, target: tvm.target.Target, candidates: list) -> tuple | None:
    """The fastest tuned candidate of ``layer`` under the active records, built with its knobs.

    Returns ``(name, kernel, reason, measured_ms)`` or None when records are not active or do
    not cover every candidate (a partial record set cannot prove a kernel is the fastest; the
    kernel compile would choose anyway still gets its tuned knobs from :func:`tuned_kernel`).
    """
    records = _ACTIVE.get()
    if records is None:
        return None
    times = {}
    for cand in candidates:
        seconds = records.best_seconds(kernel_key(cand.name, layer, target))
        if seconds is None:
            return None
        times[cand.name] = seconds
    name = min(times, key=times.get)
    kernel = tuned_kernel(name, layer, target)
    if kernel is None:
        return None
    measured_ms = {n: s * 1e3 for n, s in times.items()}
    reason = f"tuned fastest ({measured_ms[name]:.3f} ms"
    if name != "dense" and "dense" in times:
        reason += f", dense {measured_ms['dense']:.3f} ms"
    return name, kernel, reason + ")", measured_ms


def tuned_kernel(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> KernelCall | None:
    """``candidate`` built with its best recorded knobs; None without an active record."""
    records = _ACTIVE.get()
    if records is None or _builder(candidate, layer) is None:
        return None
    knobs = records.best_knobs(kernel_key(candidate, layer, target))
    if knobs is None:
        return None
    return build_candidate(candidate, layer, target, knobs)


def choose_layer_tuned(layer: LayerSpec, target: tvm.target.Target, **kwargs):
    """``choose_kernels.choose_layer`` with tuning records first (a drop-in for the pipeline)."""
    from ..passes.choose_kernels import Choice, choose_layer
    from .registry import candidates_for

    if _ACTIVE.get() is not None and kwargs.get("measure") is not True:
        cands = candidates_for(layer, target, sparse=kwargs.get("sparse", True))
        tuned = tuned_choice(layer, target, cands) if cands else None
        if tuned is not None:
            name, kernel, reason, measured = tuned
            estimated = {c.name: c.estimate_s * 1e3 for c in cands}
            return Choice(layer, name, kernel, reason, estimated, measured)
    choice = choose_layer(layer, target, **kwargs)
    kernel = tuned_kernel(choice.chosen, layer, target) if choice.kernel is not None else None
    if kernel is not None:
        choice.kernel = kernel
        choice.reason += " (tuned knobs)"
    return choice


__all__ = [
    "KernelSearch",
    "KernelRecords",
    "Records",
    "TaskResult",
    "TuneSummary",
    "best_knobs",
    "build_candidate",
    "choose_layer_tuned",
    "extract_kernel_tasks",
    "extract_ms_tasks",
    "kernel_key",
    "knob_space",
    "load_records",
    "open_database",
    "tune",
    "tuned_choice",
    "tuned_kernel",
    "use_records",
]
