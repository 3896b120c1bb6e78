"""FuseChannelLayerNorm: permute -> layer_norm -> permute back becomes one channels-first
kernel, a single-row layer_norm its own kernel, both with the same values; anything else (the
permuted tensor or the norm read elsewhere, other permutes, norms over several rows) stays."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_channel_layernorm import FuseChannelLayerNorm
from tvm_sparse.target import resolve_target

TARGET = resolve_target("llvm")
C = 24


def _module(shape=(2, C, 5, 7), inner=None, outer=None, reuse: str = "") -> tvm.IRModule:
    rank = len(shape)
    inner = inner or [0, *range(2, rank), 1]
    outer = outer or [0, rank - 1, *range(1, rank - 1)]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    rng = np.random.default_rng(0)
    channels = shape[inner[-1]]
    gamma = relax.const(rng.standard_normal(channels).astype(np.float32))
    beta = relax.const(rng.standard_normal(channels).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            p = bb.emit(relax.op.permute_dims(x, inner))
            n = bb.emit(relax.op.nn.layer_norm(p, gamma, beta, axes=[-1], epsilon=1e-6))
            y = bb.emit(relax.op.permute_dims(n, outer))
            if reuse == "permuted":
                y = bb.emit(relax.op.add(y, relax.op.permute_dims(p, outer)))
            elif reuse == "normed":
                y = bb.emit(relax.op.add(y, relax.op.permute_dims(n, outer)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _row_module(shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    rng = np.random.default_rng(0)
    gamma = relax.const(rng.standard_normal(shape[-1]).astype(np.float32))
    beta = relax.const(rng.standard_normal(shape[-1]).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.layer_norm(x, gamma, beta, axes=[-1], epsilon=1e-5))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _fused(mod: tvm.IRModule) -> tvm.IRModule:
    with TARGET:
        return FuseChannelLayerNorm()(mod)


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("shape", [(2, C, 5, 7), (1, C, 8, 4), (1, C, 40)])
def test_permuted_layer_norm_becomes_one_channels_first_kernel(shape):
    mod = _module(shape)
    fused = _fused(mod)
    text = fused["main"].script()
    assert "layer_norm_channels_first" in text
    assert "R.nn.layer_norm" not in text and "R.permute_dims" not in text
    x = (np.random.default_rng(1).standard_normal(shape) * 2 + 1).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x), _run(mod, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reuse", ["permuted", "normed"])
def test_intermediate_read_elsewhere_is_left_alone(reuse):
    assert "layer_norm_channels_first" not in _fused(_module(reuse=reuse))["main"].script()


def test_other_permutes_are_left_alone():
    # NCHW -> NWHC (norm over H) and back: not a norm over the channels axis
    mod = _module((1, 6, C, 5), inner=[0, 3, 1, 2], outer=[0, 2, 3, 1])
    assert "layer_norm_channels_first" not in _fused(mod)["main"].script()


def test_single_row_layer_norm_gets_its_kernel_and_more_rows_do_not():
    mod = _row_module((1, 768))
    fused = _fused(mod)
    assert "layer_norm_rows" in fused["main"].script()
    x = (np.random.default_rng(2).standard_normal((1, 768)) * 3).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x), _run(mod, x), rtol=1e-4, atol=1e-5)
    assert "R.nn.layer_norm" in _fused(_row_module((4, 768)))["main"].script()
