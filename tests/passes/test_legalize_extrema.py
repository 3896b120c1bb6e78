"""Float max / min reductions over rows of -inf / +inf give -inf / +inf, as numpy does (TVM's
topi starts from the lowest finite float: max over -inf was -3.4e38)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm_ffi
from tvm import relax

import tvm_sparse
from tvm_sparse.passes.legalize_extrema import float_extrema_legalizations


def _module(op, shape, dtype, axis, keepdims):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(op(x, axis=axis, keepdims=keepdims))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("axis, keepdims", [([-1], True), ([1], False), (None, False),
                                            ([0, 2], True)])  # fmt: skip
def test_rows_of_infinities_reduce_to_infinity(name, axis, keepdims):
    op, numpy_op = getattr(relax.op, name), getattr(np, name)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    fill = -np.inf if name == "max" else np.inf
    x[0, :, :] = fill  # whole rows (and whole slabs) of the reduction's identity
    x[1, 2, :] = fill
    x[2, 1, 3] = -fill  # one opposite infinity
    compiled = tvm_sparse.compile(_module(op, (3, 4, 5), "float32", axis, keepdims), "llvm")
    want = numpy_op(x, axis=None if axis is None else tuple(axis), keepdims=keepdims)
    np.testing.assert_array_equal(compiled.run(x), want)


def test_integer_reductions_keep_tvms_rule():
    """Only float dtypes change: an int max still legalizes to TVM's own kernel."""
    mod = _module(relax.op.max, (2, 3), "int32", [1], False)
    legal = relax.transform.LegalizeOps(float_extrema_legalizations())(mod)
    ours = relax.transform.LegalizeOps()(mod)
    assert tvm_ffi.structural_equal(legal, ours)
    floats = _module(relax.op.max, (2, 3), "float32", [1], False)
    legal_f = relax.transform.LegalizeOps(float_extrema_legalizations())(floats)
    assert not tvm_ffi.structural_equal(legal_f, relax.transform.LegalizeOps()(floats))
