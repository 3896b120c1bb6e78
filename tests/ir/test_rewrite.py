"""The find / plan / replace helpers every rewrite pass is built on."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import mutator

from tvm_sparse.ir.relax_utils import binding_map
from tvm_sparse.ir.rewrite import Bindings, PlannedRewriter, rewrite_functions


def _two_relus() -> tvm.IRModule:
    """``a = relu(x); b = relu(a); out = add(a, b)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(x))
            b = bb.emit(relax.op.nn.relu(a))
            out = bb.emit_output(relax.op.add(a, b))
        bb.emit_func_output(out)
    return bb.get()


def test_matches_yields_each_matched_call_in_binding_order_with_its_var():
    func = _two_relus()["main"]
    inner = wildcard()
    bindings = Bindings.of(func)
    found = list(bindings.matches(is_op("relax.nn.relu")(inner)))
    a, b, out = binding_map(func)
    assert [var for var, _call, _found in found] == [a, b]
    assert all(call.same_as(bindings.var2val[var]) for var, call, _found in found)
    # the wildcard of b's match stood for a: dpl reports a's value, bound gives a back
    assert bindings.bound[found[1][2][inner]].same_as(a)
    assert bindings.uses[a] == 2 and bindings.uses[b] == 1 and bindings.uses[out] == 1


@mutator
class _ReluToGelu(PlannedRewriter):
    def replacement(self, _var: relax.Var, x: relax.Expr) -> relax.Expr:
        return relax.op.nn.gelu(self.visit_expr(x))


def test_planned_rewriter_replaces_only_the_planned_bindings_and_keeps_their_names():
    mod = _two_relus()
    func = mod["main"]
    a, b, _out = binding_map(func)
    x = func.params[0]

    rewritten = rewrite_functions(mod, lambda f, m: _ReluToGelu({b: a}, m))["main"]
    values = binding_map(rewritten)
    ops = {var.name: str(value.op.name) for var, value in values.items()}
    assert ops == {a.name: "relax.nn.relu", b.name: "relax.nn.gelu", "gv": "relax.add"}
    new_a = next(var for var in values if var.name == a.name)
    new_b = next(var for var in values if var.name == b.name)
    assert isinstance(new_b, relax.DataflowVar)
    assert values[new_b].args[0].same_as(new_a) and values[new_a].args[0].same_as(x)


def test_rewrite_functions_returns_the_module_itself_when_nothing_is_rewritten():
    mod = _two_relus()
    assert rewrite_functions(mod, lambda f, m: None).same_as(mod)
