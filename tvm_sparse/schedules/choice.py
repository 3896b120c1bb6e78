"""Choose, per layer, dense or the best sparse kernel: by estimate, or by measuring.

The cost model ranks candidates; measuring decides. ``measure="auto"`` (the default) builds and
times dense plus the best few sparse candidates on this machine, in turns (so a noisy spell hits
them all), and a sparse kernel must measure ``MEASURE_MARGIN`` of dense or better, so no layer gets
a kernel slower than its dense version; ``measure=True`` times every candidate; ``measure=False``
trusts the estimates (a sparse kernel then needs ``ESTIMATE_MARGIN``). Timings are cached on disk
(``measure_cache``), so compiling the same model again does not re-measure.

Candidates are compiled and timed in the candidate worker (``isolation``): one that fails to
build, aborts LLVM or crashes when run is dropped with a warning and the reason in the choice,
and the layer takes the next candidate, dense, or TVM's own lowering. A kernel chosen without
being timed is compiled there once first, so the final build never meets an untried kernel.
Within ``decision_reuse.reuse_timings()`` (one compile), a layer with the same shapes, candidates
and weight statistics as an earlier one takes that layer's measured decision instead of being
timed again.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from concurrent.futures import Future
from dataclasses import dataclass, field

import tvm

from ..ir.layers import CONV2D, LayerSpec
from ..target import device_present, is_cpu
from . import decision_reuse, measure_cache
from .candidate_run import error_text
from .cost_model import DEFAULT_MACHINE, ESTIMATE_MARGIN, MEASURE_MARGIN
from .isolation import (
    compile_check,
    compile_check_known,
    compile_check_later,
    mark_compiled,
    run_isolated,
)
from .kernel import KernelCall
from .kernels import Candidate
from .measure_input import layer_input
from .registry import candidates_for
from .weights_residency import current_weights_in

log = logging.getLogger("tvm_sparse")

AUTO_SPARSE_CANDIDATES = 2  # sparse candidates measured per layer in "auto" mode
# a conv's: four direct kernels compete (flat, tap planes, panel, sparse-sparse) and their
# estimates rank them less surely than a linear's (ResNet-50's 512 3x3 at 7x7: the flat kernel
# is estimated third and measures second)
AUTO_SPARSE_CONV_CANDIDATES = 3
MEASURE_ROUNDS = 3  # rounds in which a layer's candidates are timed in turns


@dataclass
class Choice:
    layer: LayerSpec
    chosen: str
    kernel: KernelCall | None
    reason: str
    estimated_ms: dict = field(default_factory=dict)
    measured_ms: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # candidate -> why it was dropped
    reused_from: str | None = None  # the layer whose measured decision this one took
    # a reused kernel's compile check, still running (its result: None, or why it failed);
    # whoever opened ``reuse_timings`` waits for it and measures the layer when it failed
    pending_check: Future | None = None


@dataclass
class Measured:
    """Seconds per call of the kernels that ran, and why the others were dropped."""

    seconds: dict[str, float]
    dropped: dict[str, str] = field(default_factory=dict)


def _drop(layer: LayerSpec, dropped: dict, name: str, why: str) -> None:
    log.warning("layer %s: candidate %s %s; dropped", layer.name, name, why)
    dropped[name] = why


def _measure(kernels: dict[str, KernelCall], layer: LayerSpec, target: tvm.target.Target
             ) -> Measured:  # fmt: skip
    """Seconds per call of each kernel on this machine, timed in turns in the worker; cached per
    kernel (by name, kernel, weights and target) and per group: a time is reused only beside the
    times it was measured with, so one choice never compares a fresh timing with one from another
    (quieter or busier) spell of the machine. A kernel that fails to build or run is dropped."""
    weights_in = current_weights_in()
    keys = {
        name: measure_cache.key(name, k, layer.input_density, target, weights_in)
        for name, k in kernels.items()
    }
    keys = measure_cache.group_keys(keys)
    seconds = {name: measure_cache.get(key) for name, key in keys.items()}
    if all(s is not None for s in seconds.values()):
        return Measured(seconds)  # timed before, so compiled before: nothing to check
    # one missing (a kernel that failed to build last time, say): the whole group is timed again
    result = Measured({})
    outcomes = run_isolated(kernels, target, layer_input(layer), MEASURE_ROUNDS, weights_in)
    for name, outcome in outcomes.items():
        if outcome.ok:
            result.seconds[name] = statistics.median(outcome.samples)
            measure_cache.put(keys[name], result.seconds[name])
            mark_compiled(kernels[name], target)
        else:
            _drop(layer, result.dropped, name, outcome.error)
    return result


def _to_measure(cands: list[Candidate], measure: bool | str, layer: LayerSpec
                ) -> list[Candidate]:  # fmt: skip
    if measure is True:
        return cands
    dense, sparse = cands[0], sorted(cands[1:], key=lambda c: c.estimate_s)
    count = AUTO_SPARSE_CONV_CANDIDATES if layer.kind == CONV2D else AUTO_SPARSE_CANDIDATES
    return [dense, *sparse[:count]]


def _choose_by_estimate(layer: LayerSpec, target: tvm.target.Target, cands: list[Candidate],
                        estimated: dict, defer_check: bool = False) -> Choice:  # fmt: skip
    dense = cands[0]
    best = min(cands, key=lambda c: c.estimate_s)
    if best is not dense and best.estimate_s > ESTIMATE_MARGIN * dense.estimate_s:
        best, reason = dense, "sparse not clearly faster by estimate"
    elif best is dense:
        reason = "dense estimated fastest"
    else:
        reason = f"estimated {dense.estimate_s / best.estimate_s:.1f}x faster than dense"
    dropped: dict[str, str] = {}
    for cand in [best] if best is dense else [best, dense]:  # dense when the best fails
        if cand is not best:
            reason = "dense kept"
        try:
            kernel = cand.build()
        except Exception as err:  # noqa: BLE001 - a failing candidate is dropped, not fatal
            _drop(layer, dropped, cand.name, f"failed to build: {error_text(err)}")
            continue
        if defer_check and not compile_check_known(kernel, target):
            # checked in the worker while the next layers are built; a failure re-chooses the
            # layer (ChooseKernels), which then finds it here as known and takes the next
            return Choice(layer, cand.name, kernel, reason, estimated, dropped=dropped,
                          pending_check=compile_check_later(cand.name, kernel, target))  # fmt: skip
        why = compile_check(cand.name, kernel, target)
        if why is None:
            return Choice(layer, cand.name, kernel, reason, estimated, dropped=dropped)
        _drop(layer, dropped, cand.name, why)
    return Choice(layer, "tvm", None, "no candidate built; using TVM", estimated, dropped=dropped)


def _reuse(layer: LayerSpec, target: tvm.target.Target, names: list[str],
           cands: list[Candidate], estimated: dict) -> Choice | None:  # fmt: skip
    """The measured decision of an earlier layer like this one (``decision_reuse``), its kernel
    built for this layer's weights, its compile check started (``pending_check``); None when
    there is none, or the kernel fails to build (the layer is then measured after all)."""
    decision = decision_reuse.find(layer, target, names)
    if decision is None:
        return None
    cand = next(c for c in cands if c.name == decision.chosen)
    try:
        kernel = cand.build()
    except Exception as err:  # noqa: BLE001 - measured after all, which reports it
        log.info("layer %s: %s failed to build (%s); measuring", layer.name, cand.name, err)
        return None
    source = decision.layer_name
    reason = f"{decision.reason}; timing reused from {source} (same shapes, weight stats)"
    return Choice(layer, decision.chosen, kernel, reason, estimated, dict(decision.measured_ms),
                  reused_from=source, pending_check=compile_check_later(cand.name, kernel, target)
                  )  # fmt: skip


# --- the choice ----------------------------------------------------------------------------------


def _choose_by_measuring(layer: LayerSpec, target: tvm.target.Target, cands: list[Candidate],
                         measure: bool | str, estimated: dict) -> Choice:  # fmt: skip
    to_measure = _to_measure(cands, measure, layer)
    names = [c.name for c in to_measure]
    reused = _reuse(layer, target, names, cands, estimated)
    if reused is not None:
        return reused
    built, dropped = {}, {}
    for cand in to_measure:
        try:
            built[cand.name] = cand.build()
        except Exception as err:  # noqa: BLE001 - a failing candidate is dropped, not fatal
            _drop(layer, dropped, cand.name, f"failed to build: {error_text(err)}")
    result = _measure(built, layer, target)
    dropped.update(result.dropped)
    measured = {name: s * 1e3 for name, s in result.seconds.items()}
    if not measured:
        return Choice(layer, "tvm", None, "every candidate failed; using TVM", estimated,
                      dropped=dropped)  # fmt: skip
    best = min(measured, key=measured.get)
    dense_ms = measured.get("dense")
    if best != "dense" and dense_ms is not None and measured[best] > MEASURE_MARGIN * dense_ms:
        reason = (
            f"dense kept ({dense_ms:.3f} ms): {best} measured only "
            f"{dense_ms / measured[best]:.2f}x dense, under the {1 / MEASURE_MARGIN:.2f}x it needs"
        )
        choice = Choice(layer, "dense", built["dense"], reason, estimated, measured, dropped)
    else:
        reason = f"measured fastest ({measured[best]:.3f} ms"
        if best != "dense" and dense_ms is not None:
            reason += f", {dense_ms / measured[best]:.1f}x dense"
        choice = Choice(layer, best, built[best], reason + ")", estimated, measured, dropped)
    if not dropped:
        decision_reuse.remember(layer, target, names, choice.chosen, choice.reason, measured)
    return choice


def dropped_text(dropped: dict) -> str:
    """``candidate X <why>; dropped`` for each dropped candidate (what the report says)."""
    return "; ".join(f"candidate {name} {why}; dropped" for name, why in dropped.items())


def choose_layer(
    layer: LayerSpec,
    target: tvm.target.Target,
    *,
    sparse: bool = True,
    measure: bool | str = "auto",
    defer_check: bool = False,
) -> Choice:
    """Pick the kernel for one layer; falls back to TVM's own lowering when none applies. The
    reason names every candidate that was dropped, and why. ``defer_check``: a kernel chosen
    by estimate comes back with its compile check still running (``pending_check``), for a
    caller that builds the next layers meanwhile and re-chooses a layer whose check fails."""
    cands = candidates_for(layer, target, sparse=sparse, machine=DEFAULT_MACHINE)
    if not cands:
        return Choice(layer, "tvm", None, f"no tvm-sparse kernel for target {target.kind.name}")
    estimated = {c.name: c.estimate_s * 1e3 for c in cands}
    if not device_present(target):
        measure = False  # no device here to time the kernels on: the GPU model decides
    if measure is False or len(cands) == 1:
        choice = _choose_by_estimate(layer, target, cands, estimated, defer_check)
    else:
        choice = _choose_by_measuring(layer, target, cands, measure, estimated)
    if choice.chosen == "dense" and not is_cpu(target):
        # Our dense GPU kernel is the yardstick, not a product: TVM's own pipeline schedules the
        # untouched op with fused epilogues (on an H200 it was 10% faster than ours at batch 16).
        choice = dataclasses.replace(
            choice, chosen="tvm", kernel=None, reason=f"{choice.reason}; TVM's own GPU schedule"
        )
    if choice.dropped:
        choice.reason = f"{choice.reason}; {dropped_text(choice.dropped)}"
    return choice
