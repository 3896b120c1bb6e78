"""Building tuning trials in worker processes, for measuring on several RPC devices at once.

Why: a trial's build (the kernel's TVMScript parsed into TIR, then LLVM) took ~70% of a tune's
wall time (a 4-layer CSR MLP: 20 of 29 s in the parser), all of it Python holding the GIL.
Threads that each drive one RPC device therefore measured no faster than one device (0.93x with
two). Here each build runs in a process of its own and comes back as an exported library that
the device thread uploads and times.

The workers are fresh interpreters (``spawn``): forking a process that has imported TVM is
unsafe. A layer travels without its Relax handles (``x_var``, ``tail_var``), which no builder
reads and which do not pickle; the target travels as its JSON text (``str(target)``), as it
does to the candidate worker (``isolation``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import tempfile

import numpy as np
import tvm

from ...ir.layers import LayerSpec


@dataclasses.dataclass(frozen=True)
class BuiltTrial:
    """One trial's kernel, built and exported: what the measurer uploads and calls."""

    library: str  # path of the exported shared library (function ``main``)
    consts: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    out_dtype: str


def _build_and_export(candidate: str, layer: LayerSpec, target_text: str, knobs: dict,
                      directory: str) -> BuiltTrial:  # fmt: skip
    """In a worker: build ``candidate`` of ``layer`` with ``knobs`` and export its library."""
    from .measure import _kernel_module
    from .space import build_candidate

    target = tvm.target.Target(target_text)
    call = build_candidate(candidate, layer, target, knobs)
    executable = tvm.compile(_kernel_module(call), target=target)
    handle, path = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    executable.export_library(path)
    return BuiltTrial(path, tuple(call.consts), tuple(call.out_shape), call.out_dtype)


def portable_layer(layer: LayerSpec) -> LayerSpec:
    """``layer`` without its Relax handles, so it pickles to a worker."""
    return dataclasses.replace(layer, x_var=None, tail_var=None)


class BuildPool:
    """``workers`` processes that build trials; libraries go to a directory removed on close."""

    def __init__(self, workers: int):
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        )
        self._dir = tempfile.TemporaryDirectory(prefix="tvm_sparse_trials_")

    def build(self, candidate: str, layer: LayerSpec, target: tvm.target.Target,
              knobs: dict | None) -> BuiltTrial:  # fmt: skip
        """Build one trial in a worker and wait for it (the calling thread lets go of the GIL
        while it waits, so other device threads go on)."""
        future = self._pool.submit(
            _build_and_export, candidate, portable_layer(layer), str(target),
            knobs or {}, self._dir.name,
        )  # fmt: skip
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._dir.cleanup()
