"""Kernels that split work across threads give the same bits on every run.

A race (two threads storing into each other's scratch) shows up as results that change from
run to run, which a single comparison against numpy can miss. Runs with TVM's thread pool at
the conftest's 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import build_kernel
from tvm_sparse.schedules.kwta_x86 import kwta_maxpool_kernel
from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d
from tvm_sparse.schedules.sparse_sparse_conv_x86 import sparse_sparse_conv2d
from tvm_sparse.schedules.sparse_sparse_x86 import sparse_sparse_linear
from tvm_sparse.schedules.sparse_x86 import csr_linear
from tvm_sparse.target import resolve_target

TARGET = resolve_target({"kind": "llvm", "num-cores": 2})
RUNS = 60


def _sparse(rng, shape, density):
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


def _kernels():
    rng = np.random.default_rng(0)
    w_conv = _sparse(rng, (4, 3, 3, 3), 0.5)
    yield (
        "sparse_conv_wide",
        sparse_conv2d(
            (2, 3, 7, 30),
            w_conv,
            None,
            ConvAttrs(padding=(1, 0, 2, 3), dilation=(2, 1)),
            None,
            TARGET,
        ),
        (2, 3, 7, 30),
        1.0,
    )
    yield (
        "sparse_conv_gsc",
        sparse_conv2d((2, 8, 14, 14), _sparse(rng, (8, 8, 5, 5), 0.2), None, target=TARGET),
        (2, 8, 14, 14),
        1.0,
    )
    w = _sparse(rng, (96, 80), 0.1)
    yield "csr_panel", csr_linear(16, w, None, "relu", TARGET), (16, 80), 1.0
    yield "sparse_sparse_linear", sparse_sparse_linear(4, w, None, None, TARGET), (4, 80), 0.2
    yield (
        "sparse_sparse_conv",
        sparse_sparse_conv2d((3, 8, 9, 9), _sparse(rng, (6, 8, 3, 3), 0.3), None, target=TARGET),
        (3, 8, 9, 9),
        0.2,
    )
    yield (
        "kwta_maxpool",
        kwta_maxpool_kernel((3, 4, 8, 8), (4, 8, 8), 20, (2, 2), target=TARGET),
        (3, 4, 8, 8),
        1.0,
    )


_CASES = list(_kernels())


@pytest.mark.parametrize("name, call, x_shape, density", _CASES, ids=[c[0] for c in _CASES])
def test_repeated_parallel_runs_are_identical(name, call, x_shape, density):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x *= rng.random(x_shape) < density
    module = build_kernel(call, TARGET)
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(c) for c in call.consts]
    first = None
    for _ in range(RUNS):
        out = tvm.runtime.tensor(np.full(call.out_shape, np.nan, np.float32))
        module["main"](*args, out)
        result = out.numpy()
        if first is None:
            first = result
            assert not np.isnan(first).any(), name
        else:
            np.testing.assert_array_equal(result, first, err_msg=name)
