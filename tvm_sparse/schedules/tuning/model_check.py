"""The end-to-end check of a tune: is the whole model faster with the records than without?

A layer's kernel timed alone is not the layer in its model: there its neighbours set the
activation layout (the chained transposed tiles of two panel kernels), its weights come from
further away, and the other layers share the caches. Per-layer gains need not survive that
(#16: every CSR layer of an MLP 1.2-1.5x faster alone, the model with the records 0.91x). So
``tune`` ends by timing the compiled model with and without its records, in turns, and writes
the verdict here (``model_checks.json``, keyed by :func:`model_fingerprint`); compile reads it
and leaves records that did not make this model faster unapplied, saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import tvm
import tvm_ffi

from .records import _atomic_write_json

MODEL_CHECKS = "model_checks.json"


@dataclasses.dataclass(frozen=True)
class ModelCheck:
    """Tune's end-to-end verdict on one model: median ms per run without and with the records,
    the median over rounds of their ratio, and whether the records are kept for the model."""

    untuned_ms: float
    tuned_ms: float
    speedup: float
    rounds: int
    machine: str
    kept: bool

    def line(self) -> str:
        verdict = "kept" if self.kept else "not kept: the model is not faster with them"
        return (
            f"whole model: {self.untuned_ms:.3f} ms untuned, {self.tuned_ms:.3f} ms tuned "
            f"({self.speedup:.3f}x, median of {self.rounds} rounds in turns): records {verdict}"
        )


def model_fingerprint(mod: tvm.IRModule, target: tvm.target.Target, machine: str) -> str:
    """The imported model (structure and weights), the target and the machine, as one key."""
    target_hash = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    return f"{tvm_ffi.structural_hash(mod):x}:{target_hash}:{machine}"


def _path(records_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(records_dir), MODEL_CHECKS)


def read_check(records_dir: str | os.PathLike, fingerprint: str) -> ModelCheck | None:
    """The verdict recorded for a model, or None (never checked: the records apply)."""
    path = _path(records_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        entry = json.load(f).get(fingerprint)
    return ModelCheck(**entry) if entry else None


def write_check(records_dir: str | os.PathLike, fingerprint: str, check: ModelCheck) -> None:
    path = _path(records_dir)
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data[fingerprint] = dataclasses.asdict(check)
    _atomic_write_json(path, data)


def forget_check(records_dir: str | os.PathLike, fingerprint: str) -> None:
    """Drop a model's verdict (before checking it again: the old one must not hide the records)."""
    path = _path(records_dir)
    if not os.path.exists(path):
        return
    with open(path) as f:
        data = json.load(f)
    if data.pop(fingerprint, None) is not None:
        _atomic_write_json(path, data)
