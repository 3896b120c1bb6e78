"""Equal PrimFuncs (apart from their names) become one: every call goes to the kept copy."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvm_sparse.passes.dedupe_kernels import DedupeKernels


@I.ir_module
class TwoTwins:
    @T.prim_func(s_tir=True)
    def add_one_a(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("add"):
                vi = T.axis.spatial(4, i)
                y[vi] = x[vi] + T.float32(1)

    @T.prim_func(s_tir=True)
    def add_one_b(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("add"):
                vi = T.axis.spatial(4, i)
                y[vi] = x[vi] + T.float32(1)

    @T.prim_func(s_tir=True)
    def add_two(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("add"):
                vi = T.axis.spatial(4, i)
                y[vi] = x[vi] + T.float32(2)

    @R.function
    def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
        cls = TwoTwins
        with R.dataflow():
            a = R.call_tir(cls.add_one_a, (x,), R.Tensor((4,), "float32"))
            b = R.call_tir(cls.add_one_b, (a,), R.Tensor((4,), "float32"))
            c = R.call_tir(cls.add_two, (b,), R.Tensor((4,), "float32"))
            R.output(c)
        return c


def test_equal_kernels_are_compiled_once_and_every_call_reaches_the_kept_one():
    deduped = DedupeKernels()(TwoTwins)
    names = sorted(gv.name_hint for gv, f in deduped.functions.items()
                   if isinstance(f, tvm.tirx.PrimFunc))  # fmt: skip
    assert names == ["add_one_a", "add_two"]
    called = [c.args[0].name_hint for c in _calls(deduped["main"])]
    assert called == ["add_one_a", "add_one_a", "add_two"]
    vm = relax.VirtualMachine(tvm.compile(deduped, "llvm"), tvm.cpu())
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x + 4)


def test_a_module_without_twins_is_returned_as_is():
    once = DedupeKernels()(TwoTwins)
    assert DedupeKernels()(once).same_as(once)


def _calls(func: relax.Function) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(
        func,
        lambda e: (
            calls.append(e)
            if isinstance(e, relax.Call) and e.args and isinstance(e.args[0], tvm.ir.GlobalVar)
            else None
        ),  # fmt: skip
    )
    return calls
