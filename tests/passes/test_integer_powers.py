"""IntegerPowers: power(x, 2 or 3) becomes multiplies that equal onnxruntime's Pow; other
exponents, and integer tensors, keep power."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse
from tvm_sparse.frontend import import_model
from tvm_sparse.passes.integer_powers import IntegerPowers

ort = pytest.importorskip("onnxruntime")


def _pow_model(exponent: float, dims=("rows", 64), dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """y = Pow(x, exponent) * 0.5, x of a symbolic row count."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    graph = helper.make_graph(
        [
            helper.make_node("Pow", ["x", "e"], ["p"]),
            helper.make_node("Mul", ["p", "h"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", dtype, list(dims))],
        [helper.make_tensor_value_info("y", dtype, list(dims))],
        [
            numpy_helper.from_array(np.array(exponent, np_dtype), "e"),
            numpy_helper.from_array(np.array(0.5, np_dtype), "h"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _powers_left(model: onnx.ModelProto) -> int:
    mod = IntegerPowers()(import_model(model).mod)
    return mod["main"].script().count("R.power(")


@pytest.mark.parametrize("exponent", [2.0, 3.0])
def test_small_integer_exponents_become_multiplies(exponent):
    model = _pow_model(exponent)
    assert _powers_left(model) == 0
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32) * 3
    x[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    module = tvm_sparse.compile(model, "llvm", measure=False, input_shapes={"x": [5, 64]})
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(module.run(x), want)  # bit for bit, NaN and inf too


@pytest.mark.parametrize("exponent", [0.5, 2.5, 4.0, -1.0])
def test_other_exponents_keep_power(exponent):
    assert _powers_left(_pow_model(exponent)) == 1


def test_integer_tensors_keep_power():
    assert _powers_left(_pow_model(3, dtype=TensorProto.INT32)) == 1
