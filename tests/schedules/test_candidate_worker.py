"""The candidate worker: an LLVM abort, a segfault or a hang in a candidate kills or stalls the
worker, never the compile; the candidate is dropped with the reason and a fresh worker goes on.

The aborting kernel is real TIR: an AArch64 intrinsic, which LLVM cannot select for an x86 target
("LLVM ERROR: Cannot select: intrinsic ..." and abort(), exit 134 in a plain process).
"""

from __future__ import annotations

import dataclasses
import logging
import platform

import numpy as np
import pytest
from tvm.script import tirx as T

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.ir.layers import LINEAR, LayerSpec
from tvm_sparse.schedules import choice, decision_reuse, isolation, measure_cache, registry
from tvm_sparse.schedules.candidate_run import run_candidates
from tvm_sparse.schedules.cost_model import MachineModel
from tvm_sparse.schedules.decision_reuse import reuse_timings
from tvm_sparse.schedules.kernel import KernelCall, finish
from tvm_sparse.schedules.kernels import CpuKernel
from tvm_sparse.schedules.kernels.cpu_csr import CsrLinear
from tvm_sparse.schedules.kernels.cpu_dense import DenseLinear

from ..conftest import assert_close, ort_run

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="the abort is an x86 LLVM's"
)


def _call(func, name: str, n: int = 4) -> KernelCall:
    return KernelCall(finish(func), name, (), (1, n))


def aborting_kernel(k: int = 4, n: int = 4) -> KernelCall:
    """Compiles to TIR fine; LLVM aborts when it generates x86 code for it."""

    @T.prim_func
    def func(x: T.Buffer((1, k), "float32"), y: T.Buffer((1, n), "float32")):
        xf = T.decl_buffer((k,), "float32", data=x.data)
        yf = T.decl_buffer((n,), "float32", data=y.data)
        yf[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
            "float32x4", "llvm.aarch64.neon.frecpe.v4f32", xf[T.ramp(0, 1, 4)]
        )

    return _call(func, "aborts", n)


def aborting_linear_kernel(k: int, n: int) -> KernelCall:
    """A whole-model-ready linear kernel (root block, batch 1) whose x86 codegen aborts LLVM:
    an AArch64 intrinsic (as in ``test_candidate_worker``)."""

    @T.prim_func(s_tir=True)
    def func(x: T.Buffer((1, k), "float32"), y: T.Buffer((1, n), "float32")):
        with T.sblock("abort"):
            xf = T.decl_buffer((k,), "float32", data=x.data)
            yf = T.decl_buffer((n,), "float32", data=y.data)
            yf[T.ramp(0, 1, 4)] = T.call_llvm_pure_intrin(
                "float32x4", "llvm.aarch64.neon.frecpe.v4f32", xf[T.ramp(0, 1, 4)]
            )

    return KernelCall(finish(func), "aborts", (), (1, n))


def segfaulting_kernel() -> KernelCall:
    """Compiles fine; writes 2 TiB past its output when run."""

    @T.prim_func
    def func(x: T.Buffer((1, 4), "float32"), y: T.Buffer((1, 4), "float32")):
        wild = T.decl_buffer((T.int64(1) << T.int64(42),), "float32", data=y.data)
        wild[T.int64(1) << T.int64(41)] = x[0, 0]

    return _call(func, "segfaults")


def hanging_kernel() -> KernelCall:
    """Compiles fine; runs for ages (a 2^60-step loop LLVM cannot remove: it stores each step)."""

    @T.prim_func
    def func(x: T.Buffer((1, 4), "float32"), y: T.Buffer((1, 4), "float32")):
        for i in range(T.int64(1) << T.int64(60)):
            y[0, T.Cast("int32", i % T.int64(4))] = y[0, 0] * x[0, 0] + T.float32(1)

    return _call(func, "hangs")


def copy_kernel() -> KernelCall:
    @T.prim_func
    def func(x: T.Buffer((1, 4), "float32"), y: T.Buffer((1, 4), "float32")):
        for i in range(4):
            y[0, i] = x[0, i]

    return _call(func, "copies")


X = np.arange(4, dtype=np.float32).reshape(1, 4)


@pytest.mark.slow
def test_an_abort_a_segfault_and_a_hang_kill_only_the_worker(target):
    runner = isolation.WorkerRunner()
    try:
        assert runner.run({"copies": copy_kernel()}, target, X, rounds=1)["copies"].ok
        assert runner.starts == 1
        runner.timeout_s = 3.0  # the worker is up: each step now gets 3 s
        calls = {"aborts": aborting_kernel(), "segfaults": segfaulting_kernel()}
        calls.update(hangs=hanging_kernel(), copies=copy_kernel())
        out = runner.run(calls, target, X, rounds=2)
        error = out["aborts"].error
        assert error.startswith("crashed the compiler (signal 6 SIGABRT: LLVM ERROR: Cannot select")
        assert out["segfaults"].error.startswith("crashed running (signal 11 SIGSEGV")
        assert out["hangs"].error == "timed out after 3 s running it"
        assert out["copies"].ok and len(out["copies"].samples) == 2  # timed in the last worker
        assert runner.starts == 4  # a fresh worker after each of the three
        assert runner.run({"copies": copy_kernel()}, target, None, 0)["copies"].ok
        assert runner.starts == 4  # and the last one is kept
    finally:
        runner.close()


def test_in_process_run_reports_failures_without_raising(target):
    """The opt-out path (``TVM_SPARSE_ISOLATE=0``) runs the same code: a Python error in one
    candidate is that candidate's outcome."""
    broken = KernelCall(None, "broken", (), (1, 4))  # no PrimFunc at all
    out = run_candidates({"copies": copy_kernel(), "broken": broken}, target, X, rounds=3)
    assert len(out["copies"].samples) == 3
    assert out["broken"].error.startswith("failed to build: AttributeError")


# --- the choice and a whole compile ------------------------------------------------------------


class AbortingLinear(CpuKernel):
    """A candidate that aborts LLVM, estimated fastest so the choice always measures it."""

    name = "aborts"

    def estimate(self, layer, target, machine: MachineModel) -> float:
        return 1e-9

    def build(self, layer: LayerSpec, target, **knobs) -> KernelCall:
        n, k = layer.weight.shape
        return aborting_kernel(k, n)


class RaisingLinear(CpuKernel):
    name = "raises"

    def estimate(self, layer, target, machine: MachineModel) -> float:
        return 2e-9

    def build(self, layer: LayerSpec, target, **knobs) -> KernelCall:
        raise ValueError("this family builds nothing")


@pytest.fixture
def broken_families(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    families = (*registry.FAMILIES, AbortingLinear(), RaisingLinear())
    monkeypatch.setattr(registry, "FAMILIES", families)


def test_a_model_with_an_aborting_candidate_is_exact(broken_families, tmp_path, caplog):
    model = models.pruned_mlp(layers=2, hidden=64, density=0.2, batch=2)
    path = models.save(model, tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    worker = isolation.shared_worker()
    starts = worker.starts
    with caplog.at_level(logging.INFO, logger="tvm_sparse"):
        compiled = tvm_sparse.compile(path, "llvm")  # the default: measured, in turns
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert [p.split(" layer ")[0] for p in progress] == ["[1/2]", "[2/2]"]
    assert_close(compiled.run(x), ort_run(path, x))
    report = compiled.report
    assert len(report.layers) == 2
    for row in report.layers:
        assert "candidate aborts crashed the compiler (signal 6 SIGABRT: LLVM ERROR" in row.reason
        assert "candidate raises failed to build: ValueError" in row.reason
        assert row.chosen not in ("aborts", "raises", "tvm")
        assert "dense" in row.measured_ms  # every layer still measured, after each crash
    assert worker.starts >= starts + 2  # one fresh worker after each layer's abort
    assert sum("candidate aborts crashed the compiler" in n for n in report.notes) == 2


def test_the_estimate_path_checks_its_kernel_in_the_worker(broken_families, target):
    """measure=False never times anything: the kernel it picks (the aborting one, estimated
    fastest) is compiled in the worker first, dropped, and dense taken instead."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((16, 16)) * (rng.random((16, 16)) < 0.2)).astype(np.float32)
    layer = LayerSpec(0, LINEAR, (1, 16), (1, 16), w, None, None, None, None, name="fc")
    picked = choice.choose_layer(layer, target, measure=False)
    assert picked.chosen == "dense" and picked.kernel is not None
    assert set(picked.dropped) == {"aborts"}
    assert "candidate aborts crashed the compiler" in picked.reason


def test_identical_layers_reuse_the_first_measured_decision(target, monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    rng = np.random.default_rng(2)

    def layer(name, per_row=6):
        """``per_row`` non-zeros in every row, at random columns: same statistics, other weights."""
        w = np.zeros((64, 64), np.float32)
        for row in w:
            row[rng.choice(64, per_row, replace=False)] = rng.standard_normal(per_row)
        return LayerSpec(0, LINEAR, (2, 64), (2, 64), w, None, "relu", None, None, name=name)

    timed = []
    real = choice.run_isolated

    def recording(calls, *args):
        timed.append(set(calls))
        return real(calls, *args)

    monkeypatch.setattr(choice, "run_isolated", recording)
    with reuse_timings():
        first = choice.choose_layer(layer("a"), target)
        second = choice.choose_layer(layer("b"), target)  # other weights, same statistics
        third = choice.choose_layer(layer("c", per_row=19), target)  # denser: timed
    assert first.reused_from is None and second.reused_from == "a" and third.reused_from is None
    assert second.chosen == first.chosen and "timing reused from a" in second.reason
    assert second.kernel is not None and second.kernel is not first.kernel
    assert len([t for t in timed if len(t) > 1]) == 2  # a and c timed as groups, b not
    # outside reuse_timings (another compile), nothing is reused
    assert choice.choose_layer(layer("d"), target).reused_from is None


class FlakyLinear(CpuKernel):
    """CSR, except on the third layer, where its kernel aborts LLVM."""

    name = "flaky"

    def estimate(self, layer, target, machine: MachineModel) -> float:
        return 1e-9

    def build(self, layer: LayerSpec, target, **knobs) -> KernelCall:
        if layer.index == 2:
            n, k = layer.weight.shape
            return aborting_linear_kernel(k, n)
        return CsrLinear().build(layer, target)


def test_a_reused_kernel_that_fails_its_check_gets_its_layer_measured(monkeypatch, tmp_path):
    """Layers 1 and 2 are alike: 2 reuses 1's choice (flaky), whose kernel for 2 aborts LLVM.
    The forked final build dies of it; the recompile checks every kernel, so 2's reused kernel
    fails its background compile check, and the pass measures layer 2, drops flaky, keeps
    dense."""
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    monkeypatch.setattr(registry, "FAMILIES", (DenseLinear(), FlakyLinear()))
    monkeypatch.setattr(decision_reuse, "stats_close", lambda a, b: True)
    real = choice.run_isolated

    def dense_slow(calls, *args):
        """CSR at 5% density beats dense by far, but not on a loaded machine every time: the
        choice this test needs is made certain, the crash handling it checks stays real."""
        outcomes = real(calls, *args)
        if "dense" in outcomes and outcomes["dense"].samples:
            slow = tuple(1e3 * t for t in outcomes["dense"].samples)
            outcomes["dense"] = dataclasses.replace(outcomes["dense"], samples=slow)
        return outcomes

    monkeypatch.setattr(choice, "run_isolated", dense_slow)
    model = models.pruned_mlp(layers=4, hidden=512, density=0.05)
    path = models.save(model, tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    compiled = tvm_sparse.compile(path, "llvm")
    assert_close(compiled.run(x), ort_run(path, x))
    rows = compiled.report.layers
    assert rows[1].chosen == "flaky"
    assert rows[2].chosen == "dense" and "timing reused" not in rows[2].reason
    assert "candidate flaky crashed the compiler (signal 6 SIGABRT" in rows[2].reason


def test_a_gelu_epilogue_compiles_in_the_worker(target):
    """The worker lowers erf / exp to the same vector polynomials as the compiling process;
    without them a GELU-fused sparse candidate failed there ("unknown intrinsic tirx.erf") and
    every BERT feed-forward layer lost its sparse kernels."""
    from tvm_sparse.schedules.sparse_x86 import csr_linear

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((32, 48)) * (rng.random((32, 48)) < 0.2)).astype(np.float32)
    call = csr_linear(64, weight, None, activation="gelu", target=target)
    runner = isolation.WorkerRunner()
    try:
        out = runner.run({"gelu": call}, target, rng.standard_normal((64, 48)).astype("f4"), 1)
    finally:
        runner.close()
    assert out["gelu"].ok, out["gelu"].error
