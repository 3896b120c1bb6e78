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
from .relax_run import run_main

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
    return run_main(mod, TARGET, *inputs)


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
    "layout, x_shape, w_shape, conv, knobs",
    [
        ("winograd", (2, 6, 9, 26), (8, 6, 3, 3), CONV, {}),  # 24 output columns: a row tail
        ("winograd", (2, 6, 13, 14), (8, 6, 3, 3), CONV, {}),  # 14 wide: 2 tile rows a panel
        ("winograd", (1, 6, 16, 16), (8, 6, 3, 3), CONV, {}),  # 16 wide: stacked, whole vectors
        # F(4x4, 3x3): a 4-row tail of the 24 output columns' panel; 4 tile rows stacked
        ("winograd", (2, 6, 9, 26), (8, 6, 3, 3), CONV, {"winograd_tile": (8, 2, 4)}),
        ("winograd", (1, 6, 16, 16), (8, 6, 3, 3), CONV, {"winograd_tile": (4, 4, 4)}),
        ("pointwise", (1, 12, 7, 9), (16, 12, 1, 1), ConvAttrs(), {}),
        ("pointwise", (2, 12, 8, 8), (10, 12, 1, 1), ConvAttrs((2, 2)), {}),  # downsample
    ],
)
@pytest.mark.parametrize("relu", [True, False])
def test_dense_kernels_take_the_shortcut(layout, x_shape, w_shape, conv, knobs, relu):
    rng = np.random.default_rng(5)
    w = rng.standard_normal(w_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    kernel = dense_conv2d(x_shape, w, bias, conv, None, TARGET, layout=layout, **knobs)
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


# In place: the fused conv writes its output over the shortcut where nothing reads it after.

C = 8  # channels of every tensor of the chain modules below
CHAIN_X = (1, C, 9, 11)


def _planes(rng, density=0.4):
    w = sparse_weight(rng, (C, C, 3, 3), density)
    bias = rng.standard_normal(C).astype(np.float32)
    return w, bias, sparse_conv2d_planes(CHAIN_X, w, bias, CONV, None, TARGET)


def _panel(rng, density=0.4):
    w = sparse_weight(rng, (C, C, 1, 1), density)
    bias = rng.standard_normal(C).astype(np.float32)
    return w, bias, sparse_conv2d_panel(CHAIN_X, w, bias, ConvAttrs(), None, TARGET)


class _Chain:
    """A Relax function built binding by binding, each kernel's reference kept beside it."""

    def __init__(self, x_shape=CHAIN_X):
        self.bb = relax.BlockBuilder()
        self.x = relax.Var("x", relax.TensorType(x_shape, "float32"))
        self.count = 0

    def conv(self, kernel, arg):
        name = f"conv{self.count}"
        self.count += 1
        gvar = self.bb.add_func(kernel.func.with_attr("global_symbol", name), name)
        consts = [relax.const(tvm.runtime.tensor(c)) for c in kernel.consts]
        out = relax.TensorType(kernel.out_shape, "float32")
        return self.bb.emit(relax.call_tir(gvar, [arg, *consts], out))


def _ref_conv(x, w, bias):
    pads = CONV.padding if w.shape[2] == 3 else (0, 0, 0, 0)
    return conv_ref(x, w, bias, (1, 1), pads)


def _inplace_calls(mod) -> int:
    return mod["main"].script().count("R.call_tir_inplace(")


def _pointwise(x_shape):
    def make(rng):
        w = rng.standard_normal((C, C, 1, 1)).astype(np.float32)
        bias = rng.standard_normal(C).astype(np.float32)
        conv = dense_conv2d(x_shape, w, bias, ConvAttrs(), None, TARGET, layout="pointwise")
        return w, bias, conv

    return make


def _residual_chain(make_conv, x_shape=CHAIN_X):
    """Two ResNet-style blocks: b = relu(x); y = relu(conv2(conv1(b)) + b);
    z = relu(conv4(conv3(y)) + y). Each shortcut is read by the block's first conv only, so
    both fused convs may write over it; x (a parameter) must stay as it was."""
    rng = np.random.default_rng(7)
    convs = [make_conv(rng) for _ in range(4)]
    chain = _Chain(x_shape)
    bb = chain.bb
    with bb.function("main", [chain.x]):
        with bb.dataflow():
            b = bb.emit(relax.op.nn.relu(chain.x))
            y = bb.emit(relax.op.add(chain.conv(convs[1][2], chain.conv(convs[0][2], b)), b))
            y = bb.emit(relax.op.nn.relu(y))
            z = bb.emit(relax.op.add(chain.conv(convs[3][2], chain.conv(convs[2][2], y)), y))
            out = bb.emit_output(relax.op.nn.relu(z))
        bb.emit_func_output(out)
    x = rng.standard_normal(x_shape).astype(np.float32)
    rb = np.maximum(x, 0)
    ry = np.maximum(_ref_conv(_ref_conv(rb, *convs[0][:2]), *convs[1][:2]) + rb, 0)
    rz = np.maximum(_ref_conv(_ref_conv(ry, *convs[2][:2]), *convs[3][:2]) + ry, 0)
    return bb.get(), x, rz


@pytest.mark.parametrize(
    "make_conv, x_shape, inplace",
    [
        (_planes, CHAIN_X, 2),
        (_panel, CHAIN_X, 2),
        (_pointwise((1, C, 8, 8)), (1, C, 8, 8), 2),
        # 99 pixels: the last pixel tile overlaps the one before, stored twice: not in place
        (_pointwise(CHAIN_X), CHAIN_X, 0),
    ],
    ids=["planes", "panel", "pointwise", "pointwise-overlapping-tiles"],
)
def test_chain_of_blocks_writes_over_each_shortcut(make_conv, x_shape, inplace):
    mod, x, expected = _residual_chain(make_conv, x_shape)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 2 and _inplace_calls(fused) == inplace
    x_before = x.copy()
    x_arg = tvm.runtime.tensor(x)
    with TARGET:
        ex = tvm.compile(fused, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    atol = 1e-5 * np.abs(expected).max()
    for _ in range(2):  # a second run sees the same planned buffers again
        np.testing.assert_allclose(vm["main"](x_arg).numpy(), expected, rtol=1e-4, atol=atol)
    np.testing.assert_array_equal(x_arg.numpy(), x_before)


def test_parameter_shortcut_is_not_overwritten():
    rng = np.random.default_rng(8)
    w, bias, kernel = _planes(rng)
    mod, out_shape = _module(w, bias, relu=True, kernel=kernel, x_shape=CHAIN_X)
    fused = FuseResidual(TARGET)(mod)
    assert len(_fused_kernels(fused)) == 1 and _inplace_calls(fused) == 0
    x = rng.standard_normal(CHAIN_X).astype(np.float32)
    s = rng.standard_normal(out_shape).astype(np.float32)
    s_arg = tvm.runtime.tensor(s)
    with TARGET:
        ex = tvm.compile(fused, target=TARGET)
    relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x), s_arg)
    np.testing.assert_array_equal(s_arg.numpy(), s)


def _shortcut_read_later(late_reader: str):
    """b = relu(x); y = relu(conv2(x) + b), with b read again after the fused conv: by a
    multiply (``"op"``), or by a conv whose own residual add (so where it runs once fused)
    comes after y (``"fused conv"``)."""
    rng = np.random.default_rng(9)
    (w1, b1, k1), (w2, b2, k2) = _planes(rng), _planes(rng)
    chain = _Chain()
    bb = chain.bb
    with bb.function("main", [chain.x]):
        with bb.dataflow():
            b = bb.emit(relax.op.nn.relu(chain.x))
            late = chain.conv(k1, b) if late_reader == "fused conv" else None
            y = bb.emit(relax.op.nn.relu(relax.op.add(chain.conv(k2, chain.x), b)))
            if late is None:
                out = bb.emit(relax.op.multiply(y, b))
            else:
                out = bb.emit(relax.op.nn.relu(relax.op.add(late, y)))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    x = rng.standard_normal(CHAIN_X).astype(np.float32)
    rb = np.maximum(x, 0)
    ry = np.maximum(_ref_conv(x, w2, b2) + rb, 0)
    if late is None:
        return bb.get(), x, ry * rb, 0
    return bb.get(), x, np.maximum(_ref_conv(rb, w1, b1) + ry, 0), 1


@pytest.mark.parametrize("late_reader", ["op", "fused conv"])
def test_shortcut_read_after_the_conv_is_not_overwritten(late_reader):
    mod, x, expected, inplace = _shortcut_read_later(late_reader)
    fused = FuseResidual(TARGET)(mod)
    # the second module's last block may write over y: nothing reads y after it
    assert _inplace_calls(fused) == inplace
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(_run(fused, x), expected, rtol=1e-4, atol=atol)
