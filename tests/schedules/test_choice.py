"""Per-layer kernel choice: dense is always a candidate, measured timings decide, and a sparse
kernel must beat dense by MEASURE_MARGIN."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.ir.layers import LINEAR, LayerSpec
from tvm_sparse.schedules import candidate_run, measure_cache
from tvm_sparse.schedules import choice as choose_kernels
from tvm_sparse.schedules.cost_model import MEASURE_MARGIN


def _linear(density: float, rows: int = 1, n: int = 256, k: int = 256, input_density=None):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((n, k)) * (rng.random((n, k)) < density)).astype(np.float32)
    return LayerSpec(
        index=0,
        kind=LINEAR,
        x_shape=(rows, k),
        out_shape=(rows, n),
        weight=w,
        bias=None,
        activation=None,
        x_var=None,
        tail_var=None,
        name="fc",
        input_density=input_density,
    )


def test_dense_weight_keeps_dense_by_estimate(target):
    choice = choose_kernels.choose_layer(_linear(1.0), target, measure=False)
    assert choice.chosen == "dense"
    assert choice.kernel is not None and "dense" in choice.estimated_ms


def test_sparse_disabled_gives_dense(target):
    choice = choose_kernels.choose_layer(_linear(0.05), target, sparse=False, measure="auto")
    assert choice.chosen == "dense" and set(choice.estimated_ms) == {"dense"}


@pytest.mark.parametrize("density, input_density", [(0.05, None), (0.5, None), (0.1, 0.1)])
def test_auto_picks_the_measured_fastest(target, density, input_density):
    layer = _linear(density, input_density=input_density)
    choice = choose_kernels.choose_layer(layer, target, measure="auto")
    measured = choice.measured_ms
    assert "dense" in measured
    fastest = min(measured, key=measured.get)
    if choice.chosen == "dense":  # dense was fastest, or no sparse kernel beat it by the margin
        assert fastest == "dense" or measured[fastest] > MEASURE_MARGIN * measured["dense"]
    else:
        assert choice.chosen == fastest
        assert measured[fastest] <= MEASURE_MARGIN * measured["dense"]


@pytest.mark.parametrize(
    "csr_ms, chosen", [(0.95, "dense"), (0.91, "dense"), (0.85, "csr"), (1.2, "dense")]
)
def test_a_sparse_kernel_must_beat_dense_by_the_margin(target, monkeypatch, csr_ms, chosen):
    """A near tie goes to dense: per-layer timings move ~10% and hot caches flatter sparse."""
    fake = {"dense": 1.0e-3, "csr": csr_ms * 1e-3}
    monkeypatch.setattr(
        choose_kernels,
        "_measure",
        lambda kernels, layer, target: choose_kernels.Measured({n: fake[n] for n in kernels}),
    )
    choice = choose_kernels.choose_layer(_linear(0.5, rows=8), target, measure=True)
    assert set(choice.measured_ms) == {"dense", "csr"}
    assert choice.chosen == chosen and choice.kernel is not None
    if chosen == "dense" and csr_ms < 1:
        assert "dense kept" in choice.reason and "csr" in choice.reason


def _in_process(monkeypatch, tmp_path):
    """Candidates compiled and timed in this process (so a test can swap the timer), with an
    empty timing cache."""
    monkeypatch.setenv("TVM_SPARSE_ISOLATE", "0")
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})


def test_candidates_are_timed_in_turns(target, monkeypatch, tmp_path):
    _in_process(monkeypatch, tmp_path)
    order = []
    real = candidate_run.kernel_timer

    def recording(call, *args, **kwargs):
        timer = real(call, *args, **kwargs)
        return lambda: (order.append(call.name), timer())[1]

    monkeypatch.setattr(candidate_run, "kernel_timer", recording)
    choose_kernels.choose_layer(_linear(0.1, rows=2, n=64, k=64), target, measure=True)
    per_round = len(order) // choose_kernels.MEASURE_ROUNDS
    rounds = [order[i : i + per_round] for i in range(0, len(order), per_round)]
    assert len(rounds) == choose_kernels.MEASURE_ROUNDS and per_round > 1
    assert all(sorted(r) == sorted(rounds[0]) for r in rounds)  # each kernel once a round
    assert rounds[1] != rounds[0]  # and the order rotates


@pytest.mark.parametrize("density, input_density", [(1.0, 0.5), (0.5, None)])
def test_estimates_keep_dense_where_sparse_measured_slower(target, density, input_density):
    """2048^2 at batch 1, measured: sparse-sparse over a dense weight and 50%-dense input ran 2.5x
    slower than dense, the CSR row kernel at 50% 1.4x slower; the estimate-only plan keeps dense."""
    layer = _linear(density, n=2048, k=2048, input_density=input_density)
    choice = choose_kernels.choose_layer(layer, target, measure=False)
    assert choice.chosen == "dense", choice.estimated_ms


def test_timings_are_cached(target, monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    calls = []
    real = choose_kernels.run_isolated

    def counting(kernels, *args, **kwargs):
        calls.extend(kernels)
        return real(kernels, *args, **kwargs)

    monkeypatch.setattr(choose_kernels, "run_isolated", counting)  # the worker does the timing
    layer = _linear(0.1, rows=2, n=64, k=64)
    first = choose_kernels.choose_layer(layer, target, measure=True)
    n_first = len(calls)
    assert n_first == len(first.measured_ms) > 1
    monkeypatch.setattr(measure_cache, "_MEMORY", {})  # a new process: only the file remains
    second = choose_kernels.choose_layer(layer, target, measure=True)
    assert len(calls) == n_first
    assert second.measured_ms == first.measured_ms
    assert (tmp_path / "measurements.json").exists()


def test_cached_timings_are_reused_only_with_their_group(target, monkeypatch, tmp_path):
    """A choice never compares a fresh timing with one cached from another spell of the machine:
    adding a candidate re-times the whole group."""
    from tvm_sparse.schedules.registry import candidates_for

    _in_process(monkeypatch, tmp_path)
    timed = []

    def fake_timer(call, *args, **kwargs):
        return lambda: (timed.append(call.name), 1e-3)[1]

    monkeypatch.setattr(candidate_run, "kernel_timer", fake_timer)
    layer = _linear(0.1, rows=2, n=64, k=64, input_density=0.5)  # dense, csr, sparse-sparse
    kernels = {c.name: c.build() for c in candidates_for(layer, target)}
    assert len(kernels) >= 3
    pair = dict(list(kernels.items())[:2])
    assert set(choose_kernels._measure(pair, layer, target).seconds) == set(pair)
    assert len(timed) == 2 * choose_kernels.MEASURE_ROUNDS
    timed.clear()
    assert set(choose_kernels._measure(pair, layer, target).seconds) == set(pair)
    assert timed == []  # the same group: cached
    choose_kernels._measure(kernels, layer, target)
    assert sorted(set(timed)) == sorted({k.name for k in kernels.values()})  # all re-timed

    # a kernel that failed to build is timed next time together with its group, not alone
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path / "second"))
    failing = next(iter(kernels))

    def failing_once(call, *args, **kwargs):
        if call is kernels[failing] and not failed:
            failed.append(1)
            raise RuntimeError("build failed")
        return fake_timer(call, *args, **kwargs)

    failed = []
    monkeypatch.setattr(candidate_run, "kernel_timer", failing_once)
    first = choose_kernels._measure(kernels, layer, target)
    assert failing not in first.seconds and "build failed" in first.dropped[failing]
    timed.clear()
    assert set(choose_kernels._measure(kernels, layer, target).seconds) == set(kernels)
    assert len(timed) == len(kernels) * choose_kernels.MEASURE_ROUNDS


def test_dense_weights_get_no_weight_sparse_candidates(target):
    """A CSR/BSR of a dense weight skips nothing: it is never offered, timing noise aside."""
    from tvm_sparse.schedules.registry import candidates_for

    names = [c.name for c in candidates_for(_linear(1.0, rows=8), target)]
    assert names == ["dense"]
    # sparse activations (k-WTA) still make sparse-sparse worth measuring
    names = [c.name for c in candidates_for(_linear(1.0, input_density=0.05), target)]
    assert names == ["dense", "sparse_sparse"]
    # ReLU's assumed half does not: sparse-sparse over dense weights is not offered at all
    assert [c.name for c in candidates_for(_linear(1.0, input_density=0.5), target)] == ["dense"]
    # sparse weights after a ReLU keep it
    names = [c.name for c in candidates_for(_linear(0.1, input_density=0.5), target)]
    assert "sparse_sparse" in names
