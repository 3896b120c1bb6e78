"""End-to-end CUDA compile of a pruned MLP without a GPU (running it needs one).

``test_pipeline_phases_with_cuda_lowering`` runs the phases of ``passes/pipeline.py`` with the CUDA
lowering TVM 0.27 needs (``tvm.relax.backend.cuda.pipeline``; the generic
``relax.pipeline.dataflow_lower_passes`` raises AttributeError for cuda); the kernel registry
lists the CUDA families for a cuda target, and ``only`` narrows them to one to force it.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import tvm
from tvm.relax import pipeline as tvm_pipeline

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.frontend import import_model
from tvm_sparse.passes import pipeline as P
from tvm_sparse.passes.module_report import capture_report
from tvm_sparse.schedules import choice as choose_kernels
from tvm_sparse.schedules.cost_model import DEFAULT_MACHINE
from tvm_sparse.target import is_cuda, resolve_target


def _cuda_lower_passes(target):
    from tvm.relax.backend.cuda import pipeline as cuda

    return cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target)


def _compile_with_phases(model, monkeypatch, only: str | None = None):
    """The pipeline's phases with the CUDA fixes; ``only`` forces one candidate (by name)."""
    orig = choose_kernels.candidates_for

    def candidates(layer, target, sparse=True, machine=DEFAULT_MACHINE):
        if only == "sparse_sparse" and is_cuda(target):
            layer.input_density = 0.25  # pretend the input is known to be sparse
        cands = orig(layer, target, sparse, machine)
        return [c for c in cands if c.name == only] if only else cands

    monkeypatch.setattr(choose_kernels, "candidates_for", candidates)
    tgt = resolve_target("cuda")
    imported = import_model(model, None)
    options = P.SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)

    @tvm.transform.module_pass(opt_level=0, name="test.CudaPipeline")
    def pipeline(mod, _ctx):
        with tgt:
            phases = [
                *P.canonicalize_passes(),
                *P.sparsify_passes(tgt, options),
                *tvm_pipeline.library_dispatch_passes(tgt),
                *P.legalize_passes(),
                *P.schedule_passes(tgt, None),
                *_cuda_lower_passes(tgt),
            ]
            return tvm.transform.Sequential(phases)(mod)

    with capture_report() as captured:
        executable = tvm.compile(imported.mod, target=tgt, relax_pipeline=pipeline)
    return executable, captured.report.layers


@pytest.mark.parametrize("only", [None, "csr", "sparse_sparse"])
def test_pipeline_phases_with_cuda_lowering(tmp_path, monkeypatch, only):
    model = models.pruned_mlp(layers=2, hidden=256, density=0.1)
    ex, layers = _compile_with_phases(model, monkeypatch, only)
    if only:
        assert [row.chosen for row in layers] == [only, only], [row.reason for row in layers]
    path = tmp_path / "mlp_cuda.so"
    ex.export_library(str(path))
    assert path.stat().st_size > 0


def test_public_compile_for_cuda(tmp_path):
    model = models.pruned_mlp(layers=2, hidden=256, density=0.1)
    compiled = tvm_sparse.compile(model, "cuda")
    assert [row.chosen for row in compiled.report.layers]
    path = tmp_path / "mlp_cuda.so"
    compiled.export(str(path))
    assert path.stat().st_size > 0
    if not tvm.cuda(0).exist:
        x = np.zeros((1, 256), np.float32)
        with pytest.raises(tvm_sparse.RunInputError, match="no cuda"):
            compiled.run(x)


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("only", [None, "csr"])
def test_cuda_module_runs(monkeypatch, only):
    if importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    model = models.pruned_mlp(layers=2, hidden=256, density=0.1)
    ex, _ = _compile_with_phases(model, monkeypatch, only)
    cpu = tvm_sparse.compile(model, "llvm")
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    vm = tvm.relax.VirtualMachine(ex, tvm.cuda(0))
    got = vm["main"](tvm.runtime.tensor(x, tvm.cuda(0)))
    want = cpu.run(x)
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_cuda_target_takes_its_arch_from_the_flag_or_the_gpu(monkeypatch):
    from tvm_sparse import target as target_mod

    assert str(resolve_target("cuda -arch=sm_80").attrs["arch"]) == "sm_80"
    monkeypatch.setattr(target_mod, "present_cuda_arch", lambda: "sm_86")
    assert str(resolve_target("cuda").attrs["arch"]) == "sm_86"
    monkeypatch.setattr(target_mod, "present_cuda_arch", lambda: None)
    assert str(resolve_target("cuda").attrs["arch"]) == "sm_90"
    with pytest.raises(tvm_sparse.TargetError, match="-arch=sm_XY"):
        resolve_target("cuda -arch=ampere")


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("batch", [1, 32])
def test_cuda_choice_is_measured_on_the_gpu(batch):
    if importlib.util.find_spec("cuda.bindings") is None:
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    model = models.pruned_mlp(layers=2, hidden=1024, density=0.1, batch=batch)
    compiled = tvm_sparse.compile(model, "cuda")
    for row in compiled.report.layers:
        assert {"dense", "csr"} <= set(row.measured_ms), (row.chosen, row.reason)
        fastest = min(row.measured_ms, key=row.measured_ms.get)
        assert (
            row.chosen == ("tvm" if fastest == "dense" else fastest) or "dense kept" in row.reason
        )
    x = np.random.default_rng(0).standard_normal((batch, 1024)).astype(np.float32)
    want = tvm_sparse.compile(model, "llvm").run(x)
    np.testing.assert_allclose(compiled.run(x), want, rtol=1e-4, atol=1e-4)


def test_cuda_choice_without_a_gpu_is_estimated(monkeypatch):
    from tvm_sparse.schedules import choice

    monkeypatch.setattr(choice, "device_present", lambda target: False)
    compiled = tvm_sparse.compile(models.pruned_mlp(layers=2, hidden=256, density=0.1), "cuda")
    assert all(not row.measured_ms for row in compiled.report.layers)
