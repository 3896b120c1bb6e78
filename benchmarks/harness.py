"""One model file, every runtime, one row: what bench_models.py and bench_bert.py share.

onnxruntime gives the reference output and its time; tvm-sparse (sparse plan) and TVM dense (the
same compiler with ``sparse=False``) are compiled, checked against that reference (rtol 1e-3)
and timed by the same ``median_time`` loop; DeepSparse runs in its own venv when installed. A
runtime whose output does not match gets ``MISMATCH`` instead of a time. Ratios are taken
within the row, i.e. within one run. Import after ``TVM_NUM_THREADS`` is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
import tvm
from peers import DeepSparseRunner, OrtRunner, median_time, print_table

import tvm_sparse

_MEASURE = {"auto": "auto", "all": True, "none": False}
# the columns compare_runtimes fills, in table order
RUNTIME_COLUMNS = [
    "threads",
    "tvm_sparse_ms",
    "tvm_dense_ms",
    "ort_ms",
    "deepsparse_ms",
    "x_ort",
    "x_deepsparse",
    "x_tvm_dense",
]


def close(out: np.ndarray, ref: np.ndarray) -> bool:
    """rtol 1e-3 with an absolute floor scaled to the output (outputs can be near zero)."""
    scale = max(float(np.abs(ref).max()), 1e-6)
    return bool(np.allclose(out, ref, rtol=1e-3, atol=1e-3 * scale))


def compare_runtimes(
    path: str,
    inputs: Sequence[np.ndarray],
    threads: int,
    min_time: float,
    measure: str = "auto",
    deepsparse: bool = True,
) -> dict:
    """Time every runtime on ``path``; returns ``*_ms`` columns, ``x_<peer>`` ratios (peer time /
    tvm-sparse time), ``dense_x_ort``, ``compile_s`` and the sparse module as ``module``."""
    row: dict = {"threads": threads}
    ort = OrtRunner(path, threads=threads)
    ref = ort.run(inputs)[0]
    row["ort_ms"] = ort.time(inputs, min_time=min_time) * 1e3

    start = time.perf_counter()
    sparse = tvm_sparse.compile(path, "llvm", measure=_MEASURE[measure])
    row["compile_s"] = round(time.perf_counter() - start, 1)
    dense = tvm_sparse.compile(path, "llvm", sparse=False, measure=False)
    args = [tvm.runtime.tensor(a) for a in inputs]
    for label, module in (("tvm_sparse", sparse), ("tvm_dense", dense)):
        if not close(module.run(*inputs), ref):
            row[f"{label}_ms"] = "MISMATCH"
            continue
        row[f"{label}_ms"] = median_time(lambda m=module._main: m(*args), min_time) * 1e3
    row["module"] = sparse

    if deepsparse:
        ds = DeepSparseRunner(path, threads=threads)
        if ds.available:
            result = ds.run_and_time(inputs, min_time=min_time)
            if result is not None:
                outs, seconds = result
                row["deepsparse_ms"] = seconds * 1e3 if close(outs[0], ref) else "MISMATCH"
    ts = row.get("tvm_sparse_ms")
    if isinstance(ts, float):
        for peer in ("ort", "tvm_dense", "deepsparse"):
            value = row.get(f"{peer}_ms")
            if isinstance(value, float):
                row[f"x_{peer}"] = value / ts
    td = row.get("tvm_dense_ms")
    if isinstance(td, float):
        row["dense_x_ort"] = row["ort_ms"] / td
    return row


def report(rows: list[dict], columns: Sequence[str], json_path: str | None) -> None:
    """Print the rows as a table of ``columns``; also write them all as JSON when asked."""
    print_table(rows, columns)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=2)
