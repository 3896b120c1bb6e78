"""Tuning records on disk, and the records compile reads from.

A records directory holds what ``tune`` wrote:

- ``kernel_records.json`` (:data:`KERNEL_RECORDS`): every knob trial of every kernel task and
  its best, keyed by :func:`kernel_key`, a hash of (candidate, shapes, epilogue, weight and
  bias bytes, target, machine). Every trial is written at once (atomically), so a tune stopped
  early keeps what it measured. ``machines`` lists the machines the records were measured on
  (``tvm_sparse.machine``: the CPU and ISA, or the RPC device): records from another CPU are
  not applied (:func:`records_machine`).
- MetaSchedule's JSON database (``database_{workload,tuning_record}.json``, see
  :func:`open_database`) for the leftover functions, and ``ms_tasks.json`` (:data:`MS_TASKS`):
  how many trials each of them has had, so a re-run knows what is done.

At compile time :func:`use_records` makes a directory's kernel records active (a context
variable, so nested and concurrent compiles each see their own); :mod:`.lookup` reads them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import threading
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import tvm

from ...context import bound
from ...ir.layers import LayerSpec
from ...machine import machine_id

log = logging.getLogger("tvm_sparse")


KERNEL_RECORDS = "kernel_records.json"
MS_TASKS = "ms_tasks.json"
_VERSION = 2  # 2: keys and records name the machine they were measured on


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
        log.warning(
            "%s: records version %s ignored (this tvm-sparse writes version %s: tune again)",
            path, data.get("version"), _VERSION,
        )  # fmt: skip
        return {}
    return data.get("records", {})


class KernelRecords:
    """The knob records of one directory: ``key -> {candidate, layer, machine, target, trials,
    best}``. ``machine``: the machine lookups use (see :func:`records_machine`)."""

    def __init__(self, records_dir: str | os.PathLike, machine: str | None = None):
        self.path = os.path.join(os.fspath(records_dir), KERNEL_RECORDS)
        self.records: dict[str, dict] = _read_json(self.path)
        # held while a record changes and while the file is written: searches measured on
        # several RPC devices at once change their records from several threads
        self.lock = threading.RLock()
        self.machine = machine

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store one record and write the file (under ``lock``)."""
        with self.lock:
            self.records[key] = record
            _atomic_write_json(
                self.path,
                {"version": _VERSION, "machines": self.machines(), "records": self.records},
            )

    def machines(self) -> dict[str, str]:
        """``machine -> target`` of every record (what each machine's kernels were built for)."""
        return {r["machine"]: r.get("target", "") for r in self.records.values() if "machine" in r}

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
        from ...errors import TvmSparseError

        raise TvmSparseError(f"{path}: tuning records directory not found")
    return Records(path, KernelRecords(path), open_database(path))


_ACTIVE: contextvars.ContextVar[KernelRecords | None] = contextvars.ContextVar(
    "tvm_sparse_tuning_records", default=None
)


def records_machine(records: KernelRecords, target: tvm.target.Target) -> str | None:
    """The machine whose records a compile for ``target`` on this machine applies: this one's
    when it has records (or there are none yet); else the one RPC device tuned for exactly this
    target (cross-compiling for it); else None (the records are from other machines)."""
    here = machine_id(target)
    machines = records.machines()
    if not machines or here in machines:
        return here
    remote = [m for m, t in machines.items() if m.startswith("rpc device") and t == str(target)]
    return remote[0] if len(remote) == 1 else None


def foreign_records_message(records_dir: str, records: KernelRecords, target) -> str:
    """Why a records directory is not applied: it was measured on other machines."""
    others = "; ".join(sorted(records.machines()))
    return (
        f"{records_dir}: tuning records were measured on [{others}], not on this machine "
        f"({machine_id(target)}): they are not applied (run 'tvm-sparse tune' here)"
    )


def use_records(
    records_dir: str | os.PathLike | None, machine: str | None = None
) -> AbstractContextManager[KernelRecords | None]:
    """Make the kernel records of ``records_dir`` active for :func:`tuned_choice` (None: none),
    looked up for ``machine`` (None: this machine; compile passes what
    :func:`records_machine` found, which may be the RPC device they were tuned on)."""
    records = KernelRecords(records_dir, machine) if records_dir is not None else None
    return bound(_ACTIVE, records)


def kernel_key(
    candidate: str, layer: LayerSpec, target: tvm.target.Target, machine: str | None = None
) -> str:
    """Hash of everything a kernel's speed depends on: candidate, shapes, epilogue, weights,
    target, and the machine it is measured on (default: this one, ``machine.machine_id``).
    Two layers with identical weights share a record (the knobs transfer exactly)."""
    if machine is None:
        machine = machine_id(target)
    meta = {
        "candidate": candidate,
        "kind": layer.kind,
        "x_shape": [int(d) for d in layer.x_shape],
        "out_shape": [int(d) for d in layer.out_shape],
        "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.conv_attrs.items()},
        "activation": layer.activation,
        "target": str(target),
        "machine": machine,
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
