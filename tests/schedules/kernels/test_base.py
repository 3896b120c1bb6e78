"""The two call helpers every kernel family builds through."""

import numpy as np

from tvm_sparse.ir.layers import CONV2D, LINEAR, LayerSpec
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernels.base import build_conv, build_linear


def _record(*args, **kwargs):
    return args, kwargs


def test_build_linear_passes_rows_weight_layout_bias_activation_target_and_knobs():
    w, b = np.ones((4, 6), np.float32), np.zeros(4, np.float32)
    layer = LayerSpec(0, LINEAR, (2, 3, 6), (2, 3, 4), w, b, "relu", None, None)
    args, kwargs = build_linear(_record, layer, "llvm", {"parallel": False}, (2, 1))
    assert args[0] == 6 and args[1] is w and args[2] == (2, 1) and args[3] is b
    assert args[4:] == ("relu", "llvm")
    assert kwargs == {"parallel": False}


def test_build_conv_passes_the_conv_attrs_by_name():
    w = np.ones((8, 4, 3, 3), np.float32)
    attrs = {"strides": (2, 1), "padding": (1, 0, 1, 0), "dilation": (1, 2), "groups": 1}
    layer = LayerSpec(0, CONV2D, (1, 4, 6, 6), (1, 8, 3, 2), w, None, "gelu", None, None,
                      conv_attrs=attrs)  # fmt: skip
    args, kwargs = build_conv(_record, layer, "llvm", {"tile": (1, 2)})
    assert args[0] == (1, 4, 6, 6) and args[1] is w and args[2] is None and len(args) == 3
    conv = ConvAttrs(**attrs)
    assert kwargs == {"conv": conv, "activation": "gelu", "target": "llvm", "tile": (1, 2)}
