"""Where timed kernels find their weights: in the L3 for a model that fits half of it, else in
DRAM; the choice times every candidate so, and keeps the two kinds of timing apart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.schedules import candidate_run, kernel, measure_cache
from tvm_sparse.schedules import choice as choose_kernels
from tvm_sparse.schedules.weights_residency import (
    DRAM,
    L3,
    current_weights_in,
    model_working_set,
    weight_bytes,
    weights_in,
    weights_in_for,
)

from .test_choice import _in_process, _linear


def test_weight_bytes_count_csr_where_it_is_smaller():
    dense = np.ones((64, 64), np.float32)
    sparse = np.zeros((64, 64), np.float32)
    sparse[::8, ::4] = 1.0  # 128 non-zeros
    assert weight_bytes(dense) == dense.nbytes
    assert weight_bytes(sparse) == 8 * 128
    assert weight_bytes(np.zeros((4, 4), np.float32)) == 0


def test_the_working_set_counts_weights_and_activations():
    """ResNet-18's case: weights alone under half the L3, with its activations over it."""
    small = _linear(0.1, rows=2, n=64, k=32)
    assert model_working_set([small]) == weight_bytes(small.weight) + 4 * (2 * 32 + 2 * 64)
    big = dataclasses.replace(small, x_shape=(1024, 32), out_shape=(1024, 64))
    assert model_working_set([small, big]) == (
        model_working_set([small]) + weight_bytes(big.weight) + 4 * 1024 * 96
    )
    assert weights_in_for(model_working_set([small]), 1 << 19) == L3
    assert weights_in_for(model_working_set([small, big]), 1 << 19) == DRAM


@pytest.mark.parametrize(
    "weight_bytes, llc, where",
    [(1 << 20, 32 << 20, L3), (16 << 20, 32 << 20, L3), ((16 << 20) + 1, 32 << 20, DRAM),
     (1, 0, DRAM), ((16 << 20) + 1, 320 << 20, DRAM), (1 << 20, 320 << 20, L3)],
)  # fmt: skip
def test_weights_stay_in_l3_when_they_fit_half_of_it(weight_bytes, llc, where):
    """Half the L3, and of a server's shared L3 of hundreds of MiB no more than LLC_CAP's half."""
    assert weights_in_for(weight_bytes, llc) == where


def test_the_block_sets_where_weights_are_timed():
    assert current_weights_in() == DRAM
    with weights_in(L3):
        assert current_weights_in() == L3
        with weights_in(DRAM):
            assert current_weights_in() == DRAM
        assert current_weights_in() == L3
    assert current_weights_in() == DRAM
    with pytest.raises(ValueError, match="weights_in"), weights_in("l2"):
        pass


def test_each_place_has_its_hook():
    assert kernel.weights_preproc("hot") == ""
    assert kernel.weights_preproc("l3") == kernel.EVICT_PRIVATE_PREPROC
    assert kernel.weights_preproc("dram") == kernel.COLD_WEIGHTS_PREPROC
    with pytest.raises(ValueError, match="hot, l3 or dram"):
        kernel.weights_preproc("l2")


@pytest.mark.parametrize("where", [L3, DRAM])
def test_the_choice_times_candidates_with_the_weights_where_the_block_says(
    target, monkeypatch, tmp_path, where
):
    _in_process(monkeypatch, tmp_path)
    seen = []
    real = candidate_run.kernel_timer

    def recording(call, *args, **kwargs):
        seen.append(kwargs["weights_in"])
        return real(call, *args, **kwargs)

    monkeypatch.setattr(candidate_run, "kernel_timer", recording)
    with weights_in(where):
        choose_kernels.choose_layer(_linear(0.1, rows=2, n=64, k=64), target, measure=True)
    assert seen and set(seen) == {where}


def _places_timed(monkeypatch) -> list[str]:
    """Where each group of candidates the choice sends to the worker is timed, in order."""
    places = []
    real = choose_kernels.run_isolated

    def recording(kernels, *args, **kwargs):
        places.append(args[-1])
        return real(kernels, *args, **kwargs)

    monkeypatch.setattr(choose_kernels, "run_isolated", recording)
    return places


def test_timings_taken_in_l3_are_not_reused_for_dram(target, monkeypatch, tmp_path):
    _in_process(monkeypatch, tmp_path)
    layer = _linear(0.1, rows=2, n=64, k=64)
    timed = _places_timed(monkeypatch)
    with weights_in(L3):
        choose_kernels.choose_layer(layer, target, measure=True)
        choose_kernels.choose_layer(layer, target, measure=True)  # cached
    choose_kernels.choose_layer(layer, target, measure=True)  # DRAM: timed again
    assert timed == [L3, DRAM]


def test_a_small_model_is_timed_with_its_weights_in_l3(monkeypatch, tmp_path):
    """The compile decides once per model: a 2-layer MLP (tens of KB of weights and
    activations) fits any L3, so its candidates are timed with the weights there, and the
    report says so."""
    _in_process(monkeypatch, tmp_path)
    monkeypatch.setattr(
        "tvm_sparse.schedules.weights_residency.cache_bytes", lambda level: 32 << 20
    )
    seen = _places_timed(monkeypatch)
    model = models.pruned_mlp(layers=2, hidden=64, density=0.2, batch=1)
    path = models.save(model, tmp_path / "mlp.onnx")
    compiled = tvm_sparse.compile(path, "llvm", measure=True)
    assert seen and set(seen) == {L3}
    assert any("weights in the L3" in note for note in compiled.report.notes)
    monkeypatch.setattr(measure_cache, "_MEMORY", {})
    monkeypatch.setattr(
        "tvm_sparse.schedules.weights_residency.cache_bytes", lambda level: 16 << 10
    )
    seen.clear()
    compiled = tvm_sparse.compile(path, "llvm", measure=True)
    assert seen and set(seen) == {DRAM}
    assert not any("weights in the L3" in note for note in compiled.report.notes)
