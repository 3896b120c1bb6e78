"""The vector row reduction (global average pooling) against numpy, and the pass that picks
it: trailing-axes means and sums only."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from tvm_sparse.ir.relax_utils import iter_bindings, op_name
from tvm_sparse.passes.rewrite_row_reductions import RewriteRowReductions
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.row_reduce_x86 import row_reduce


@pytest.mark.parametrize("mean", [True, False])
@pytest.mark.parametrize(
    "shape, axes, keepdims",
    [
        ((1, 32, 112, 112), 2, True),  # EfficientNet's first squeeze-excitation pool
        ((2, 1152, 7, 7), 2, True),  # 49: no block of 64; 3 single vectors, a tail of 1
        ((2, 6, 117), 1, False),  # 1 block, 3 single vectors, a tail of 5
        ((1, 2048, 7, 7), 2, False),  # ResNet-50's head, flattened
        ((3, 5, 130), 1, True),  # 2 blocks + a tail of 2
        ((4, 9), 2, False),  # everything into one value
        ((1, 3, 1, 1), 2, True),  # one element a row
    ],
)
def test_row_reduce_matches_numpy(target, rng, shape, axes, keepdims, mean):
    reduced = tuple(range(len(shape) - axes, len(shape)))
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    ref = (np.mean if mean else np.sum)(x.astype(np.float64), axis=reduced, keepdims=keepdims)
    out_shape = ref.shape if ref.shape else (1,)
    call = row_reduce(shape, out_shape, axes, mean, target)
    y = run_kernel(call, target, x)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-5)


def test_bad_axes_are_rejected(target):
    with pytest.raises(ValueError, match="last 3 axes"):
        row_reduce((4, 5), (4,), 3, True, target)


@R.function
def _main(x: R.Tensor((1, 16, 14, 14), "float32")):
    with R.dataflow():
        pooled = R.mean(x, axis=[2, 3], keepdims=True)  # trailing: rewritten
        across = R.mean(x, axis=[1], keepdims=True)  # channels: left to TVM
        total = R.sum(x, axis=[-1], keepdims=False)  # trailing, negative axis
        tiny = R.mean(pooled, axis=[2, 3])  # a 1-element row: not worth a kernel
        R.output(pooled, across, total, tiny)
    return (pooled, across, total, tiny)


def test_only_trailing_axes_reductions_are_rewritten(target):
    mod = relax.transform.Normalize()(tvm.IRModule({"main": _main}))
    with target:
        out = RewriteRowReductions()(mod)
    ops = [op_name(b.value) for b in iter_bindings(out["main"])]
    assert ops.count("relax.call_tir") == 2
    assert ops.count("relax.mean") == 2  # across channels, and the 1-element one
    assert "relax.sum" not in ops
