"""SafeFoldConstant skips FoldConstant only when no call has all-constant arguments."""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_sparse.passes.safe_fold import SafeFoldConstant, nothing_to_fold


def _module(constant_input: bool):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    w = relax.const(np.ones((3, 3), np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            alias = bb.emit(w)  # a var bound to a constant is a constant too
            t = bb.emit(relax.op.permute_dims(alias) if constant_input else relax.op.exp(x))
            y = bb.emit_output(relax.op.matmul(x, t if constant_input else alias))
        bb.emit_func_output(y)
    return bb.get()


def test_a_call_on_constants_is_folded():
    mod = _module(constant_input=True)
    assert not nothing_to_fold(mod)
    folded = SafeFoldConstant()(mod)
    ops = [b.value.op.name for b in folded["main"].body.blocks[0].bindings
           if isinstance(b.value, relax.Call)]  # fmt: skip
    assert ops == ["relax.matmul"]


def test_a_module_with_nothing_constant_to_fold_is_returned_as_is():
    mod = _module(constant_input=False)
    assert nothing_to_fold(mod)
    assert SafeFoldConstant()(mod).same_as(mod)
