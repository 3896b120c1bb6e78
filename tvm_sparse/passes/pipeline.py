"""The tvm-sparse compiler, phase by phase. Reading this file tells you the whole pipeline.

1. canonicalize  BatchNorm/scale folded into layers, constant transposes folded
2. sparsify      analyze every layer, choose dense / sparse kernel, keep activations
                 transposed between consecutive batched sparse linears, rewrite to call_tir;
                 then k-WTA subgraphs (TopK = a full sort in TVM) -> linear-time select kernel,
                 attention (Q K^T, mask, softmax, V, the head permutes) -> one kernel,
                 and layer_norm(residual add) -> one kernel
3. legalize      remaining Relax ops -> TIR (TVM), fused
4. schedule      tuned records first, then rules for dense leftovers (dlight + ours)
5. lower         TVM's VM lowering (memory planning, shape lowering)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from ..report import LayerReport
from ..schedules.leftover_x86 import cpu_leftover_rules, gpu_leftover_rules
from ..schedules.tuning import choose_layer_tuned
from .analyze_sparsity import analyze_function, layer_report
from .canonicalize import canonicalize_passes
from .chain_layouts import chain_tile_layouts
from .fuse_add_layernorm import FuseAddLayerNorm
from .fuse_attention import fuse_attention_pass
from .rewrite_kwta import rewrite_kwta_pass
from .rewrite_layers import rewrite_layers

log = logging.getLogger("tvm_sparse")

_LAYOUT_NOTES = {
    ("tiles", "rows"): "reads the previous layer's transposed output",
    ("rows", "tiles"): "output stays transposed for the next layer",
    ("tiles", "tiles"): "input and output stay transposed",
}


@dataclass
class SparsifyOptions:
    """Knobs of the sparsify phase (``compile(**options)`` forwards them)."""

    sparse: bool = True  # False: dense kernels only (the dense baseline)
    # "auto": time dense + the best sparse candidates here; True: time all; False: estimates only
    measure: bool | str = "auto"
    layer_names: list = field(default_factory=list)  # (name, op) from the frontend, for the report


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.Sparsify")
class Sparsify:
    """Analyze, choose and rewrite every layer; the rows of the report land in ``self.layers``."""

    def __init__(self, options: SparsifyOptions | None = None):
        self.options = options or SparsifyOptions()
        self.layers: list[LayerReport] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=False)
        plan = {}
        self.layers = []
        rows_by_tail = {}
        analyzed = analyze_function(mod["main"], self.options.layer_names)
        for i, (layer, act) in enumerate(analyzed):
            start = time.perf_counter()
            row = layer_report(layer, act)
            choice = choose_layer_tuned(
                layer, target, sparse=self.options.sparse, measure=self.options.measure
            )
            log.info(
                "layer %d/%d %s: %s (%s) [%.1f s]",
                i + 1,
                len(analyzed),
                layer.name,
                choice.chosen,
                choice.reason,
                time.perf_counter() - start,
            )
            row.chosen, row.reason = choice.chosen, choice.reason
            row.estimated_ms, row.measured_ms = choice.estimated_ms, choice.measured_ms
            self.layers.append(row)
            rows_by_tail[layer.tail_var] = row
            if choice.kernel is not None:
                plan[layer.tail_var] = (layer, choice.kernel)
        plan = chain_tile_layouts(plan, mod["main"])
        for tail, (_layer, kernel) in plan.items():
            layout = (kernel.info.get("x_layout"), kernel.info.get("y_layout"))
            if "tiles" in layout:
                rows_by_tail[tail].reason += "; " + _LAYOUT_NOTES[layout]
        return rewrite_layers(mod, plan)


def legalize_passes() -> list[tvm.transform.Pass]:
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def schedule_passes(
    target: tvm.target.Target, records_dir: str | None = None
) -> list[tvm.transform.Pass]:
    passes = []
    if records_dir is not None:
        # MetaSchedule's JSON database in records_dir (database_{workload,tuning_record}.json)
        passes.append(relax.transform.MetaScheduleApplyDatabase(work_dir=records_dir))
    rules = cpu_leftover_rules() if str(target.kind.name) == "llvm" else gpu_leftover_rules()
    passes.append(dl.ApplyDefaultSchedule(*rules))
    return passes


def lower_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    if str(target.kind.name) == "llvm":
        # TVM 0.27's cpu_generic/__init__ does not export dataflow_lower_passes, so the generic
        # relax.pipeline.dataflow_lower_passes(llvm) raises AttributeError: use the module itself.
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        return cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
    from tvm.relax.backend.cuda import pipeline as cuda  # same export gap as cpu_generic

    return cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)


def pre_schedule_passes(target: tvm.target.Target, sparsify: Sparsify) -> list:
    """Phases 1-3. Tuning extracts its MetaSchedule tasks from exactly this module, so that the
    workloads it records match the ones compile looks up."""
    from tvm.relax import pipeline as tvm_pipeline

    return [
        *canonicalize_passes(),
        sparsify,
        rewrite_kwta_pass(target),  # after Sparsify: it reads the k-WTA pattern
        fuse_attention_pass(target),  # softmax(Q K^T + mask) V per head: one kernel
        FuseAddLayerNorm(),  # residual add + layer norm: one pass over each row
        *tvm_pipeline.library_dispatch_passes(target),
        *legalize_passes(),
    ]


def build_pipeline(
    target: tvm.target.Target | None = None,
    sparsify: Sparsify | None = None,
    records_dir: str | None = None,
) -> tvm.transform.Pass:
    """The full Relax pipeline; ``target`` defaults to the one ``tvm.compile`` enters."""
    sparsify = sparsify or Sparsify()

    @tvm.transform.module_pass(opt_level=0, name="tvm_sparse.Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=False)
        with tgt:
            phases = [
                *pre_schedule_passes(tgt, sparsify),
                *schedule_passes(tgt, records_dir),
                *lower_passes(tgt),
            ]
            return tvm.transform.Sequential(phases, name="tvm_sparse")(mod)

    return _pipeline
