"""One model file, every runtime, one row: what bench_models.py and bench_bert.py share.

onnxruntime gives the reference output; tvm-sparse (sparse plan) and TVM dense (the same
compiler with ``sparse=False``) are compiled and checked against it (rtol 1e-3); DeepSparse is
served from its own venv when installed and checked the same way. A runtime whose output does
not match gets ``MISMATCH`` instead of a time. Then the runtimes that match take turns
(``tvm_sparse.timing.take_turns``): ``rounds`` rounds of ``round_time`` seconds each, so every ratio
compares two runtimes timed in the same seconds of a noisy machine. A time is the median of its
per-round medians; a ratio is the median of its per-round ratios, with their range. Import after
``TVM_NUM_THREADS`` is set.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Sequence

import numpy as np
import tvm
from peers import (
    DeepSparseRunner,
    OrtRunner,
    median_time,
    print_table,
    ratio_summary,
)

import tvm_sparse
from tvm_sparse.benchmark import MEASURE_MODES
from tvm_sparse.timing import take_turns

_PEERS = ("ort", "tvm_dense", "deepsparse")
# the columns compare_runtimes fills, in table order
RUNTIME_COLUMNS = [
    "threads",
    "tvm_sparse_ms",
    "tvm_dense_ms",
    "ort_ms",
    "deepsparse_ms",
    "x_ort",
    "x_deepsparse",
    "x_deepsparse_range",
    "x_tvm_dense",
]


def close(out: np.ndarray, ref: np.ndarray) -> bool:
    """rtol 1e-3 with an absolute floor scaled to the output (outputs can be near zero)."""
    scale = max(float(np.abs(ref).max()), 1e-6)
    return bool(np.allclose(out, ref, rtol=1e-3, atol=1e-3 * scale))


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """The largest difference, over the output's largest magnitude."""
    scale = max(float(np.abs(ref).max()), 1e-6)
    return float(np.abs(np.asarray(out, np.float64) - ref).max()) / scale


def onnxruntime_spread(path: str, inputs: Sequence[np.ndarray], ref: np.ndarray) -> float:
    """How far onnxruntime disagrees with itself on these inputs: its output without graph
    optimizations against ``ref`` (with all of them), as ``relative_error``. Pruned networks
    with random weights can be ill-conditioned (EfficientNet-B0 at 80%: logits ~4000, and the
    two onnxruntime outputs differ by 4.5e-3 of that), so a 1e-3 check fails any float
    reordering there; an error within this spread is one onnxruntime makes too."""
    return relative_error(OrtRunner(path, optimize=False).run(inputs)[0], ref)


def checked(label: str, out: np.ndarray, ref: np.ndarray, spread, row: dict) -> bool:
    """Whether ``out`` agrees with onnxruntime's ``ref``: ``close``, or (an ill-conditioned
    model) within onnxruntime's own spread (``spread()``, computed on first need), which the
    row then records; else the row's ``<label>_ms`` says MISMATCH and by how much."""
    if close(out, ref):
        return True
    err = relative_error(out, ref)
    own = spread()
    if err <= own:
        row[f"{label}_check"] = f"error {err:.1e} within onnxruntime's own {own:.1e}"
        return True
    row[f"{label}_ms"] = f"MISMATCH ({err:.1e}; onnxruntime's own {own:.1e})"
    return False


def _module_timer(module, args):
    """``timer(seconds)`` -> median seconds per call of a compiled module's main."""
    main = module._main  # looked up once (a lookup costs ~18 us)
    return lambda seconds: median_time(lambda: main(*args), seconds, min_repeats=3, warmup=1)


def compare_runtimes(
    path: str,
    inputs: Sequence[np.ndarray],
    threads: int,
    round_time: float,
    measure: str = "auto",
    deepsparse: bool = True,
    rounds: int = 24,
) -> dict:
    """Time every runtime on ``path`` in turns; returns ``*_ms`` columns, ``x_<peer>`` ratios
    (peer time / tvm-sparse time, median over rounds) with ``x_<peer>_range`` (min-max over
    rounds), ``dense_x_ort``, ``compile_s``, the per-round times as ``rounds_ms`` and the sparse
    module as ``module``."""
    row: dict = {"threads": threads}
    ort = OrtRunner(path, threads=threads)
    ref = ort.run(inputs)[0]
    timers = {"ort": ort.timer(inputs)}

    start = time.perf_counter()
    sparse = tvm_sparse.compile(path, "llvm", measure=MEASURE_MODES[measure])
    row["compile_s"] = round(time.perf_counter() - start, 1)
    dense = tvm_sparse.compile(path, "llvm", sparse=False, measure=False)
    args = [tvm.runtime.tensor(a) for a in inputs]
    spread = functools.cache(lambda: onnxruntime_spread(path, inputs, ref))
    for label, module in (("tvm_sparse", sparse), ("tvm_dense", dense)):
        if checked(label, module.run(*inputs), ref, spread, row):
            timers[label] = _module_timer(module, args)
    row["module"] = sparse

    ds = DeepSparseRunner(path, threads=threads) if deepsparse else None
    try:
        outs = ds.start(inputs) if ds is not None else None
        if outs is not None:
            if checked("deepsparse", outs[0], ref, spread, row):
                timers["deepsparse"] = ds.time_for
        samples = take_turns(
            {k: functools.partial(t, round_time) for k, t in timers.items()}, rounds
        )
    finally:
        if ds is not None:
            ds.close()

    row["rounds_ms"] = {label: [t * 1e3 for t in ts] for label, ts in samples.items()}
    for label, ts in samples.items():
        row[f"{label}_ms"] = statistics.median(ts) * 1e3
    if "tvm_sparse" in samples:
        for peer in _PEERS:
            if peer in samples:
                mid, lo, hi = ratio_summary(samples[peer], samples["tvm_sparse"])
                row[f"x_{peer}"] = mid
                row[f"x_{peer}_range"] = f"{lo:.2f}-{hi:.2f}"
    if "tvm_dense" in samples:
        row["dense_x_ort"] = statistics.median(
            o / d for o, d in zip(samples["ort"], samples["tvm_dense"], strict=True)
        )
    return row


def report(rows: list[dict], columns: Sequence[str], json_path: str | None) -> None:
    """Print the rows as a table of ``columns``; also write them all as JSON when asked."""
    print_table(rows, columns)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
