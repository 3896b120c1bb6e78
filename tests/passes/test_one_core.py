"""A target of one core gets serial kernels: no parallel loop (a pool launch and an outlined
closure) in the model or in a candidate timed alone; a target of more cores, or one that does
not say, keeps them."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from tvm_sparse import models
from tvm_sparse.ir.parallel_loops import has_parallel_loop, one_core, serial_parallel_loops
from tvm_sparse.passes.pipeline import SparsifyOptions, build_pipeline
from tvm_sparse.schedules.isolation import checked_by_final_build
from tvm_sparse.schedules.kernel import KernelCall, build_kernel, run_kernel
from tvm_sparse.target import resolve_target
from tvm_sparse.torch_frontend import import_any

ONE = {"kind": "llvm", "num-cores": 1}
TWO = {"kind": "llvm", "num-cores": 2}


@T.prim_func
def _nested(x: T.Buffer((64,), "float32"), y: T.Buffer((64,), "float32")):
    for i in T.parallel(4):
        for j in range(16):
            y[i * 16 + j] = x[i * 16 + j] * T.float32(2)
    if x[0] > T.float32(0):
        for i in T.parallel(8):  # under an if
            for j in range(8):
                y[i * 8 + j] = y[i * 8 + j] + T.float32(1)


def test_every_parallel_loop_becomes_serial_with_the_same_result():
    serial = serial_parallel_loops(_nested)
    assert has_parallel_loop(_nested) and not has_parallel_loop(serial)
    assert "T.parallel" not in serial.script()
    call = KernelCall(_nested, "nested", (), (64,))
    x = np.linspace(-1, 1, 64, dtype=np.float32)[::-1].copy()
    target = resolve_target(TWO)
    expected = run_kernel(call, target, x)
    got = run_kernel(KernelCall(serial, "nested", (), (64,)), target, x)
    np.testing.assert_array_equal(got, expected)
    assert serial_parallel_loops(serial).same_as(serial)  # nothing to do: the same function


def test_only_a_cpu_that_says_one_core():
    assert one_core(resolve_target(ONE))
    assert not one_core(resolve_target(TWO))
    assert not one_core(tvm.target.Target({"kind": "llvm"}))  # says nothing: keeps its loops
    assert not one_core(tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))


def _lowered(model, target):
    target = resolve_target(target)
    imported = import_any(model, None, None)
    options = SparsifyOptions(layer_names=imported.weighted_nodes, measure=False)
    with target, checked_by_final_build(True):
        return build_pipeline(target, options, None)(imported.mod)


@pytest.mark.parametrize("target, parallel", [(ONE, False), (TWO, True)])
def test_the_model_pipeline_serializes_for_one_core_only(target, parallel):
    lowered = _lowered(models.pruned_mlp(layers=2, hidden=256, density=0.1, batch=16), target)
    kernels = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and any(has_parallel_loop(f) for f in kernels) == parallel


def test_a_candidate_timed_alone_is_built_serial_for_one_core(monkeypatch):
    seen = []
    original = tvm.compile

    def compile_(mod, *args, **kwargs):
        seen.extend(f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
        return original(mod, *args, **kwargs)

    monkeypatch.setattr(tvm, "compile", compile_)
    build_kernel(KernelCall(_nested, "nested", (), (64,)), resolve_target(ONE))
    build_kernel(KernelCall(_nested, "nested", (), (64,)), resolve_target(TWO))
    assert [has_parallel_loop(f) for f in seen] == [False, True]
