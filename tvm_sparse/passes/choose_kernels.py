"""Choose each layer's kernel (dense or one of the sparse ones): the second sparsify pass.

The choice itself is ``schedules.tuning.choose_layer_tuned`` (tuned records, else estimates,
timed on this machine when ``measure`` says so); this pass puts it in the plan and writes the
choice and its reason into the module's report, with a note for every candidate dropped (one
that failed to build, or crashed the compiler: the choice runs them in a worker process). One
pass is one compile: layers like an earlier one reuse its timings (``reuse_timings``), and every
candidate is timed with its weights where this model keeps them (``weights_residency``). A line per
layer at INFO on the ``tvm_sparse`` logger shows the progress.
"""

from __future__ import annotations

import logging
import time

import tvm

from ..ir.layers import LINEAR, LayerSpec
from ..report import LayerReport, Report
from ..schedules.choice import Choice, dropped_text
from ..schedules.decision_reuse import reuse_timings
from ..schedules.isolation import prestart
from ..schedules.registry import find_family
from ..schedules.tuning.lookup import choose_layer_tuned
from ..schedules.weights_residency import L3, model_working_set, weights_in, weights_in_for
from .layer_plan import LayerPlan
from .module_report import attach_report, read_report

log = logging.getLogger("tvm_sparse")


_MAX_RECHOICES = 3  # a layer's candidates failing their compile check one after another


def _strict_dense(layer: LayerSpec, options) -> bool:
    """Under ``strict_nan`` only linear layers with static rows keep their weight-sparse
    kernels (``nan_fixup`` restores dense NaN semantics after them); other layers get dense
    kernels, which form ``0 * NaN`` as dense math does."""
    return options.strict_nan and (layer.kind != LINEAR or layer.dynamic_rows)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.ChooseKernels")
class ChooseKernels:
    """Choose a kernel for every layer of ``plan`` for ``target``."""

    def __init__(self, plan: LayerPlan, target: tvm.target.Target):
        self.plan = plan
        self.target = target
        # the pipeline builds its passes when it starts: the candidate worker imports TVM (3-6 s)
        # while the model is canonicalized and analyzed, not while the first layer waits for it
        prestart()

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.plan.check(mod, "ChooseKernels")
        report = read_report(mod)
        rows = list(zip(self.plan.layers, report.layers))
        # one place for every layer's weights while timing: the model's size says where
        working_set = model_working_set(self.plan.layers)
        location = weights_in_for(working_set)
        if location == L3 and self.plan.options.measure is not False:
            report.notes.append(
                f"kernels timed with their weights in the L3, as the model keeps them "
                f"({working_set / 2**20:.1f} MB of weights and activations fit half the "
                f"last-level cache)"
            )
        with reuse_timings(), weights_in(location):
            choices = [self._choose(i, layer, len(rows)) for i, (layer, _) in enumerate(rows)]
        for i, ((layer, row), choice) in enumerate(zip(rows, choices)):
            self._record(layer, row, self._checked(i, layer, choice, len(rows)), report)
        return attach_report(mod, report)

    def _checked(self, i: int, layer: LayerSpec, choice: Choice, total: int) -> Choice:
        """``choice`` once its pending compile check passed; a kernel that fails it is chosen
        again (its failure is known then, so the next candidate is taken), a few times at
        most, then TVM's own path."""
        for _ in range(_MAX_RECHOICES):
            why = choice.pending_check.result() if choice.pending_check is not None else None
            if why is None:
                return choice
            log.warning("layer %s: %s %s; choosing again", layer.name, choice.chosen, why)
            choice = self._choose(i, layer, total)
        if choice.pending_check is None or choice.pending_check.result() is None:
            return choice
        return Choice(layer, "tvm", None, "no candidate compiled; using TVM", choice.estimated_ms)

    def _choose(self, i: int, layer: LayerSpec, total: int) -> Choice:
        start = time.perf_counter()
        options = self.plan.options
        choice = choose_layer_tuned(
            layer, self.target, sparse=options.sparse and not _strict_dense(layer, options),
            measure=options.measure, defer_check=True,
        )  # fmt: skip
        log.info(
            "[%d/%d] layer %s: %s (%s) in %.1f s",
            i + 1,
            total,
            layer.name,
            choice.chosen,
            choice.reason,
            time.perf_counter() - start,
        )
        return choice

    def _record(self, layer: LayerSpec, row: LayerReport, choice: Choice, report: Report) -> None:
        """The choice into the report row (and a note per dropped candidate) and the plan."""
        row.chosen, row.reason = choice.chosen, choice.reason
        if layer.dynamic_rows and choice.kernel is not None:
            row.reason += "; built for any row count (dynamic shape), chosen at 1 row"
        row.estimated_ms, row.measured_ms = choice.estimated_ms, choice.measured_ms
        if choice.dropped:
            report.notes.append(f"layer {layer.name}: {dropped_text(choice.dropped)}")
        if choice.kernel is not None:
            self.plan.kernels[layer.tail_var] = (layer, choice.kernel)
            family = find_family(choice.chosen, layer, self.target)
            if family is not None and family.skips_zeros:
                if self.plan.options.strict_nan:
                    self.plan.nan_fixup.add(layer.tail_var)
                    row.reason += "; strict NaN: non-finite input rows get dense NaN semantics"
                else:
                    row.reason += "; skips zero weights (0 x NaN/Inf input adds 0)"
