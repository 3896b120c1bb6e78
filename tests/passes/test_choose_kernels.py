"""Per-layer kernel choice: dense is always a candidate and measured timings decide."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.passes import choose_kernels, measure_cache
from tvm_sparse.passes.layers import LINEAR, LayerSpec


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
    assert "dense" in choice.measured_ms
    assert choice.chosen == min(choice.measured_ms, key=choice.measured_ms.get)
    assert choice.measured_ms[choice.chosen] <= choice.measured_ms["dense"]


def test_timings_are_cached(target, monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_SPARSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    calls = []
    real = choose_kernels.time_kernel

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(choose_kernels, "time_kernel", counting)
    layer = _linear(0.1, rows=2, n=64, k=64)
    first = choose_kernels.choose_layer(layer, target, measure=True)
    n_first = len(calls)
    assert n_first == len(first.measured_ms) > 1
    monkeypatch.setattr(measure_cache, "_MEMORY", {})  # a new process: only the file remains
    second = choose_kernels.choose_layer(layer, target, measure=True)
    assert len(calls) == n_first
    assert second.measured_ms == first.measured_ms
    assert (tmp_path / "measurements.json").exists()


def test_sample_input_follows_density():
    x = choose_kernels._sample_input(_linear(0.1, rows=64, input_density=0.1))
    assert 0.05 < np.count_nonzero(x) / x.size < 0.15


def test_dense_weights_get_no_weight_sparse_candidates(target):
    """A CSR/BSR of a dense weight skips nothing: it is never offered, timing noise aside."""
    from tvm_sparse.schedules.registry import candidates_for

    names = [c.name for c in candidates_for(_linear(1.0, rows=8), target)]
    assert names == ["dense"]
    # sparse activations still make sparse-sparse worth measuring
    names = [c.name for c in candidates_for(_linear(1.0, input_density=0.05), target)]
    assert names == ["dense", "sparse_sparse"]
