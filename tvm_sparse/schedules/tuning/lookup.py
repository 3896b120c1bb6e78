"""The compile side: the tuned kernel choice and knobs of a layer under the active records.

:func:`~.records.use_records` makes a records directory active; :func:`choose_layer_tuned`
(what the pipeline calls per layer) then picks the candidate the records measured fastest and
builds it with its best knobs. When the records do not cover every candidate of the layer (or
a measured choice is asked for) it falls back to ``schedules.choice.choose_layer``, and still
builds the kernel that picks with its tuned knobs where there are some.
"""

from __future__ import annotations

import tvm

from ...ir.layers import LayerSpec
from ..choice import Choice, choose_layer
from ..kernel import KernelCall
from ..registry import candidates_for, find_family
from .records import _ACTIVE, kernel_key
from .space import build_candidate


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
        seconds = records.best_seconds(kernel_key(cand.name, layer, target, records.machine))
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
    if records is None or find_family(candidate, layer, target) is None:
        return None
    knobs = records.best_knobs(kernel_key(candidate, layer, target, records.machine))
    if knobs is None:
        return None
    return build_candidate(candidate, layer, target, knobs)


def choose_layer_tuned(layer: LayerSpec, target: tvm.target.Target, **kwargs) -> Choice:
    """``schedules.choice.choose_layer`` with tuning records first (a drop-in for the pipeline)."""
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
