"""FuseResidual: relu(conv(x) + shortcut) becomes one kernel with the same result, for each
kernel that can take the shortcut (sparse tap planes, sparse 1x1 panels, dense Winograd, dense 1x1
pointwise)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_residual import FuseResidual
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.dense_x86 import dense_conv2d
from tvm_sparse.schedules.sparse_conv_panel_x86 import sparse_conv2d_panel
from tvm_sparse.schedules.sparse_conv_planes_x86 import sparse_conv2d_planes
from tvm_sparse.target import resolve_target

from ..schedules.reference import conv_ref, sparse_weight

TARGET = resolve_target("llvm")
X_SHAPE = (1, 6, 9, 9)
CONV = ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1))


def _module(weight, bias, *, relu: bool, shortcut_shape=None, conv_read_twice=False,
            kernel=None, x_shape=X_SHAPE):  # fmt: skip
    """main(x, s) = [relu](conv(x) + s) with the conv as a call_tir (a planes kernel unless
    ``kernel`` is given)."""
    kernel = kernel or sparse_conv2d_planes(X_SHAPE, weight, bias, CONV, None, TARGET)
    out_shape = kernel.out_shape
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    s = relax.Var("s", relax.TensorType(shortcut_shape or out_shape, "float32"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            gvar = bb.add_func(kernel.func.with_attr("global_symbol", "conv"), "conv")
            consts = [relax.const(tvm.runtime.tensor(c)) for c in kernel.consts]
            y = bb.emit(relax.call_tir(gvar, [x, *consts], relax.TensorType(out_shape, "float32")))
            z = bb.emit(relax.op.add(y, s))
            if relu:
                z = bb.emit(relax.op.nn.relu(z))
            if conv_read_twice:
                z = bb.emit(relax.op.multiply(z, y))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get(), out_shape


def _run(mod, *inputs):
    with TARGET:
        ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()


def _fused_kernels(mod) -> list[str]:
    return [gv.name_hint for gv in mod.functions if "residual" in gv.name_hint]


@pytest.mark.parametrize("relu", [True, False])
def test_fused_equals_reference(relu):
    rng = np.random.default_rng(0)
    w = sparse_weight(rng, (8, 6, 3, 3), 0.3)
    bias = rng.standard_normal(8).astype(np.float32)
    mod, out_shape = _module(w, bias, relu=relu)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 1
    calls = fused["main"].script()
    assert "R.call_tir(conv," not in calls and "R.add(" not in calls  # one kernel left
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    expected = conv_ref(x, w, bias, CONV.strides, CONV.padding, CONV.dilation) + s
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(_run(fused, x, s), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("share", [1, 2])
def test_fused_with_input_channel_blocks(share):
    """The shortcut is added once, after the last input-channel block (not to partial sums)."""
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (8, 6, 3, 3), 0.5)
    bias = rng.standard_normal(8).astype(np.float32)
    kernel = sparse_conv2d_planes(X_SHAPE, w, bias, CONV, None, TARGET, cblock=2, share=share)
    mod, out_shape = _module(w, bias, relu=True, kernel=kernel)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 1
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    expected = np.maximum(conv_ref(x, w, bias, CONV.strides, CONV.padding, CONV.dilation) + s, 0)
    np.testing.assert_allclose(_run(fused, x, s), expected, rtol=1e-4, atol=1e-4)


def test_broadcast_shortcut_is_not_fused():
    rng = np.random.default_rng(1)
    w = sparse_weight(rng, (8, 6, 3, 3), 0.3)
    mod, _ = _module(w, None, relu=True, shortcut_shape=(1, 8, 1, 1))
    assert _fused_kernels(FuseResidual(TARGET)(mod)) == []


def test_conv_output_read_elsewhere_is_not_fused():
    rng = np.random.default_rng(2)
    w = sparse_weight(rng, (8, 6, 3, 3), 0.3)
    mod, _ = _module(w, None, relu=True, conv_read_twice=True)
    assert _fused_kernels(FuseResidual(TARGET)(mod)) == []


def test_other_targets_are_left_alone():
    rng = np.random.default_rng(3)
    mod, _ = _module(sparse_weight(rng, (8, 6, 3, 3), 0.3), None, relu=True)
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    assert _fused_kernels(FuseResidual(cuda)(mod)) == []


@pytest.mark.parametrize(
    "layout, x_shape, w_shape, conv",
    [
        ("winograd", (2, 6, 9, 26), (8, 6, 3, 3), CONV),  # 24 output columns: a row tail
        ("winograd", (2, 6, 13, 14), (8, 6, 3, 3), CONV),  # 14 wide: 2 tile rows a panel
        ("winograd", (1, 6, 16, 16), (8, 6, 3, 3), CONV),  # 16 wide: stacked, whole vectors
        ("pointwise", (1, 12, 7, 9), (16, 12, 1, 1), ConvAttrs()),
        ("pointwise", (2, 12, 8, 8), (10, 12, 1, 1), ConvAttrs((2, 2))),  # downsample
    ],
)
@pytest.mark.parametrize("relu", [True, False])
def test_dense_kernels_take_the_shortcut(layout, x_shape, w_shape, conv, relu):
    rng = np.random.default_rng(5)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    kernel = dense_conv2d(x_shape, w, bias, conv, None, TARGET, layout=layout)
    mod, out_shape = _module(w, bias, relu=relu, kernel=kernel, x_shape=x_shape)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 1
    assert "R.add(" not in fused["main"].script()
    for name in _fused_kernels(fused):  # hand-scheduled: dlight must leave it alone
        assert fused[name].attrs["tirx.is_scheduled"]
    x = rng.standard_normal(x_shape).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    expected = conv_ref(x, w, bias, conv.strides, conv.padding, conv.dilation) + s
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(_run(fused, x, s), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, conv, panel_cols",
    [
        ((1, 12, 7, 9), ConvAttrs(), None),  # 63 positions: a tail over the copy's padding
        ((2, 12, 8, 8), ConvAttrs((2, 2)), 5),  # downsample, three panels
    ],
)
def test_sparse_panel_conv_takes_the_shortcut(x_shape, conv, panel_cols):
    """The shortcut is the new argument before y, added after the last panel."""
    rng = np.random.default_rng(6)
    w = sparse_weight(rng, (16, 12, 1, 1), 0.3)
    bias = rng.standard_normal(16).astype(np.float32)
    kernel = sparse_conv2d_panel(x_shape, w, bias, conv, None, TARGET, panel_cols=panel_cols)
    mod, out_shape = _module(w, bias, relu=True, kernel=kernel, x_shape=x_shape)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 1 and "R.add(" not in fused["main"].script()
    x = rng.standard_normal(x_shape).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    expected = np.maximum(conv_ref(x, w, bias, conv.strides) + s, 0)
    np.testing.assert_allclose(_run(fused, x, s), expected, rtol=1e-4, atol=1e-4)
