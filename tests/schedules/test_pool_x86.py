"""The column-stride-2 pool kernel against a numpy pool: output rows shorter than a vector
(scalar only), exactly whole vectors, a vector and a tail; windows of 1 to 3 columns; row
strides 1 to 3; padding on every side."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.passes.separable_pool import average_divisor
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.pool_x86 import strided_pool
from tvm_sparse.target import resolve_target, vector_lanes

TARGET = resolve_target("llvm")


def _numpy_pool(x, kind, window, strides, padding, out_hw, include_pad):
    (kh, kw), (sh, sw) = window, strides
    top, left, _, _ = padding
    n, c, h, w = x.shape
    pad = -np.inf if kind == "max" else 0.0
    big = np.full((n, c, h + top + kh + sh * out_hw[0], w + left + kw + sw * out_hw[1]), pad)
    big[:, :, top : top + h, left : left + w] = x
    out = np.empty((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            win = big[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.sum(axis=(2, 3))
    if kind == "avg":
        out /= average_divisor(x.shape, window, strides, padding, include_pad, out_hw)
    return out.astype(np.float32)


@pytest.mark.parametrize(
    "x_shape, kind, window, row_stride, padding, out_hw, include_pad",
    [
        ((1, 2, 9, 9), "max", (3, 3), 2, (0, 0, 0, 0), (4, 4), False),  # 4 outputs: scalar only
        ((1, 3, 64, 64), "max", (2, 2), 2, (0, 0, 0, 0), (32, 32), False),  # two whole vectors
        ((2, 2, 47, 47), "max", (3, 3), 2, (1, 1, 1, 1), (24, 24), False),  # a vector + 8 tail
        ((1, 2, 20, 41), "max", (1, 1), 3, (0, 0, 0, 0), (7, 21), False),  # 1x1 window
        ((1, 2, 11, 40), "max", (3, 2), 1, (1, 0, 1, 1), (11, 20), False),  # row stride 1
        ((1, 2, 35, 35), "avg", (3, 3), 2, (1, 1, 1, 1), (18, 18), False),
        ((1, 2, 35, 35), "avg", (3, 3), 2, (1, 1, 1, 1), (18, 18), True),
    ],
)
def test_strided_pool_matches_numpy(
    x_shape, kind, window, row_stride, padding, out_hw, include_pad
):
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    strides = (row_stride, 2)
    if kind == "avg":
        divisor = average_divisor(x_shape, window, strides, padding, include_pad, out_hw)
    else:
        divisor = np.ones(out_hw, np.float32)
    call = strided_pool(x_shape, out_hw, kind, window, row_stride, padding, divisor,
                        vector_lanes(TARGET), 2)  # fmt: skip
    ref = _numpy_pool(x, kind, window, strides, padding, out_hw, include_pad)
    np.testing.assert_allclose(run_kernel(call, TARGET, x), ref, rtol=1e-5, atol=1e-6)
