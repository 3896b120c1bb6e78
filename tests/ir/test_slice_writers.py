"""write_into_slices: kernels merged into one, each writing its run of a shared output, equal
to running them apart and concatenating; runs that do not fit or start unaligned refused."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse.ir.slice_writers import slice_aligned, write_into_slices
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.concat_affine_x86 import concat_affine
from tvm_sparse.schedules.dense_x86 import dense_conv2d
from tvm_sparse.schedules.kernel import KernelCall, build_kernel, run_kernel
from tvm_sparse.target import resolve_target

TARGET = resolve_target("llvm")


def _kernels(hw: int):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, hw, hw)).astype(np.float32)
    w1 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    w3 = rng.standard_normal((32, 8, 3, 3)).astype(np.float32)
    pointwise = dense_conv2d(x.shape, w1, None, activation="relu", target=TARGET)
    conv3 = dense_conv2d(x.shape, w3, rng.standard_normal(32), ConvAttrs((1, 1), (1,) * 4),
                         activation="relu", target=TARGET)  # fmt: skip
    ones, zeros = np.ones(8), np.zeros(8)
    copy = concat_affine([x.shape], ones, zeros, None, 16, 1)
    return x, [pointwise, conv3, pointwise, copy]  # each run starts on a 64-byte line


@pytest.mark.parametrize("hw", [8, 13, 14])
def test_merged_kernels_equal_the_concat_of_their_outputs(hw):
    """A 1x1 conv, a 3x3 conv, the first kernel again (its variables renewed), a copy."""
    x, calls = _kernels(hw)
    expected = np.concatenate([run_kernel(c, TARGET, x) for c in calls], axis=1)
    offsets = np.cumsum([0] + [int(np.prod(c.out_shape)) for c in calls[:-1]]).tolist()
    merged = write_into_slices([c.func for c in calls], offsets, expected.shape)
    call = KernelCall(func=merged, name="merged", consts=(), out_shape=expected.shape, info={})
    module = build_kernel(call, TARGET)
    args = [a for c in calls for a in (x, *c.consts)]
    out = tvm.runtime.tensor(np.full(expected.shape, np.nan, np.float32))
    module["main"](*[tvm.runtime.tensor(np.asarray(a, np.float32)) for a in args], out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_runs_that_do_not_fit_or_start_unaligned_are_refused():
    x, calls = _kernels(8)
    size = int(np.prod(calls[0].out_shape))
    with pytest.raises(ValueError, match="does not fit"):
        write_into_slices([calls[0].func], [16], (1, 16, 8, 8))
    with pytest.raises(ValueError, match="not aligned"):
        write_into_slices([calls[0].func], [4], (1, 17, 8, 8))
    with pytest.raises(ValueError, match="2 kernels for 1 offsets"):
        write_into_slices([calls[0].func] * 2, [0], (1, 32, 8, 8))
    assert slice_aligned(size) and slice_aligned(16) and not slice_aligned(4)
