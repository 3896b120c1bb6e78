"""The symbolic-row linear kernels: one build serves every row count; checked against float64
numpy at row counts that hit the full row blocks, the single-row tail and both together."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse.schedules.dynamic_linear_x86 import csr_linear_dynamic, dense_linear_dynamic
from tvm_sparse.target import resolve_target

from .reference import linear_ref, sparse_weight

TARGET = resolve_target("llvm")
AVX2 = resolve_target({"kind": "llvm", "mcpu": "haswell"})


def _run_rows(call, x: np.ndarray, module) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros((x.shape[0], call.info["n"]), np.float32))
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(c) for c in call.consts] + [out]
    module["main"](*args)
    return out.numpy()


def _module(call, target):
    func = call.func.with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=target).jit()


@pytest.mark.parametrize("builder", [dense_linear_dynamic, csr_linear_dynamic])
@pytest.mark.parametrize(
    "n, k, density, activation",
    [(70, 33, 0.3, "relu"), (64, 16, 1.0, None), (5, 130, 0.05, "gelu"), (17, 9, 0.0, "relu6"),
     (1, 1, "one", None), (129, 40, 0.1, "relu")],
)  # fmt: skip
def test_one_build_is_exact_at_every_row_count(builder, n, k, density, activation):
    rng = np.random.default_rng(n * 1000 + k)
    w = sparse_weight(rng, (n, k), density)
    bias = rng.standard_normal(n).astype(np.float32)
    call = builder(w, bias, activation, TARGET)
    module = _module(call, TARGET)
    for rows in (1, 3, 4, 16, 17, 37):  # tails only, full 4-row / 16-row blocks, both
        x = rng.standard_normal((rows, k)).astype(np.float32)
        want = linear_ref(x, w, bias, activation)
        np.testing.assert_allclose(_run_rows(call, x, module), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("builder", [dense_linear_dynamic, csr_linear_dynamic])
def test_an_avx2_build_is_exact_too(builder):
    """The lanes come from the target: 8 on AVX2 (run here only when the CPU has AVX2)."""
    if not tvm.target.codegen.target_has_features(["avx2"], resolve_target("llvm")):
        pytest.skip("this CPU has no AVX2")
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (40, 24), 0.2)
    call = builder(w, None, "relu", AVX2)
    module = _module(call, AVX2)
    for rows in (1, 9, 21):
        x = rng.standard_normal((rows, 24)).astype(np.float32)
        np.testing.assert_allclose(
            _run_rows(call, x, module), linear_ref(x, w, None, "relu"), rtol=1e-4, atol=1e-4
        )


def test_no_rows_is_an_empty_result():
    w = sparse_weight(np.random.default_rng(0), (8, 8), 0.5)
    for builder in (dense_linear_dynamic, csr_linear_dynamic):
        call = builder(w, None, None, TARGET)
        out = _run_rows(call, np.zeros((0, 8), np.float32), _module(call, TARGET))
        assert out.shape == (0, 8)
