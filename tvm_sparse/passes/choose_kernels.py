"""Choose, per layer, dense or the best sparse kernel: by estimate, or by measuring.

A sparse kernel is taken on an estimate only when it is clearly faster than dense
(``ESTIMATE_MARGIN``); with ``measure=True`` every candidate is built and timed on this machine and
the fastest wins, dense included, so no layer ever gets a kernel slower than its dense version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm

from ..schedules.cost_model import DEFAULT_MACHINE, ESTIMATE_MARGIN
from ..schedules.kernel import KernelCall, time_kernel
from ..schedules.registry import Candidate, candidates_for
from .layers import LayerSpec

log = logging.getLogger("tvm_sparse")


@dataclass
class Choice:
    layer: LayerSpec
    chosen: str
    kernel: KernelCall | None
    reason: str
    estimated_ms: dict = field(default_factory=dict)
    measured_ms: dict = field(default_factory=dict)


def _measure(cand: Candidate, layer: LayerSpec, target: tvm.target.Target):
    kernel = cand.build()
    rng = np.random.default_rng(0)
    x_shape = (layer.rows, layer.x_shape[-1]) if layer.kind == "linear" else layer.x_shape
    x = rng.standard_normal(x_shape).astype("float32")
    if layer.input_density is not None:  # sparse inputs for sparse-sparse kernels to see
        x *= rng.random(x_shape) < layer.input_density
    return kernel, time_kernel(kernel, target, x, number=5, repeat=3, min_repeat_ms=20)


def choose_layer(
    layer: LayerSpec, target: tvm.target.Target, *, sparse: bool = True, measure: bool = False
) -> Choice:
    """Pick the kernel for one layer; falls back to TVM's own lowering when none applies."""
    cands = candidates_for(layer, target, sparse=sparse, machine=DEFAULT_MACHINE)
    if not cands:
        return Choice(layer, "tvm", None, f"no tvm-sparse kernel for target {target.kind.name}")
    estimated = {c.name: c.estimate_s * 1e3 for c in cands}
    dense = cands[0]
    if measure:
        measured, built = {}, {}
        for cand in cands:
            try:
                built[cand.name], seconds = _measure(cand, layer, target)
                measured[cand.name] = seconds * 1e3
            except Exception as err:  # noqa: BLE001 - a failing candidate is skipped, not fatal
                log.warning("layer %s: candidate %s failed: %s", layer.name, cand.name, err)
        if not measured:
            return Choice(layer, "tvm", None, "every candidate failed to build", estimated)
        best = min(measured, key=measured.get)
        reason = f"measured fastest ({measured[best]:.3f} ms"
        if best != "dense" and "dense" in measured:
            reason += f", dense {measured['dense']:.3f} ms"
        return Choice(layer, best, built[best], reason + ")", estimated, measured)
    best = min(cands, key=lambda c: c.estimate_s)
    if best is not dense and best.estimate_s > ESTIMATE_MARGIN * dense.estimate_s:
        best = dense
        reason = "sparse not clearly faster by estimate"
    elif best is dense:
        reason = "dense estimated fastest"
    else:
        ratio = dense.estimate_s / best.estimate_s
        reason = f"estimated {ratio:.1f}x faster than dense"
    try:
        kernel = best.build()
    except Exception as err:  # noqa: BLE001 - fall back to TVM's lowering with a warning
        log.warning(
            "layer %s: kernel %s failed to build (%s); using TVM", layer.name, best.name, err
        )
        return Choice(layer, "tvm", None, f"{best.name} failed: {err}", estimated)
    return Choice(layer, best.name, kernel, reason, estimated)
