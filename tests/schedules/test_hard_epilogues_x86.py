"""Every CPU kernel family with the hard-swish / hard-sigmoid epilogues against numpy.

Inputs are scaled so the pre-activations cover both clip bounds (v + 3 below 0 and above 6)."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules._epilogue import ACTIVATIONS, register_activation
from tvm_sparse.schedules.dense_x86 import dense_conv2d, dense_linear
from tvm_sparse.schedules.depthwise_conv_x86 import depthwise_conv2d
from tvm_sparse.schedules.dynamic_linear_x86 import csr_linear_dynamic, dense_linear_dynamic
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.sparse_conv_batch_x86 import sparse_conv2d_batch_lanes
from tvm_sparse.schedules.sparse_conv_planes_x86 import sparse_conv2d_planes
from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d
from tvm_sparse.schedules.sparse_sparse_conv_x86 import sparse_sparse_conv2d
from tvm_sparse.schedules.sparse_sparse_x86 import sparse_sparse_linear
from tvm_sparse.schedules.sparse_x86 import bsr_linear, csr_linear
from tvm_sparse.target import resolve_target

from .reference import conv_ref, linear_ref, sparse_weight
from .test_dynamic_linear_x86 import _module, _run_rows

TARGET = resolve_target("llvm")
HARD = ["hardswish", "hardsigmoid"]


def test_hard_activations_are_cheap_register_epilogues():
    assert set(HARD) <= set(ACTIVATIONS)
    assert all(register_activation(a) == a for a in HARD)


def _check(call, x, expected):
    out = run_kernel(call, TARGET, x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    gate = expected if expected.min() >= 0 else None
    assert (expected == 0).any() and (gate is None or (gate == 1).any())  # both bounds hit


LINEARS = {
    "dense": lambda m, w, b, a: dense_linear(m, w, b, a, TARGET),
    "csr": lambda m, w, b, a: csr_linear(m, w, b, a, TARGET),
    "csr_rows": lambda m, w, b, a: csr_linear(m, w, b, a, TARGET, row_batch=4),
    "bsr": lambda m, w, b, a: bsr_linear(m, w, (4, 1), b, a, TARGET),
    "sparse_sparse": lambda m, w, b, a: sparse_sparse_linear(m, w, b, a, TARGET),
}


@pytest.mark.parametrize("activation", HARD)
@pytest.mark.parametrize("family", list(LINEARS))
@pytest.mark.parametrize("m", [1, 16])
def test_linear_families(family, m, activation):
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (40, 48), 0.3 if family != "dense" else 1.0, (4, 1))
    b = rng.standard_normal(40).astype(np.float32)
    x = (rng.standard_normal((m, 48)) * 2).astype(np.float32)
    x[x < 0] *= 0 if family == "sparse_sparse" else 1  # its input: ReLU-like zeros
    call = LINEARS[family](m, w, b, activation)
    _check(call, x, linear_ref(x, w, b, activation).astype(np.float32))


@pytest.mark.parametrize("activation", HARD)
@pytest.mark.parametrize("builder", [dense_linear_dynamic, csr_linear_dynamic])
def test_dynamic_linear_families(builder, activation):
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, (33, 20), 0.4)
    b = rng.standard_normal(33).astype(np.float32)
    call = builder(w, b, activation, TARGET)
    module = _module(call, TARGET)
    for rows in (1, 17):
        x = (rng.standard_normal((rows, 20)) * 2).astype(np.float32)
        want = linear_ref(x, w, b, activation)
        np.testing.assert_allclose(_run_rows(call, x, module), want, rtol=1e-4, atol=1e-4)


PAD1 = ConvAttrs(padding=(1, 1, 1, 1))


def _depthwise(x_shape, w, b, conv, activation, target):
    return depthwise_conv2d(x_shape, w, b, conv.strides, conv.padding, conv.dilation,
                            conv.groups, activation, target)  # fmt: skip


CONVS = {  # name: (builder, x shape, weight shape, conv, knobs, density)
    "dense_pointwise": (dense_conv2d, (1, 16, 7, 9), (24, 16, 1, 1), ConvAttrs(),
                        {"layout": "pointwise"}, 1.0),
    "dense_implicit_gemm": (dense_conv2d, (1, 8, 9, 9), (20, 8, 3, 3), PAD1,
                            {"layout": "implicit_gemm"}, 1.0),
    "dense_planes": (dense_conv2d, (1, 8, 9, 9), (20, 8, 3, 3), PAD1, {"layout": "planes"}, 1.0),
    "dense_winograd": (dense_conv2d, (1, 8, 14, 14), (16, 8, 3, 3), PAD1,
                       {"layout": "winograd"}, 1.0),
    "dense_grouped": (dense_conv2d, (1, 16, 8, 8), (16, 4, 3, 3), ConvAttrs(padding=(1, 1, 1, 1),
                      groups=4), {}, 1.0),
    "depthwise": (_depthwise, (1, 16, 10, 10), (16, 1, 3, 3),
                  ConvAttrs(padding=(1, 1, 1, 1), groups=16), {}, 1.0),
    "depthwise_s2": (_depthwise, (1, 8, 11, 11), (8, 1, 5, 5),
                     ConvAttrs((2, 2), (2, 2, 2, 2), groups=8), {}, 1.0),
    "sparse_flat": (sparse_conv2d, (1, 8, 9, 9), (20, 8, 3, 3), PAD1, {"layout": "flat"}, 0.3),
    "sparse_wide": (sparse_conv2d, (1, 8, 9, 9), (20, 8, 3, 3), PAD1, {"layout": "wide"}, 0.3),
    "sparse_tiled": (sparse_conv2d, (1, 8, 9, 9), (20, 8, 3, 3), PAD1, {"layout": "tiled"}, 0.3),
    "sparse_planes": (sparse_conv2d_planes, (1, 8, 9, 9), (20, 8, 3, 3), PAD1, {}, 0.3),
    "sparse_batch": (sparse_conv2d_batch_lanes, (16, 8, 6, 6), (12, 8, 3, 3), PAD1, {}, 0.3),
    "sparse_sparse": (sparse_sparse_conv2d, (2, 8, 7, 7), (12, 8, 3, 3), PAD1, {}, 0.3),
}  # fmt: skip


@pytest.mark.parametrize("activation", HARD)
@pytest.mark.parametrize("family", list(CONVS))
def test_conv_families(family, activation):
    builder, x_shape, w_shape, conv, knobs, density = CONVS[family]
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, w_shape, density)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = (rng.standard_normal(x_shape) * 2).astype(np.float32)
    if family == "sparse_sparse":
        x[x < 0] = 0
    call = builder(x_shape, w, b, conv, activation, TARGET, **knobs)
    if conv.groups == 1:
        ref = conv_ref(x, w, b, conv.strides, conv.padding, conv.dilation, activation)
    else:  # grouped: each group of outputs reads its own inputs
        gi, go = x_shape[1] // conv.groups, w_shape[0] // conv.groups
        ref = np.concatenate(
            [conv_ref(x[:, g * gi:(g + 1) * gi], w[g * go:(g + 1) * go], b[g * go:(g + 1) * go],
                      conv.strides, conv.padding, conv.dilation, activation)
             for g in range(conv.groups)], axis=1,
        )  # fmt: skip
    _check(call, x, ref.astype(np.float32))
