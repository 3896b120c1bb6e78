"""Hard-swish and hard-sigmoid after a conv become the conv kernel's epilogue
(``passes.fuse_hard_activations``, ``ir.hard_activations``), in the forms torch 2.13's ONNX
export and TVM's frontend give them; look-alikes with other constants stay separate ops."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.frontend import import_onnx
from tvm_sparse.ir.layers import find_layers
from tvm_sparse.passes.canonicalize import canonicalize

from ..conftest import assert_close, ort_run

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


class _HardNet(nn.Module):
    """MobileNetV3's pieces: conv + nn.Hardswish, depthwise + a hand-written hard-swish, a
    squeeze-excitation gate (pool, 1x1 conv, ReLU, 1x1 conv, nn.Hardsigmoid, channel scale),
    1x1 conv + hand-written hard-sigmoid, linear + nn.Hardswish."""

    def __init__(self, density: float):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.pw = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 10)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
                if p.dim() > 1 and p.shape[1] > 1 and density < 1:
                    p.mul_(torch.rand(p.shape, generator=gen) < density)

    def forward(self, x):
        x = nn.Hardswish()(self.stem(x))
        d = self.dw(x)
        x = d * F.relu6(d + 3) / 6
        s = nn.Hardsigmoid()(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * s
        p = self.pw(x)
        x = F.relu6(p + 3) / 6
        return nn.Hardswish()(self.fc(x.mean((2, 3))))


def _torch_model(density: float = 1.0) -> onnx.ModelProto:
    buf = io.BytesIO()
    x = torch.randn(1, 3, 16, 16)
    torch.onnx.export(_HardNet(density).eval(), (x,), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def _activations(model: onnx.ModelProto) -> list[str | None]:
    return [layer.activation for layer in find_layers(canonicalize(import_onnx(model).mod)["main"])]


def test_torch_exported_hard_activations_become_epilogues():
    model = _torch_model()
    ops = [n.op_type for n in model.graph.node]
    assert "HardSwish" in ops and "HardSigmoid" in ops  # what torch 2.13 exports
    expected = ["hardswish", "hardswish", "relu", "hardsigmoid", "hardsigmoid", "hardswish"]
    assert _activations(model) == expected


@pytest.mark.parametrize("density", [1.0, 0.1])
def test_hard_activation_net_matches_onnxruntime(density):
    model = _torch_model(density)
    x = (np.random.default_rng(1).standard_normal((1, 3, 16, 16)) * 2).astype(np.float32)
    compiled = tvm_sparse.compile(model, "llvm")
    assert_close(compiled.run(x), ort_run(model, x), rtol=1e-4)


def _onnx_model(tail: list, extra: dict[str, float]) -> onnx.ModelProto:
    """Conv(8 -> 12, 1x1) + bias, then the ``tail`` nodes (reading "c", writing "y")."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((12, 8, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b"),
    ]
    inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in extra.items()]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]), *tail],
        "hard",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _hand_swish(lo=0.0, hi=6.0, add=3.0, div=6.0) -> onnx.ModelProto:
    """x * clip(x + add, lo, hi) / div, as torch exports ``x * F.relu6(x + 3) / 6``."""
    tail = [
        helper.make_node("Add", ["c", "three"], ["t"]),
        helper.make_node("Clip", ["t", "lo", "hi"], ["r"]),
        helper.make_node("Mul", ["c", "r"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["y"]),
    ]
    return _onnx_model(tail, {"three": add, "lo": lo, "hi": hi, "six": div})


@pytest.mark.parametrize(
    ("model", "activation"),
    [
        (_hand_swish(), "hardswish"),
        (_hand_swish(hi=5.0), None),  # clip(0, 5): not a hard-swish
        (_hand_swish(div=5.0), None),  # divide by 5
        (_hand_swish(add=2.0), None),  # x + 2
        (_hand_swish(lo=-1.0), None),  # clip(-1, 6)
        (_onnx_model([helper.make_node("HardSwish", ["c"], ["y"])], {}), "hardswish"),
        (
            _onnx_model([helper.make_node("HardSigmoid", ["c"], ["y"], alpha=1 / 6)], {}),
            "hardsigmoid",
        ),  # fmt: skip
        # ONNX's default alpha 0.2: its affine folds into the conv, the clip(0, 1) stays
        (_onnx_model([helper.make_node("HardSigmoid", ["c"], ["y"])], {}), None),
        (
            _onnx_model([helper.make_node("HardSigmoid", ["c"], ["y"], alpha=1 / 6, beta=0.4)], {}),
            None,
        ),  # fmt: skip
    ],
)
def test_only_exact_hard_activations_fuse_and_every_form_matches_onnxruntime(model, activation):
    assert _activations(model) == [activation]
    x = (np.random.default_rng(2).standard_normal((1, 8, 6, 6)) * 3).astype(np.float32)
    assert_close(tvm_sparse.compile(model, "llvm").run(x), ort_run(model, x), rtol=1e-4)


def test_hard_swish_whose_input_has_another_reader_is_not_fused():
    tail = [
        helper.make_node("HardSwish", ["c"], ["h"]),
        helper.make_node("Add", ["h", "c"], ["y"]),  # the conv output read again
    ]
    model = _onnx_model(tail, {})
    assert _activations(model) == [None]
    x = np.random.default_rng(3).standard_normal((1, 8, 6, 6)).astype(np.float32)
    assert_close(tvm_sparse.compile(model, "llvm").run(x), ort_run(model, x), rtol=1e-4)


def test_nan_and_inf_follow_onnxruntime():
    """NaN stays NaN; hard-swish(-inf) is -inf * 0 = NaN, hard-swish(inf) = inf."""
    tail = [helper.make_node("HardSwish", ["c"], ["y"])]
    model = _onnx_model(tail, {})
    w = np.zeros((12, 8, 1, 1), np.float32)
    w[:, 0] = 1.0  # y[:, o] = hardswish(x[:, 0] + b[o])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    x = np.zeros((1, 8, 6, 6), np.float32)
    x[0, 0, 0, :3] = [np.nan, -np.inf, np.inf]
    out, ref = tvm_sparse.compile(model, "llvm").run(x), ort_run(model, x)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    assert np.isnan(ref[0, :, 0, :2]).all() and np.isposinf(ref[0, :, 0, 2]).all()
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-6)
