"""FuseGelu: every exporter spelling of erf-GELU becomes one ``nn.gelu``, with the same values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_gelu import FuseGelu

SHAPE = (2, 8, 16)


def _c(value: float) -> relax.Constant:
    return relax.const(value, "float32")


# Each form builds gelu(x) from x with the ops a PyTorch exporter writes, in its own order.
def _torchscript(bb, x):  # (x * (erf(x / sqrt2) + 1)) * 0.5
    e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, _c(math.sqrt(2.0))))))
    a = bb.emit(relax.op.add(e, _c(1.0)))
    return relax.op.multiply(bb.emit(relax.op.multiply(x, a)), _c(0.5))


def _half_first(bb, x):  # (0.5 * x) * (1 + erf(x * 1/sqrt2))
    e = bb.emit(relax.op.erf(bb.emit(relax.op.multiply(x, _c(math.sqrt(0.5))))))
    a = bb.emit(relax.op.add(_c(1.0), e))
    return relax.op.multiply(bb.emit(relax.op.multiply(_c(0.5), x)), a)


def _half_last_const_left(bb, x):  # 0.5 * ((1 + erf(1/sqrt2 * x)) * x)
    e = bb.emit(relax.op.erf(bb.emit(relax.op.multiply(_c(math.sqrt(0.5)), x))))
    a = bb.emit(relax.op.add(e, _c(1.0)))
    return relax.op.multiply(_c(0.5), bb.emit(relax.op.multiply(a, x)))


def _wrong_half(bb, x):  # 0.6 instead of 0.5: not GELU, must stay as it is
    e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, _c(math.sqrt(2.0))))))
    a = bb.emit(relax.op.add(e, _c(1.0)))
    return relax.op.multiply(bb.emit(relax.op.multiply(x, a)), _c(0.6))


def _wrong_scale(bb, x):  # erf(x / 2): not GELU
    e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, _c(2.0)))))
    a = bb.emit(relax.op.add(e, _c(1.0)))
    return relax.op.multiply(bb.emit(relax.op.multiply(x, a)), _c(0.5))


def _module(form) -> tvm.IRModule:
    """main(x, w) = form(x @ w + 1) + 2: the GELU sits between other ops, like in an FFN."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(x, _c(1.0)))
            g = bb.emit(form(bb, h))
            out = bb.emit_output(relax.op.add(g, _c(2.0)))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod: tvm.IRModule) -> list[str]:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("form", [_torchscript, _half_first, _half_last_const_left])
def test_every_spelling_becomes_one_gelu(form, rng):
    mod = _module(form)
    fused = FuseGelu()(mod)
    ops = _ops(fused)
    assert ops.count("relax.nn.gelu") == 1
    assert "relax.erf" not in ops and "relax.multiply" not in ops and "relax.divide" not in ops
    x = rng.standard_normal(SHAPE).astype(np.float32) * 3
    expected = _gelu(x.astype(np.float64) + 1.0) + 2.0
    np.testing.assert_allclose(_run(fused, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(mod, x), _run(fused, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", [_wrong_half, _wrong_scale])
def test_lookalikes_are_left_alone(form):
    mod = _module(form)
    assert "relax.nn.gelu" not in _ops(FuseGelu()(mod))
    assert _ops(FuseGelu()(mod)) == _ops(mod)


def test_module_without_gelu_is_returned_unchanged():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.erf(x))
        bb.emit_func_output(out)
    mod = bb.get()
    assert FuseGelu()(mod).same_as(mod)


def _spelling(z_form: int, one_first: bool, grouping: int, inner_swap: bool, outer_swap: bool):
    """One of the 72 spellings: x/sqrt2, x*(1/sqrt2) or (1/sqrt2)*x; erf+1 or 1+erf; each
    grouping of the three factors with each operand order."""

    def form(bb, x):
        z = (
            relax.op.divide(x, _c(math.sqrt(2.0))),
            relax.op.multiply(x, _c(math.sqrt(0.5))),
            relax.op.multiply(_c(math.sqrt(0.5)), x),
        )[z_form]
        e = bb.emit(relax.op.erf(bb.emit(z)))
        a = bb.emit(relax.op.add(_c(1.0), e) if one_first else relax.op.add(e, _c(1.0)))
        factors = {"x": x, "a": a, "h": _c(0.5)}
        (p, q), r = ((("x", "a"), "h"), (("x", "h"), "a"), (("a", "h"), "x"))[grouping]
        p, q = (q, p) if inner_swap else (p, q)
        inner = bb.emit(relax.op.multiply(factors[p], factors[q]))
        return (
            relax.op.multiply(factors[r], inner)
            if outer_swap
            else relax.op.multiply(inner, factors[r])
        )

    return form


SPELLINGS = [
    (z, one, g, i, o)
    for z in range(3)
    for one in (False, True)
    for g in range(3)
    for i in (False, True)
    for o in (False, True)
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_operand_order_and_grouping_is_fused(spelling):
    ops = _ops(FuseGelu()(_module(_spelling(*spelling))))
    assert ops.count("relax.nn.gelu") == 1
    assert "relax.erf" not in ops and "relax.multiply" not in ops and "relax.divide" not in ops


def test_inner_product_read_elsewhere_is_left_alone():
    def form(bb, x):
        e = bb.emit(relax.op.erf(bb.emit(relax.op.divide(x, _c(math.sqrt(2.0))))))
        a = bb.emit(relax.op.add(e, _c(1.0)))
        inner = bb.emit(relax.op.multiply(x, a))
        return relax.op.add(bb.emit(relax.op.multiply(inner, _c(0.5))), inner)

    mod = _module(form)
    assert _ops(FuseGelu()(mod)) == _ops(mod)


def test_gelu_input_read_elsewhere_is_computed_once():
    """x = h + 1 feeds the GELU and a residual add: the GELU reads x, it does not recompute it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(x, _c(1.0)))
            g = bb.emit(_torchscript(bb, h))
            out = bb.emit_output(relax.op.add(g, h))
        bb.emit_func_output(out)
    assert _ops(FuseGelu()(bb.get())) == ["relax.add", "relax.nn.gelu", "relax.add"]


def _gpt2_ffn(pow_form: bool, sparsity: float) -> tuple:
    """An ONNX FFN: MatMul + bias, then GPT-2's NewGELU (with ``Pow(x, 3)`` as Hugging Face's
    export writes it, or ``x * x * x``), then a second MatMul; and its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 64)).astype(np.float32) * 0.3
    w1[rng.random(w1.shape) < sparsity] = 0.0
    w2 = rng.standard_normal((64, 16)).astype(np.float32) * 0.3
    consts = {"w1": w1, "b1": rng.standard_normal(64).astype(np.float32), "w2": w2,
              "three": np.float32(3.0), "cubic": np.float32(0.044715),
              "scale": np.float32(math.sqrt(2 / math.pi)), "one": np.float32(1.0),
              "half": np.float32(0.5)}  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["mm"]),
        helper.make_node("Add", ["mm", "b1"], ["h"]),
    ]
    if pow_form:
        nodes.append(helper.make_node("Pow", ["h", "three"], ["cube"]))
    else:
        nodes += [helper.make_node("Mul", ["h", "h"], ["sq"]),
                  helper.make_node("Mul", ["sq", "h"], ["cube"])]  # fmt: skip
    nodes += [
        helper.make_node("Mul", ["cubic", "cube"], ["kc"]),
        helper.make_node("Add", ["h", "kc"], ["poly"]),
        helper.make_node("Mul", ["scale", "poly"], ["u"]),
        helper.make_node("Tanh", ["u"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["a"]),
        helper.make_node("Mul", ["half", "h"], ["hh"]),
        helper.make_node("Mul", ["hh", "a"], ["g"]),
        helper.make_node("MatMul", ["g", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, rng.standard_normal((4, 32)).astype(np.float32) * 2


@pytest.mark.parametrize("pow_form", [True, False], ids=["pow", "muls"])
@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_tanh_gelu_becomes_the_linear_epilogue(pow_form, sparsity):
    """GPT-2's GELU after a linear is that kernel's ``gelu_tanh`` epilogue, and the model still
    equals onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    import tvm_sparse

    model, x = _gpt2_ffn(pow_form, sparsity)
    module = tvm_sparse.compile(model, "llvm", measure=False)
    assert module.report.layers[0].epilogue[-1] == "gelu_tanh"
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(module.run(x), want, rtol=1e-5, atol=1e-5)
