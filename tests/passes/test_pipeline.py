"""The sparsify passes one by one (each adds its part of the module's report), their guard
against being run apart, and the report read the same way through ``compile`` and the plugin."""

from __future__ import annotations

import pytest
import tvm
from tvm import relax

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.ir.relax_utils import iter_bindings, op_name
from tvm_sparse.passes.canonicalize import canonicalize
from tvm_sparse.passes.module_report import capture_report, read_report
from tvm_sparse.passes.pipeline import SparsifyOptions, sparsify_passes

# TVM's FFI hands a pass's exception (TvmSparseError here) back as a RuntimeError with its message
PASS_ERROR = RuntimeError
# batch 64: every layer csr, and the three chained in the tile layout (see test_chain_layouts)
MLP = {"layers": 3, "hidden": 256, "density": 0.1, "batch": 64}


def _canonical_mlp():
    imported = import_model(models.pruned_mlp(**MLP))
    options = SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)
    return canonicalize(imported.mod), options


def _ops(mod: tvm.IRModule) -> list[str]:
    return [op_name(b.value) for b in iter_bindings(mod["main"])]


def test_each_sparsify_pass_adds_its_part_of_the_report(target):
    mod, options = _canonical_mlp()
    analyze, choose, chain, rewrite = sparsify_passes(target, options)
    with target:
        analyzed = analyze(mod)
        rows = read_report(analyzed).layers
        assert [row.name for row in rows] == [name for name, _op in options.layer_names]
        assert [row.reason for row in rows] == [""] * 3
        assert analyzed["main"].same_as(mod["main"])

        chosen = choose(analyzed)
        rows = read_report(chosen).layers
        assert [row.chosen for row in rows] == ["csr"] * 3
        assert all(row.reason.startswith("estimated") for row in rows)
        # the one note ChooseKernels adds: what skipping zero weights means for NaN (README)
        assert all(r.reason.count(";") == 1 and "skips zero weights" in r.reason for r in rows)

        chained = chain(chosen)
        first, middle, last = (row.reason for row in read_report(chained).layers)
        assert first.endswith("output stays transposed for the next layer")
        assert middle.endswith("input and output stay transposed")
        assert last.endswith("reads the previous layer's transposed output")

        rewritten = rewrite(chained)
    assert "relax.matmul" in _ops(chained) and "relax.matmul" not in _ops(rewritten)
    assert read_report(rewritten) == read_report(chained)
    assert read_report(rewritten).target == "llvm"


def test_a_pass_run_without_analyze_layers_says_so(target):
    mod, options = _canonical_mlp()
    _analyze, choose, _chain, _rewrite = sparsify_passes(target, options)
    with target, pytest.raises(PASS_ERROR, match="ChooseKernels.*AnalyzeLayers"):
        choose(mod)


def test_a_plan_does_not_apply_to_another_module(target):
    mod, options = _canonical_mlp()
    analyze, choose, _chain, _rewrite = sparsify_passes(target, options)
    other, _ = _canonical_mlp()
    with target:
        analyze(mod)
        with pytest.raises(PASS_ERROR, match="ChooseKernels"):
            choose(other)


def test_plugin_and_compile_read_the_same_report(target):
    model = models.pruned_mlp(**MLP)
    compiled = tvm_sparse.compile(model, target, measure=False)
    with capture_report() as captured:
        pipeline = relax.get_pipeline("sparse", measure=False)
        tvm.compile(import_model(model).mod, target, relax_pipeline=pipeline)
    plugin = captured.report
    assert len(plugin.layers) == len(compiled.report.layers) == MLP["layers"]
    for mine, theirs in zip(plugin.layers, compiled.report.layers):
        mine.name = theirs.name  # the plugin gets no ONNX node names: linear0, linear1, ...
        assert mine == theirs
    assert plugin.target == compiled.report.target == "llvm"
