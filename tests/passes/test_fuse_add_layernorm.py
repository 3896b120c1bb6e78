"""FuseAddLayerNorm: layer_norm(a + b) becomes one kernel call with the same values; anything
else (the sum read elsewhere, broadcasting, a norm over other axes) stays as it is."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_add_layernorm import FuseAddLayerNorm
from tvm_sparse.target import resolve_target

TARGET = resolve_target("llvm")
ROWS, C = 6, 24


def _module(reuse_sum: bool = False, b_shape=(1, ROWS, C), axes=(-1,)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((ROWS, C), "float32"))
    b = relax.Var("b", relax.TensorType(b_shape, "float32"))
    rng = np.random.default_rng(0)
    size = (1, ROWS, C)[axes[0]]
    gamma = relax.const(rng.standard_normal(size).astype(np.float32))
    beta = relax.const(rng.standard_normal(size).astype(np.float32))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            a3 = bb.emit(relax.op.reshape(a, (1, ROWS, C)))
            s = bb.emit(relax.op.add(a3, b))
            y = bb.emit(relax.op.nn.layer_norm(s, gamma, beta, axes=list(axes), epsilon=1e-5))
            if reuse_sum:
                y = bb.emit(relax.op.add(y, s))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _fused(mod: tvm.IRModule) -> tvm.IRModule:
    with TARGET:
        return FuseAddLayerNorm()(mod)


def _run(mod: tvm.IRModule, *inputs: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(v) for v in inputs]).numpy()


def _calls(mod: tvm.IRModule) -> str:
    return mod["main"].script()


def test_add_then_layer_norm_becomes_one_kernel_with_the_same_values():
    mod = _module()
    fused = _fused(mod)
    text = _calls(fused)
    assert "add_layer_norm" in text and "R.nn.layer_norm" not in text and "R.add" not in text
    rng = np.random.default_rng(1)
    a = rng.standard_normal((ROWS, C)).astype(np.float32)
    b = rng.standard_normal((1, ROWS, C)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, a, b), _run(mod, a, b), rtol=1e-4, atol=1e-5)


def test_sum_read_elsewhere_is_left_alone():
    assert "R.nn.layer_norm" in _calls(_fused(_module(reuse_sum=True)))


def test_broadcast_add_is_left_alone():
    assert "R.nn.layer_norm" in _calls(_fused(_module(b_shape=(1, 1, C))))


def test_norm_over_another_axis_is_left_alone():
    assert "R.nn.layer_norm" in _calls(_fused(_module(axes=(1,))))
