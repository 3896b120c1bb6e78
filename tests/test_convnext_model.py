"""End to end: a small ConvNeXt-style network (patchify stem + LayerNorm2d through permutes,
7x7 depthwise conv, NHWC LayerNorm, linears with GELU, layer scale, residual, LayerNorm2d +
2x2 stride-2 downsampling, pooled LayerNorm, head) compiled by tvm_sparse matches onnxruntime,
dense and pruned. Its permuted norms and the single-row norm take the FuseChannelLayerNorm
kernels (pixel counts 9x9 and 4x4: full vectors with and without a tail)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.frontend import import_onnx
from tvm_sparse.passes.pipeline import pre_schedule_passes
from tvm_sparse.target import resolve_target

from .conftest import assert_close, ort_run

pytestmark = pytest.mark.slow

DIMS = (16, 32)


def _model(density: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def weight(name, shape, prune=False, transpose=False):
        w = rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))
        if prune and density < 1:
            w *= rng.random(shape) < density
        return const(name, w.T.copy() if transpose else w)  # MatMul: x @ W^T as (in, out)

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def ln(x, c, tag):
        g = const(f"{tag}_g", rng.uniform(0.5, 1.5, c))
        b = const(f"{tag}_b", rng.standard_normal(c) * 0.1)
        return node("LayerNormalization", [x, g, b], f"{tag}_o", axis=-1, epsilon=1e-6)

    def ln2d(x, c, tag):  # torchvision's LayerNorm2d
        t = node("Transpose", [x], f"{tag}_t", perm=[0, 2, 3, 1])
        return node("Transpose", [ln(t, c, tag)], f"{tag}_back", perm=[0, 3, 1, 2])

    def block(x, c, tag):
        dwb = const(f"{tag}_dwb", rng.standard_normal(c) * 0.1)
        dw = node(
            "Conv", [x, weight(f"{tag}_dw", (c, 1, 7, 7)), dwb], f"{tag}_dwo", group=c, pads=[3] * 4
        )
        y = ln(node("Transpose", [dw], f"{tag}_nhwc", perm=[0, 2, 3, 1]), c, f"{tag}_n")
        y = node("MatMul", [y, weight(f"{tag}_w1", (4 * c, c), True, transpose=True)], f"{tag}_m1")
        y = node("Add", [y, const(f"{tag}_b1", rng.standard_normal(4 * c) * 0.1)], f"{tag}_a1")
        y = _gelu(node, const, y, tag)
        y = node("MatMul", [y, weight(f"{tag}_w2", (c, 4 * c), True, transpose=True)], f"{tag}_m2")
        y = node("Add", [y, const(f"{tag}_b2", rng.standard_normal(c) * 0.1)], f"{tag}_a2")
        y = node("Mul", [const(f"{tag}_gamma", rng.uniform(0.1, 1.0, c)), y], f"{tag}_ls")
        y = node("Transpose", [y], f"{tag}_nchw", perm=[0, 3, 1, 2])
        return node("Add", [x, y], f"{tag}_res")

    stem_b = const("stem_b", np.zeros(DIMS[0]))
    x = node("Conv", ["x", weight("stem_w", (DIMS[0], 3, 4, 4)), stem_b], "stem", strides=[4, 4])
    x = block(ln2d(x, DIMS[0], "stem_n"), DIMS[0], "b0")
    x = ln2d(x, DIMS[0], "down_n")
    down_w = weight("down_w", (DIMS[1], DIMS[0], 2, 2), True)
    x = node("Conv", [x, down_w, const("down_b", np.zeros(DIMS[1]))], "down", strides=[2, 2])
    x = block(x, DIMS[1], "b1")
    x = node("ReduceMean", [x], "pool", axes=[2, 3], keepdims=0)
    x = ln(x, DIMS[1], "head_n")
    x = node("Gemm", [x, weight("head_w", (10, DIMS[1]), True), const("head_b", np.zeros(10))],
             "y", transB=1)  # fmt: skip
    graph = helper.make_graph(
        nodes, "convnext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 36, 36])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gelu(node, const, y, tag):
    """erf GELU as the TorchScript exporter writes it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    d = node("Div", [y, const(f"{tag}_sqrt2", np.sqrt(2.0))], f"{tag}_gd")
    e = node("Add", [node("Erf", [d], f"{tag}_ge"), const(f"{tag}_one", 1.0)], f"{tag}_g1")
    return node("Mul", [node("Mul", [y, e], f"{tag}_gm"), const(f"{tag}_half", 0.5)], f"{tag}_g")


def test_convnext_norms_take_the_layer_norm_kernels():
    target = resolve_target("llvm")
    mod = import_onnx(_model(1.0)).mod
    with target:
        for p in pre_schedule_passes(target)[:3]:
            mod = p(mod)
    text = mod["main"].script()
    assert text.count("layer_norm_channels_first") == 2  # the stem's and the downsampling's
    assert "layer_norm_rows" in text


@pytest.mark.parametrize("density", [1.0, 0.1])
def test_convnext_matches_onnxruntime(density):
    model = _model(density)
    x = np.random.default_rng(1).standard_normal((1, 3, 36, 36)).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm")
    assert_close(compiled.run(x), ort_run(model, x))
