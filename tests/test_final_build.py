"""The final build compiles the kernels in forked children: an LLVM abort there costs a
recompile with every kernel checked, never the user's process; a model's kernels are compiled
once, and export links the object files they were compiled into."""

from __future__ import annotations

import logging
import os
import platform

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse import final_build, models
from tvm_sparse.schedules import isolation, measure_cache, registry
from tvm_sparse.schedules.kernel import KernelCall, finish
from tvm_sparse.schedules.kernels import CpuKernel

from .conftest import ort_run
from .schedules.test_candidate_worker import aborting_linear_kernel


class AbortingLinear(CpuKernel):
    """Estimated fastest, so the estimate path picks it without timing it."""

    name = "aborts"

    def estimate(self, layer, target, machine) -> float:
        return 1e-9

    def build(self, layer, target, **knobs) -> KernelCall:
        n, k = layer.weight.shape
        return aborting_linear_kernel(k, n)


def unbuildable_linear_kernel(k: int, n: int) -> KernelCall:
    """A linear kernel whose TIR lowering raises: an index product that folds past int32 (the
    prefetch offset of a batch-64 implicit GEMM did so, 2026-12-06)."""

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((1, k), "float32"), y: T.Buffer((1, n), "float32")):
        with T.sblock("overflows"):
            yf = T.decl_buffer((n,), "float32", data=y.data)
            for t in range(2560):
                for j in range(1600):
                    yf[T.min((t % 1280 * 1600 + j) * 3200 // 2048000 * 16, n - 1)] = x[0, 0]

    return KernelCall(finish(func), "unbuildable", (), (1, n))


class UnbuildableLinear(AbortingLinear):
    name = "unbuildable"

    def build(self, layer, target, **knobs) -> KernelCall:
        n, k = layer.weight.shape
        return unbuildable_linear_kernel(k, n)


@pytest.fixture
def aborting_family(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, AbortingLinear()))


@pytest.fixture
def unbuildable_family(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, UnbuildableLinear()))


pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the forked build needs fork()")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86 LLVM abort")
def test_a_chosen_kernel_that_aborts_llvm_costs_a_recompile_not_the_process(
    aborting_family,
    tmp_path,
    caplog,
):
    """The estimate path checks nothing before the build: the aborting candidate (estimated
    fastest) is chosen, the forked build dies with it, and the checked recompile drops it."""
    model = models.pruned_mlp(layers=2, hidden=64, density=0.2, batch=1)
    path = models.save(model, tmp_path / "mlp.onnx")
    checks = []
    original = isolation.run_isolated

    def run_isolated(*args):
        checks.append(args)
        return original(*args)

    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.WARNING, "tvm_sparse"):
        mp.setattr(isolation, "run_isolated", run_isolated)
        compiled = tvm_sparse.compile(path, "llvm", measure=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("died by signal 6 SIGABRT: LLVM ERROR: Cannot select" in w for w in warnings)
    assert checks, "the recompile checks its kernels in the worker"
    for row in compiled.report.layers:
        assert row.chosen != "aborts" and "candidate aborts crashed the compiler" in row.reason
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(compiled.run(x), ort_run(path, x), rtol=1e-4, atol=1e-4)


def test_a_chosen_kernel_that_fails_to_build_costs_a_recompile_not_the_compile(
    unbuildable_family, tmp_path, caplog
):
    """A kernel whose lowering raises (no crash) in the final build: the checked recompile
    drops it, as it drops one that aborts LLVM."""
    model = models.pruned_mlp(layers=2, hidden=64, density=0.2, batch=1)
    path = models.save(model, tmp_path / "mlp.onnx")
    with caplog.at_level(logging.WARNING, "tvm_sparse"):
        compiled = tvm_sparse.compile(path, "llvm", measure=False)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("the build failed" in w and "exceeds range of int32" in w for w in warnings)
    for row in compiled.report.layers:
        assert row.chosen != "unbuildable" and "unbuildable failed to build" in row.reason
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_allclose(compiled.run(x), ort_run(path, x), rtol=1e-4, atol=1e-4)


def test_a_crash_in_what_tvm_lowers_itself_is_a_clear_error(monkeypatch):
    def crash(*_args):
        os.abort()

    monkeypatch.setattr(final_build, "_build_kernels", crash)
    with pytest.raises(tvm_sparse.TvmSparseError, match="code generator crashed.*SIGABRT"):
        tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=32), "llvm", measure=False)


def test_an_error_in_the_build_is_reported_with_tvms_message(monkeypatch):
    def fail(*_args):
        raise RuntimeError("first line\nInternalError: the check that failed")

    monkeypatch.setattr(final_build, "_build_kernels", fail)
    with pytest.raises(tvm_sparse.TvmSparseError, match="the check that failed"):
        tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=32), "llvm", measure=False)


def test_export_links_the_compiled_kernels_without_running_llvm_again(tmp_path, monkeypatch):
    compiled = tvm_sparse.compile(models.pruned_mlp(layers=2, hidden=64), "llvm", measure=False)

    def no_llvm(*_args, **_kwargs):
        raise AssertionError("export compiled a kernel again")

    monkeypatch.setattr(tvm.tirx, "build", no_llvm)
    exported = tmp_path / "m.so"
    compiled.export(exported)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_array_equal(tvm_sparse.load(exported).run(x), compiled.run(x))


def test_kernels_split_between_children_link_into_one_working_model(monkeypatch):
    """Children on two CPUs, each compiling a chunk of the kernels: the linked model is the
    in-process build's, bit for bit."""
    monkeypatch.setattr(final_build, "host_num_cores", lambda: 2)
    monkeypatch.setattr(final_build, "_MIN_KERNELS_PER_CHUNK", 1)  # a small model: one chunk
    model = models.pruned_mlp(layers=3, hidden=64)
    compiled = tvm_sparse.compile(model, "llvm", measure=False)
    objects = [f for f in os.listdir(compiled._library.directory.name) if f.endswith(".o")]
    assert sorted(objects) == [f"kernels{i}.o" for i in range(len(objects))]
    assert len(objects) >= 2
    monkeypatch.setenv("TVM_SPARSE_ISOLATE", "0")
    in_process = tvm_sparse.compile(model, "llvm", measure=False)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    np.testing.assert_array_equal(compiled.run(x), in_process.run(x))


def test_load_refuses_a_library_its_manifest_was_not_written_with(tmp_path):
    """Another model's .so beside this manifest would run with inputs, guards and a report that
    are not its own: the manifest's SHA-256 of the library says so."""
    small = tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=16), "llvm", measure=False)
    other = tvm_sparse.compile(models.pruned_mlp(layers=2, hidden=16), "llvm", measure=False)
    small.export(tmp_path / "a.so")
    other.export(tmp_path / "b.so")
    os.replace(tmp_path / "b.so", tmp_path / "a.so")
    with pytest.raises(tvm_sparse.ArtifactError, match="not the one .*a.json was written with"):
        tvm_sparse.load(tmp_path / "a.so")
