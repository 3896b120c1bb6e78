"""The leftover CPU rules: elementwise chains in one vectorized loop, pooling windows along the
row; every result equals numpy, on one core and on several (parallel loops)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from tvm_sparse.schedules.leftover_x86 import InjectiveVectorize, WindowReduction
from tvm_sparse.target import host_cpu


def _target(cores: int) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": cores})


def _build(make, shapes, target, rule):
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(make(*params))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    mod = relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(mod))
    mod = relax.transform.FuseTIR()(mod)
    with target:
        mod = dl.ApplyDefaultSchedule(rule)(mod)
    scheduled = [
        f for f in mod.functions.values()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "tirx.is_scheduled" in f.attrs
    ]  # fmt: skip
    ex = tvm.compile(mod, target=target)
    return relax.VirtualMachine(ex, tvm.cpu())["main"], scheduled


def _run(fn, *arrays):
    return fn(*[tvm.runtime.tensor(a) for a in arrays]).numpy()


@pytest.mark.parametrize("cores", [1, 4])
@pytest.mark.parametrize("shape", [(1, 16, 28, 28), (2, 3, 5, 7)])
def test_add_relu_is_one_scheduled_loop(cores, shape):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    fn, scheduled = _build(
        lambda x, y: relax.op.nn.relu(relax.op.add(x, y)), [shape, shape], _target(cores),
        InjectiveVectorize(min_work=1),
    )  # fmt: skip
    assert len(scheduled) == 1
    script = scheduled[0].script()
    assert "T.vectorized" in script and ("T.parallel" in script) == (cores > 1)
    np.testing.assert_array_equal(_run(fn, a, b), np.maximum(a + b, 0))


def test_vector_piece_stays_inside_the_last_axis():
    """A vector that crossed a row would index each lane with a division (a gather): the vector
    loop divides the last extent, and no vectorized index divides."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 112, 112)).astype(np.float32)
    six = relax.const(np.float32(6))
    fn, scheduled = _build(
        lambda a: relax.op.minimum(relax.op.maximum(a, relax.const(np.float32(0))), six),
        [x.shape], _target(2), InjectiveVectorize(min_work=1),
    )  # fmt: skip
    script = scheduled[0].script()
    vector_loops = [int(e) for e in re.findall(r"T\.vectorized\((?:T\.int64\()?(\d+)", script)]
    assert vector_loops and all(112 % e == 0 for e in vector_loops)
    np.testing.assert_array_equal(_run(fn, x), np.clip(x, 0, 6))


def test_broadcast_bias_add():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)
    bias = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    fn, scheduled = _build(
        lambda a, b: relax.op.add(a, b), [x.shape, bias.shape], _target(2), InjectiveVectorize()
    )
    assert scheduled
    np.testing.assert_array_equal(_run(fn, x, bias), x + bias)


def _pool_ref(x, k, s, p, reduce):
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    oh = (x.shape[2] + 2 * p - k) // s + 1
    ow = (x.shape[3] + 2 * p - k) // s + 1
    out = np.empty(x.shape[:2] + (oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(padded[:, :, i * s : i * s + k, j * s : j * s + k], (2, 3))
    return out


@pytest.mark.parametrize("cores", [1, 4])
@pytest.mark.parametrize("size, kernel, stride, pad", [(112, 3, 2, 1), (13, 3, 1, 1), (9, 2, 2, 0)])
def test_max_pool_windows(cores, size, kernel, stride, pad):
    x = np.random.default_rng(2).standard_normal((1, 8, size, size)).astype(np.float32)
    fn, scheduled = _build(
        lambda a: relax.op.nn.max_pool2d(a, kernel, stride, pad), [x.shape], _target(cores),
        WindowReduction(),
    )  # fmt: skip
    out_w = (size + 2 * pad - kernel) // stride + 1
    assert len(scheduled) == (1 if out_w >= 4 else 0)
    np.testing.assert_array_equal(_run(fn, x), _pool_ref(x, kernel, stride, pad, np.max))
