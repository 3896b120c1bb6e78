"""Choose, per layer, dense or the best sparse kernel: by estimate, or by measuring.

The cost model ranks candidates; measuring decides. ``measure="auto"`` (the default) builds and
times dense plus the best few sparse candidates on this machine, in turns (so a noisy spell hits
them all), and a sparse kernel must measure ``MEASURE_MARGIN`` of dense or better, so no layer gets
a kernel slower than its dense version; ``measure=True`` times every candidate; ``measure=False``
trusts the estimates (a sparse kernel then needs ``ESTIMATE_MARGIN``). Timings are cached on disk
(``measure_cache``), so compiling the same model again does not re-measure.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

import tvm

from ..ir.layers import LayerSpec
from ..target import is_cpu
from ..timing import take_turns
from . import measure_cache
from .cost_model import DEFAULT_MACHINE, ESTIMATE_MARGIN, MEASURE_MARGIN
from .kernel import KernelCall, kernel_timer
from .kernels import Candidate
from .measure_input import layer_input
from .registry import candidates_for

log = logging.getLogger("tvm_sparse")

AUTO_SPARSE_CANDIDATES = 2  # sparse candidates measured per layer in "auto" mode
MEASURE_ROUNDS = 3  # rounds in which a layer's candidates are timed in turns


@dataclass
class Choice:
    layer: LayerSpec
    chosen: str
    kernel: KernelCall | None
    reason: str
    estimated_ms: dict = field(default_factory=dict)
    measured_ms: dict = field(default_factory=dict)


def _measure(kernels: dict[str, KernelCall], layer: LayerSpec, target: tvm.target.Target
             ) -> dict[str, float]:  # fmt: skip
    """Seconds per call of each kernel on this machine, timed in turns; cached per kernel (by
    name, kernel, weights and target) and per group: a time is reused only beside the times it
    was measured with, so one choice never compares a fresh timing with one from another
    (quieter or busier) spell of the machine. A kernel that fails to build is left out."""
    keys = {
        name: measure_cache.key(name, k, layer.input_density, target) for name, k in kernels.items()
    }
    keys = measure_cache.group_keys(keys)
    seconds = {name: measure_cache.get(key) for name, key in keys.items()}
    if all(s is not None for s in seconds.values()):
        return seconds
    # one missing (a kernel that failed to build last time, say): the whole group is timed again
    seconds = dict.fromkeys(kernels)
    timers = {}
    x = layer_input(layer)
    for name in kernels:
        try:
            timers[name] = kernel_timer(
                kernels[name], target, x, number=5, repeat=1, min_repeat_ms=20
            )
        except Exception as err:  # noqa: BLE001 - a failing candidate is skipped, not fatal
            log.warning("layer %s: candidate %s failed: %s", layer.name, name, err)
    for name, times in take_turns(timers, MEASURE_ROUNDS).items():
        seconds[name] = statistics.median(times)
        measure_cache.put(keys[name], seconds[name])
    return {name: s for name, s in seconds.items() if s is not None}


def _to_measure(cands: list[Candidate], measure: bool | str) -> list[Candidate]:
    if measure is True:
        return cands
    dense, sparse = cands[0], sorted(cands[1:], key=lambda c: c.estimate_s)
    return [dense, *sparse[:AUTO_SPARSE_CANDIDATES]]


def _choose_by_estimate(layer: LayerSpec, cands: list[Candidate], estimated: dict) -> Choice:
    dense = cands[0]
    best = min(cands, key=lambda c: c.estimate_s)
    if best is not dense and best.estimate_s > ESTIMATE_MARGIN * dense.estimate_s:
        best, reason = dense, "sparse not clearly faster by estimate"
    elif best is dense:
        reason = "dense estimated fastest"
    else:
        reason = f"estimated {dense.estimate_s / best.estimate_s:.1f}x faster than dense"
    try:
        kernel = best.build()
    except Exception as err:  # noqa: BLE001 - fall back to TVM's lowering with a warning
        log.warning("layer %s: %s failed to build (%s); using TVM", layer.name, best.name, err)
        return Choice(layer, "tvm", None, f"{best.name} failed: {err}", estimated)
    return Choice(layer, best.name, kernel, reason, estimated)


def choose_layer(
    layer: LayerSpec,
    target: tvm.target.Target,
    *,
    sparse: bool = True,
    measure: bool | str = "auto",
) -> Choice:
    """Pick the kernel for one layer; falls back to TVM's own lowering when none applies."""
    cands = candidates_for(layer, target, sparse=sparse, machine=DEFAULT_MACHINE)
    if not cands:
        return Choice(layer, "tvm", None, f"no tvm-sparse kernel for target {target.kind.name}")
    estimated = {c.name: c.estimate_s * 1e3 for c in cands}
    if not is_cpu(target):
        measure = False  # kernels are timed on the host CPU only (no device timing here yet)
    if measure is False or len(cands) == 1:
        return _choose_by_estimate(layer, cands, estimated)
    built = {}
    for cand in _to_measure(cands, measure):
        try:
            built[cand.name] = cand.build()
        except Exception as err:  # noqa: BLE001 - a failing candidate is skipped, not fatal
            log.warning("layer %s: candidate %s failed: %s", layer.name, cand.name, err)
    measured = {name: s * 1e3 for name, s in _measure(built, layer, target).items()}
    if not measured:
        return Choice(layer, "tvm", None, "every candidate failed to build", estimated)
    best = min(measured, key=measured.get)
    dense_ms = measured.get("dense")
    if best != "dense" and dense_ms is not None and measured[best] > MEASURE_MARGIN * dense_ms:
        reason = (
            f"dense kept ({dense_ms:.3f} ms): {best} measured only "
            f"{dense_ms / measured[best]:.2f}x dense, under the {1 / MEASURE_MARGIN:.2f}x it needs"
        )
        return Choice(layer, "dense", built["dense"], reason, estimated, measured)
    reason = f"measured fastest ({measured[best]:.3f} ms"
    if best != "dense" and dense_ms is not None:
        reason += f", {dense_ms / measured[best]:.1f}x dense"
    return Choice(layer, best, built[best], reason + ")", estimated, measured)
