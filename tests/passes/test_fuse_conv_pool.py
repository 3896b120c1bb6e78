"""FuseConvPool: a dense conv and the 3x3 stride-2 max pool after it become one kernel (the
ResNet stem). Checked against onnxruntime on ONNX files (the implicit-GEMM stem with and without
bias, BatchNorm and ReLU, a tap-plane conv, batch 2, output widths whose pooled rows end in a
half vector and scalars), the kernel against numpy, and the forms it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.conv_maxpool_x86 import applies, band_rows, conv_maxpool_kernel
from tvm_sparse.schedules.dense_conv_planes_x86 import SPEC_ATTR, dense_conv2d_planes
from tvm_sparse.schedules.dense_conv_x86 import pack_conv_weight, unpack_conv_weight
from tvm_sparse.schedules.kernel import KernelCall, build_kernel
from tvm_sparse.schedules.sparse_conv_planes_x86 import PlaneConvSpec
from tvm_sparse.target import cpu_isa, resolve_target

from ..conftest import assert_close, fused_text, ort_run


def _model(
    x_shape, channels, kernel=7, stride=2, bias=False, batch_norm=False, relu=True,
    pool=None, extra_output=False,
) -> onnx.ModelProto:  # fmt: skip
    """Conv (padding ``kernel // 2``) [-> BatchNorm] [-> ReLU] -> MaxPool (``pool``: its
    attributes, default 3x3 stride 2 padding 1); ``extra_output``: the conv's output is a
    second graph output too (read twice)."""
    rng = np.random.default_rng(3)
    ci = x_shape[1]
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((channels, ci, kernel, kernel)).astype(np.float32), "w"
        )
    ]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b"))
        conv_inputs.append("b")
    pad = kernel // 2
    nodes = [
        helper.make_node(
            "Conv", conv_inputs, ["c"], strides=[stride] * 2, pads=[pad] * 4,
            kernel_shape=[kernel] * 2,
        )
    ]  # fmt: skip
    last = "c"
    if batch_norm:
        for name, value in (
            ("gamma", rng.standard_normal(channels)),
            ("beta", rng.standard_normal(channels)),
            ("mean", rng.standard_normal(channels)),
            ("var", rng.random(channels) + 0.5),
        ):
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        nodes.append(
            helper.make_node("BatchNormalization", [last, "gamma", "beta", "mean", "var"], ["bn"])
        )
        last = "bn"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["r"]))
        last = "r"
    attrs = pool or {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes.append(helper.make_node("MaxPool", [last], ["out"], **attrs))
    conv_hw = [(d + 2 * pad - kernel) // stride + 1 for d in x_shape[2:]]
    window, step = attrs["kernel_shape"][0], attrs["strides"][0]
    span = [d + 2 * attrs.get("pads", [0])[0] - window for d in conv_hw]
    ceil = bool(attrs.get("ceil_mode"))
    pool_hw = [(-(-v // step) if ceil else v // step) + 1 for v in span]
    outputs = [
        helper.make_tensor_value_info("out", TensorProto.FLOAT, [x_shape[0], channels, *pool_hw])
    ]
    if extra_output:
        outputs.append(
            helper.make_tensor_value_info(last, TensorProto.FLOAT, [x_shape[0], channels, *conv_hw])
        )
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# The fused kernel needs a band of whole position tiles: AVX-512's 64-wide tile admits one for
# these outputs; AVX2's 24-wide tile (3 vectors of 8) admits none (an even band dividing 32 or
# 112 output rows is never 3k rows), so on an AVX2 host the pair stays apart there, and the
# fusion decision is checked on the AVX-512 target (built, not run).
AVX512 = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1}
HOST_TILES_BAND = cpu_isa("llvm").lanes == 16


def _check(tmp_path, model: onnx.ModelProto, fused: bool) -> None:
    path = str(tmp_path / "stem.onnx")
    onnx.save(model, path)
    assert ("dense_conv2d_maxpool" in fused_text(model, AVX512)) == fused
    if HOST_TILES_BAND:
        assert ("dense_conv2d_maxpool" in fused_text(model)) == fused
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    compiled = tvm_sparse.compile(path, "llvm")
    outputs = compiled.run(x)
    first = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    assert_close(first, ort_run(path, x))


@pytest.mark.parametrize(
    "x_shape, kwargs",
    [
        ((1, 3, 64, 64), {}),  # 32x32 conv outputs, bands of 2 rows
        ((1, 3, 48, 48), {"bias": True}),  # 24x24: pooled rows end in a half vector + scalars
        ((2, 3, 64, 64), {"batch_norm": True}),  # batch 2, BatchNorm folded into a bias
        ((1, 3, 32, 32), {"relu": False}),  # no activation: the pool's -inf padding matters
    ],
    ids=["stem", "bias-tails", "batch2-bn", "no-relu"],
)
def test_stem_conv_and_max_pool_fuse(tmp_path, x_shape, kwargs):
    _check(tmp_path, _model(x_shape, 16, **kwargs), fused=True)


def test_resnet_stem_shape_fuses(tmp_path):
    """ResNet's 3 -> 64 7x7 stem at 224x224: 112 wide rows, bands of 4 rows (7 tiles)."""
    _check(tmp_path, _model((1, 3, 224, 224), 64, bias=True), fused=True)


def test_tap_plane_conv_fuses(tmp_path):
    """A 3x3 conv over 3 channels takes the tap-plane kernel, fused from its own spec."""
    _check(tmp_path, _model((1, 3, 32, 32), 8, kernel=3, stride=1), fused=True)


@pytest.mark.parametrize(
    "x_shape, kwargs",
    [
        ((1, 3, 64, 64), {"pool": {"kernel_shape": [3, 3], "strides": [1, 1],
                                   "pads": [1, 1, 1, 1]}}),
        ((1, 3, 64, 64), {"pool": {"kernel_shape": [2, 2], "strides": [2, 2]}}),
        ((1, 3, 64, 64), {"pool": {"kernel_shape": [3, 3], "strides": [2, 2],
                                   "pads": [1, 1, 1, 1], "ceil_mode": 1}}),
        ((1, 3, 30, 30), {}),  # 15x15 conv outputs: odd
        ((1, 3, 64, 64), {"extra_output": True}),  # the conv's output read twice
    ],
    ids=["stride1-pool", "2x2-pool", "ceil-mode", "odd-output", "read-twice"],
)  # fmt: skip
def test_other_pools_stay_apart(tmp_path, x_shape, kwargs):
    _check(tmp_path, _model(x_shape, 16, **kwargs), fused=False)


def test_other_targets_keep_the_pool():
    assert "dense_conv2d_maxpool" not in fused_text(_model((1, 3, 64, 64), 16), "cuda")


def _reference(x, w, b, stride, pad, activation):
    """numpy conv (+ bias, ReLU) and 3x3 stride-2 padding-1 max pool, NCHW."""
    n, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.stack(
        [xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
         for i in range(kh) for j in range(kw)], axis=2,
    )  # fmt: skip
    y = np.einsum("ncthw,oct->nohw", cols, w.reshape(co, ci, kh * kw)) + b[None, :, None, None]
    if activation == "relu":
        y = np.maximum(y, 0)
    yp = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ph, pw = oh // 2, ow // 2
    windows = [yp[:, :, i : i + 2 * ph : 2, j : j + 2 * pw : 2] for i in range(3) for j in range(3)]
    return np.max(np.stack(windows), axis=0)


@pytest.mark.parametrize(
    "x_shape, co, kernel, stride, activation",
    [
        ((1, 3, 64, 64), 10, 7, 2, "relu"),  # channels that do not fill the last tile
        ((1, 2, 96, 96), 8, 5, 2, None),  # 48 wide: pooled rows of one vector and a half
        ((2, 4, 24, 24), 6, 3, 1, "relu"),  # two samples, stride 1
    ],
)
def test_kernel_matches_numpy(x_shape, co, kernel, stride, activation):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((co, x_shape[1], kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    target = resolve_target("llvm")
    conv = ConvAttrs(strides=(stride, stride), padding=(kernel // 2,) * 4)
    call = dense_conv2d_planes(x_shape, w, b, conv, activation, target)
    spec = PlaneConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))
    if not HOST_TILES_BAND and not applies(spec):
        pytest.skip(f"{spec.tile}-wide position tiles on this CPU: no band for {spec.out_hw}")
    assert applies(spec), band_rows(spec)
    expected = _reference(x, w, b, stride, kernel // 2, activation)
    fused = KernelCall(conv_maxpool_kernel(spec), "conv_pool", call.consts, expected.shape)
    run = build_kernel(fused, target)["main"]
    args = [tvm.runtime.tensor(a) for a in (x, *call.consts)]
    out = tvm.runtime.empty(expected.shape, "float32")
    run(*args, out)
    assert_close(out.numpy(), expected)


def test_unpack_conv_weight_inverts_the_packing():
    w = np.random.default_rng(0).standard_normal((10, 3, 7, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpack_conv_weight(pack_conv_weight(w, 16), w.shape), w)
