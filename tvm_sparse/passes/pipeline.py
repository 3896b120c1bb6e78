"""The tvm-sparse compiler, phase by phase. Reading this file tells you the whole pipeline.

1. Canonicalize  BatchNorm/scale folded into layers, constant transposes folded, erf-GELU fused
2. Sparsify      AnalyzeLayers -> ChooseKernels -> ChainLayouts -> RewriteLayers: find every
                 layer, choose its dense / sparse kernel, keep activations transposed between
                 consecutive batched sparse linears, rewrite each layer to call_tir
3. FuseKernels   k-WTA subgraphs (TopK = a full sort in TVM) -> linear-time select kernel,
                 attention (Q K^T, mask, softmax, V, the head permutes) -> one kernel,
                 layer_norm(residual add) -> one kernel, a layer norm over the channels
                 of NCHW through permutes -> one kernel over axis 1, relu(conv + shortcut) -> the
                 conv's epilogue (tap-plane sparse conv), an LSTM step (recurrent
                 product + gates + state update) -> one kernel, mean over trailing axes
                 (global average pooling) -> a vector row sum
4. Legalize      gathers' run-time indices range-checked, library dispatch, remaining Relax
                 ops -> TIR (TVM), fused
5. Schedule      tuned records first, then rules for dense leftovers (dlight + ours)
6. Lower         TVM's VM lowering (memory planning, shape lowering); on x86 every kernel
                 runs with subnormals flushed to zero (``flush_denormals``)

The report. The sparsify passes write the per-layer report (``tvm_sparse.report.Report``) into
the module attribute ``tvm_sparse.report``; ``module_report.read_report(mod)`` reads it from any
module they ran on. Through the TVM plugin, where ``tvm.compile`` returns only an executable::

    from tvm_sparse.passes.module_report import capture_report

    with capture_report() as captured:
        ex = tvm.compile(mod, target, relax_pipeline="sparse")
    print(captured.report.table())

``tvm_sparse.compile`` reads it the same way.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import pipeline as tvm_pipeline
from tvm.s_tir import dlight as dl

from ..phases import timed
from ..schedules.leftover_x86 import cpu_leftover_rules, gpu_leftover_rules
from ..schedules.vector_math import install_llvm_lowering
from ..target import is_cpu
from . import flush_denormals, one_core
from .analyze_sparsity import AnalyzeLayers
from .canonicalize import canonicalize_passes
from .chain_layouts import ChainLayouts
from .check_take_indices import CheckTakeIndices
from .choose_kernels import ChooseKernels
from .dedupe_kernels import DedupeKernels
from .fuse_add_layernorm import FuseAddLayerNorm
from .fuse_attention import FuseAttention
from .fuse_channel_layernorm import FuseChannelLayerNorm
from .fuse_concat_affine import FuseConcatAffine
from .fuse_concat_producers import FuseConcatProducers
from .fuse_conv_pool import FuseConvPool
from .fuse_projection import FuseProjection
from .fuse_recurrent_cell import FuseRecurrentCell
from .fuse_residual import FuseResidual
from .layer_plan import LayerPlan, SparsifyOptions
from .legalize_extrema import float_extrema_legalizations
from .rewrite_kwta import RewriteKwta
from .rewrite_layers import RewriteLayers
from .rewrite_row_reductions import RewriteRowReductions
from .separable_pool import SeparablePool


def sparsify_passes(
    target: tvm.target.Target, options: SparsifyOptions | None = None
) -> list[tvm.transform.Pass]:
    """The four sparsify passes, sharing one plan (run them together, in this order)."""
    plan = LayerPlan(options or SparsifyOptions())
    return [
        AnalyzeLayers(plan, target),
        ChooseKernels(plan, target),
        ChainLayouts(plan),
        RewriteLayers(plan),
    ]


def fusion_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """Hand-written kernels for what is left around the layers (CPU targets only)."""
    return [
        RewriteKwta(target),  # after Sparsify: AnalyzeLayers reads the k-WTA pattern
        FuseAttention(target),  # softmax(Q K^T + mask) V per head: one kernel
        FuseAddLayerNorm(target),  # residual add + layer norm: one pass over each row
        FuseChannelLayerNorm(target),  # permute -> layer norm -> permute back: over axis 1
        FuseProjection(target),  # relu(conv3(x2) + downsample(x0)): one two-input sparse conv
        FuseResidual(target),  # relu(conv + shortcut): the add in the conv's epilogue
        FuseConvPool(target),  # max_pool(stem conv): the pool over each band of rows in L2
        FuseRecurrentCell(target),  # an LSTM step (product, gates, state update): one kernel
        RewriteRowReductions(target),  # global average pooling: a vector sum per channel
        SeparablePool(target),  # max / average pooling: a row stage, then a column stage
        FuseConcatProducers(target),  # concat(kernels): each writes its slice, no copy
        FuseConcatAffine(target),  # relu(BN(concat(xs))): one copy per input, no select chain
    ]


def legalize_passes() -> list[tvm.transform.Pass]:
    return [
        relax.transform.LegalizeOps(float_extrema_legalizations()),  # max over -inf: -inf
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]


def schedule_passes(
    target: tvm.target.Target, records_dir: str | None = None
) -> list[tvm.transform.Pass]:
    passes = [DedupeKernels()]  # before scheduling: each distinct leftover scheduled once too
    if records_dir is not None:
        # MetaSchedule's JSON database in records_dir (database_{workload,tuning_record}.json)
        passes.append(relax.transform.MetaScheduleApplyDatabase(work_dir=records_dir))
    rules = cpu_leftover_rules() if is_cpu(target) else gpu_leftover_rules()
    passes.append(dl.ApplyDefaultSchedule(*rules))
    return passes


def lower_passes(
    target: tvm.target.Target, options: SparsifyOptions | None = None
) -> list[tvm.transform.Pass]:
    if is_cpu(target):
        # TVM 0.27's cpu_generic/__init__ does not export dataflow_lower_passes, so the generic
        # relax.pipeline.dataflow_lower_passes(llvm) raises AttributeError: use the module itself.
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        passes = cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        if one_core.applies(target):
            passes.append(one_core.SerialOnOneCore(target))
        if (options or SparsifyOptions()).flush_denormals and flush_denormals.applies(target):
            passes.append(flush_denormals.FlushDenormals(target))
        return passes
    from tvm.relax.backend.cuda import pipeline as cuda  # same export gap as cpu_generic

    return cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)


def _phase(name: str, passes: list[tvm.transform.Pass]) -> tvm.transform.Pass:
    """The passes of one phase, its wall time recorded for the compile-time report."""
    return timed(name, tvm.transform.Sequential(passes, name=f"tvm_sparse.{name}"))


def pre_schedule_passes(
    target: tvm.target.Target, options: SparsifyOptions | None = None
) -> list[tvm.transform.Pass]:
    """Phases 1-4. Tuning extracts its MetaSchedule tasks from exactly this module, so that the
    workloads it records match the ones compile looks up."""
    return [
        _phase("Canonicalize", canonicalize_passes()),
        _phase("Sparsify", sparsify_passes(target, options)),
        _phase("FuseKernels", fusion_passes(target)),
        _phase(
            "Legalize",
            [
                CheckTakeIndices(target),  # run-time gather indices: out of range raises
                *tvm_pipeline.library_dispatch_passes(target),
                *legalize_passes(),
            ],
        ),
    ]


def build_pipeline(
    target: tvm.target.Target | None = None,
    options: SparsifyOptions | None = None,
    records_dir: str | None = None,
) -> tvm.transform.Pass:
    """The full Relax pipeline; ``target`` defaults to the one ``tvm.compile`` enters. Each run
    builds its passes afresh, so one pipeline object compiles any number of modules."""

    @tvm.transform.module_pass(opt_level=0, name="tvm_sparse.Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=False)
        if is_cpu(tgt):  # exp / erf / tanh as vector polynomials in every kernel, not libm
            install_llvm_lowering()
        with tgt:
            phases = [
                *pre_schedule_passes(tgt, options),
                _phase("Schedule", schedule_passes(tgt, records_dir)),
                _phase("Lower", lower_passes(tgt, options)),
            ]
            return tvm.transform.Sequential(phases, name="tvm_sparse")(mod)

    return _pipeline
