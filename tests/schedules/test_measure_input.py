"""The activation kernels are timed on follows the layer's expected input density."""

from __future__ import annotations

import numpy as np

from tvm_sparse.ir.layers import CONV2D, LINEAR, LayerSpec
from tvm_sparse.schedules.measure_input import layer_input


def _layer(kind, x_shape, input_density):
    return LayerSpec(0, kind, x_shape, x_shape, None, None, None, None, None,
                     input_density=input_density)  # fmt: skip


def test_sample_input_follows_density():
    x = layer_input(_layer(LINEAR, (64, 256), 0.1))
    assert x.shape == (64, 256) and x.dtype == np.float32
    assert 0.05 < np.count_nonzero(x) / x.size < 0.15


def test_dense_input_and_conv_shape():
    x = layer_input(_layer(CONV2D, (2, 3, 8, 8), None))
    assert x.shape == (2, 3, 8, 8) and np.count_nonzero(x) == x.size
    np.testing.assert_array_equal(x, layer_input(_layer(CONV2D, (2, 3, 8, 8), None)))
