"""The shared Relax helpers whose rules callers rely on: scalar constants and reshape
look-through."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from tvm_sparse.ir.relax_utils import binding_map, bound_vars, scalar_const, through_reshape


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (np.float32(0.5), None, 0.5),
        (np.float64(0.5), None, 0.5),
        (np.float16(0.5), None, 0.5),
        (np.float32(0.5), "float32", 0.5),
        (np.float64(0.5), "float32", None),  # the float32 rule takes float32 only
        (np.array([[2.0]], np.float32), "float32", 2.0),  # one element, any rank
        (np.array([1.0, 2.0], np.float32), None, None),
        (np.int32(1), None, None),  # never an integer
    ],
)
def test_scalar_const_states_its_dtype_rule(value, dtype, expected):
    assert scalar_const(relax.const(value, str(np.asarray(value).dtype)), dtype) == expected


def test_scalar_const_of_a_var_is_none():
    assert scalar_const(relax.Var("x", relax.TensorType((), "float32")), None) is None


def _reshaped():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            flat = bb.emit(relax.op.reshape(x, (6, 4)))
            out = bb.emit_output(relax.op.nn.relu(flat))
        bb.emit_func_output(out)
    func = bb.get()["main"]
    return func, x, flat, out


def test_through_reshape_reads_the_input_when_accepted():
    func, x, flat, _out = _reshaped()
    bindings = binding_map(func)
    assert through_reshape(flat, bindings.get, lambda src: True).same_as(x)
    assert through_reshape(flat, bindings.get, lambda src: False).same_as(flat)


def test_through_reshape_leaves_other_producers():
    func, _x, _flat, out = _reshaped()
    assert through_reshape(out, binding_map(func).get, lambda src: True).same_as(out)


def test_bound_vars_maps_a_value_back_to_its_var():
    func, x, flat, out = _reshaped()
    var2val = relax.analysis.get_var2val(func)
    bound = bound_vars(var2val)
    assert bound[var2val[flat]].same_as(flat) and bound[var2val[out]].same_as(out)
    assert bound.get(x, x).same_as(x)  # a parameter is its own var
