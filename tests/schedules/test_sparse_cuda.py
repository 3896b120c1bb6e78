"""CUDA sparse kernels: they compile (TVM codegen + nvcc) here; numerics need a GPU.

TVM 0.27 without ``libcuda`` keeps the CUDA module as source (no nvcc/NVRTC call at
``tvm.compile``), so the compile tests run ``nvcc`` on that source themselves. The numerical tests
run only where ``tvm.cuda(0).exist``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.formats.bsr import BSR
from tvm_sparse.schedules import sparse_cuda as sc

from .cuda_support import cuda_source, needs_gpu, needs_nvcc, nvcc_compile, reference, run_gpu
from .cuda_support import weight as _weight

# --------------------------------------------------------------------------- packing (CPU)


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (2, 4), (3, 3)])
def test_block_strips_hold_every_value(block):
    w = _weight(37, 29, 0.2, seed=1)
    bsr = BSR.from_dense(w, block)
    strips = sc.pack_block_strips(bsr)
    r, c = bsr.block
    dense = np.zeros((-(-37 // r) * r, -(-29 // c) * c), np.float32)
    ptr = bsr.indptr.astype(np.int64)
    for ib in range(len(ptr) - 1):
        lo, nb = ptr[ib], ptr[ib + 1] - ptr[ib]
        for t in range(nb):
            col = int(bsr.indices[lo + t]) * c
            for a in range(r):
                start = lo * r * c + a * nb * c + t * c
                dense[ib * r + a, col : col + c] = strips[start : start + c]
    np.testing.assert_array_equal(dense[:37, :29], w)


def test_gpu_scatter_tables_rebuild_the_weight():
    w = _weight(50, 40, 0.15, seed=2)
    tab = sc.gpu_scatter_tables(sc.ComplementaryPacked.from_dense(w))
    g = tab.groups
    acc = np.zeros((tab.n_in, tab.acc_size), np.float32)  # acc[k, owner] = value
    for kk in range(tab.n_in):
        for s in range(g):
            acc[kk, tab.owner[kk * g + s]] += tab.values[kk * g + s]
        for rr in range(tab.res_ptr[kk], tab.res_ptr[kk + 1]):
            acc[kk, tab.res_owner[rr]] += tab.res_values[rr]
    np.testing.assert_array_equal(acc[:, :50].T, w)
    assert np.all(acc[:, 50:] == 0)  # dummy slots only ever receive zeros


# --------------------------------------------------------------------------- compile (no GPU)

_BUILDS = {
    "csr_b1": (lambda w, b: sc.csr_linear(1, w, b, "relu"), ["__shfl_down_sync"]),
    "csr_b3": (lambda w, b: sc.csr_linear(3, w, None), ["__shfl_down_sync"]),
    "csr_b16": (lambda w, b: sc.csr_linear(16, w, b, "gelu"), ["__shared__", "__syncthreads"]),
    "bsr_b1": (lambda w, b: sc.bsr_linear(1, w, (4, 1), b), ["__shfl_down_sync"]),
    "bsr_b8": (lambda w, b: sc.bsr_linear(8, w, (4, 4), None, "relu"), ["__shared__"]),
    "bsr_b2_silu": (lambda w, b: sc.bsr_linear(2, w, (4, 1), b, "silu"), ["__shfl_down_sync"]),
    "csr_b1_hardswish": (lambda w, b: sc.csr_linear(1, w, b, "hardswish"), ["__shfl_down_sync"]),
    "bsr_b8_hardsigmoid": (
        lambda w, b: sc.bsr_linear(8, w, (4, 4), b, "hardsigmoid"),
        ["__shared__"],
    ),
    "ss_hardswish": (
        lambda w, b: sc.sparse_sparse_linear(1, w, b, "hardswish"),
        ["atomicAdd", "__shared__"],
    ),
    "ss_shared": (
        lambda w, b: sc.sparse_sparse_linear(1, w, b, "relu"),
        ["atomicAdd", "__shared__", "__syncthreads"],
    ),
    "ss_global": (
        lambda w, b: sc.sparse_sparse_linear(2, w, None, shared_acc=False),
        ["atomicAdd"],
    ),
}


@needs_nvcc
@pytest.mark.parametrize("name", sorted(_BUILDS))
def test_kernel_compiles_for_cuda(name):
    build, markers = _BUILDS[name]
    w = _weight(96, 80, 0.1)
    call = build(w, np.linspace(-1, 1, 96).astype(np.float32))
    assert call.func.attrs["tirx.is_scheduled"]
    src = cuda_source(call)
    for marker in markers:
        assert marker in src, f"{marker} missing from the {name} kernel"
    assert "y_ptr[" in src  # the output store survived codegen (see sparse_cuda doc)
    assert len(nvcc_compile(src)) > 0


def test_bad_knobs_are_rejected():
    w = _weight(16, 16, 0.3)
    with pytest.raises(ValueError, match="batch_tile"):
        sc.csr_linear(8, w, batch_tile=3)
    with pytest.raises(ValueError, match="activation"):
        sc.csr_linear(1, w, activation="tanh")
    with pytest.raises(ValueError, match="shared memory"):
        sc.sparse_sparse_linear(1, _weight(12000, 8, 0.5), shared_acc=True)


# --------------------------------------------------------------------------- numerics (GPU)


@needs_gpu
@pytest.mark.parametrize("m", [1, 3, 8, 33])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5])
@pytest.mark.parametrize("kind", ["csr", "bsr4x1", "bsr2x4"])
def test_sparse_dense_matches_numpy(kind, m, density):
    n, k = 130, 97  # not multiples of blocks, warps or tiles
    w = _weight(n, k, density, seed=m)
    bias = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    x = np.random.default_rng(4).standard_normal((m, k)).astype(np.float32)
    if kind == "csr":
        call = sc.csr_linear(m, w, bias, "relu")
    else:
        r, c = int(kind[3]), int(kind[5])
        call = sc.bsr_linear(m, w, (r, c), bias, "relu")
    np.testing.assert_allclose(run_gpu(call, x), reference(x, w, bias, "relu"), atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("shared_acc", [True, False])
@pytest.mark.parametrize("x_density", [0.0, 0.1, 1.0])
def test_sparse_sparse_matches_numpy(m, shared_acc, x_density):
    n, k = 300, 1100  # several input chunks per sample
    w = _weight(n, k, 0.05, seed=5)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((m, k)).astype(np.float32) * (rng.random((m, k)) < x_density)
    call = sc.sparse_sparse_linear(m, w, None, None, shared_acc=shared_acc)
    np.testing.assert_allclose(run_gpu(call, x), reference(x, w, None, None), atol=1e-4)
