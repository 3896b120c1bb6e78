"""tvm_sparse.profile: every kernel a run calls is timed, in call order, once per call."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_sparse
from tvm_sparse import models
from tvm_sparse.profile import SYMBOL_WIDTH, Profile, _call_sites, profile


def test_profile_times_every_kernel_of_a_run():
    model = models.pruned_mlp(layers=3, hidden=64, density=0.2, batch=2)
    module = tvm_sparse.compile(model, "llvm", measure=False)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    prof = profile(module, [x], runs=5)
    kernels = [c for c in prof.calls if not c.builtin]
    # one kernel call per linear layer (layers of one shape may share a kernel: dedupe)
    assert sum(c.calls for c in kernels) == 3, prof.table()
    assert all(c.median_us > 0 for c in kernels)
    assert prof.kernel_us > 0 and prof.total_us > 0 and prof.instrumented_us > 0
    table = prof.table()
    assert all(c.symbol in table for c in kernels)
    assert prof.to_dict()["calls"][0]["symbol"] == prof.calls[0].symbol


def test_profile_rejects_bad_inputs_and_runs():
    module = tvm_sparse.compile(models.pruned_mlp(layers=1, hidden=16, density=0.5), "llvm",
                                measure=False)  # fmt: skip
    with pytest.raises(ValueError, match="runs"):
        profile(module, [np.zeros((1, 16), np.float32)], runs=0)
    with pytest.raises(tvm_sparse.RunInputError, match="expected 1 input"):
        profile(module, [], runs=1)


def test_call_sites_count_repeated_calls_and_keep_order():
    runs = [[("b", 2e-6), ("a", 1e-6), ("b", 4e-6)], [("b", 2e-6), ("a", 3e-6), ("b", 4e-6)]]
    sites = _call_sites(runs)
    assert [(s.symbol, s.calls) for s in sites] == [("b", 2), ("a", 1)]
    assert sites[0].median_us == pytest.approx(3.0) and sites[1].median_us == pytest.approx(2.0)
    assert Profile(calls=sites).kernel_us == pytest.approx(8.0)


def test_table_shortens_fused_kernel_names_and_to_dict_keeps_them():
    """TVM names a fused kernel after each op it holds (an unrolled LSTM's: 1,400 characters);
    the table keeps its head and tail, the JSON the whole name."""
    long = "fused_strided_slice52_reshape2_add" + "_expand_dims" * 100 + "_concatenate_squeeze"
    profile = Profile(calls=_call_sites([[(long, 2e-6), ("csr_linear_1", 1e-5)]]))
    lines = profile.table().splitlines()
    assert max(len(line) for line in lines[:-1]) <= SYMBOL_WIDTH + 36
    assert lines[2].startswith("fused_strided_slice52_reshape2_add")
    assert "...enate_squeeze" in lines[2]
    assert profile.to_dict()["calls"][0]["symbol"] == long
