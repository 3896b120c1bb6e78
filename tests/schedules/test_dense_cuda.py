"""The dense CUDA baseline (TE + dlight): it compiles here (nvcc), numerics need a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.schedules import dense_cuda

from .cuda_support import cuda_source, needs_gpu, needs_nvcc, nvcc_compile, reference, run_gpu
from .cuda_support import weight as _weight


@needs_nvcc
def test_dense_compiles_for_cuda():
    w = _weight(96, 80, 0.1)
    call = dense_cuda.dense_linear(1, w, np.linspace(-1, 1, 96).astype(np.float32), "relu")
    assert call.func.attrs["tirx.is_scheduled"]
    assert len(nvcc_compile(cuda_source(call))) > 0


@needs_gpu
@pytest.mark.parametrize("m", [1, 16])
def test_dense_matches_numpy(m):
    w = _weight(64, 200, 1.0)
    x = np.random.default_rng(7).standard_normal((m, 200)).astype(np.float32)
    call = dense_cuda.dense_linear(m, w, None, None)
    np.testing.assert_allclose(run_gpu(call, x), reference(x, w, None, None), atol=1e-3)
