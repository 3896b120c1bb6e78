"""FuseProjection: relu(panel_1x1(x2) + panel_1x1(x0)) as one two-input panel conv."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_sparse.passes.fuse_projection import FuseProjection, panel_weights
from tvm_sparse.passes.fuse_residual import FuseResidual
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.sparse_conv_panel_x86 import (
    SPEC_ATTR,
    PanelConvSpec,
    sparse_conv2d_panel,
)
from tvm_sparse.schedules.sparse_conv_planes_x86 import sparse_conv2d_planes
from tvm_sparse.target import resolve_target

from ..schedules.reference import conv_ref, sparse_weight
from .relax_run import run_main

TARGET = resolve_target("llvm")


def _block(conv_a, conv_b, *, relu=True, read_b_twice=False):
    """main(xa, xb) = [relu](conv_a(xa) + conv_b(xb)), the convs as call_tir kernels."""
    bb = relax.BlockBuilder()
    xa = relax.Var("xa", relax.TensorType(conv_a[1], "float32"))
    xb = relax.Var("xb", relax.TensorType(conv_b[1], "float32"))
    with bb.function("main", [xa, xb]):
        with bb.dataflow():
            outs = []
            for name, (kernel, _), x in (("a", conv_a, xa), ("b", conv_b, xb)):
                gvar = bb.add_func(kernel.func.with_attr("global_symbol", name), name)
                consts = [relax.const(tvm.runtime.tensor(c)) for c in kernel.consts]
                out_type = relax.TensorType(kernel.out_shape, "float32")
                outs.append(bb.emit(relax.call_tir(gvar, [x, *consts], out_type)))
            z = bb.emit(relax.op.add(*outs))
            if relu:
                z = bb.emit(relax.op.nn.relu(z))
            if read_b_twice:
                z = bb.emit(relax.op.multiply(z, outs[1]))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, *inputs):
    return run_main(mod, TARGET, *inputs)


def _projections(mod) -> list[str]:
    return [gv.name_hint for gv in mod.functions if "projection" in gv.name_hint]


def _panel(rng, x_shape, o, strides=(1, 1), bias=True, density=0.3):
    w = sparse_weight(rng, (o, x_shape[1], 1, 1), density)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    kernel = sparse_conv2d_panel(x_shape, w, b, ConvAttrs(strides), None, TARGET, panel_cols=8)
    return (kernel, x_shape), w, b


@pytest.mark.parametrize(
    "xa_shape, xb_shape, strides_b, relu",
    [
        ((1, 12, 8, 8), (1, 6, 8, 8), (1, 1), True),  # layer1.0: one grid
        ((2, 12, 7, 7), (2, 10, 14, 14), (2, 2), True),  # a stride-2 shortcut, 49 positions
        ((1, 12, 8, 8), (1, 6, 8, 8), (1, 1), False),  # no ReLU after the add
    ],
)
def test_fused_equals_reference(xa_shape, xb_shape, strides_b, relu):
    rng = np.random.default_rng(3)
    conv_a, wa, ba = _panel(rng, xa_shape, 20)
    conv_b, wb, bb_ = _panel(rng, xb_shape, 20, strides_b, bias=not relu)
    fused = FuseProjection(TARGET)(_block(conv_a, conv_b, relu=relu))
    assert len(_projections(fused)) == 1
    assert "R.add(" not in fused["main"].script() and "R.nn.relu(" not in fused["main"].script()
    xa = rng.standard_normal(xa_shape).astype(np.float32)
    xb = rng.standard_normal(xb_shape).astype(np.float32)
    expected = conv_ref(xa, wa, ba, (1, 1)) + conv_ref(xb, wb, bb_, strides_b)
    if relu:
        expected = np.maximum(expected, 0)
    np.testing.assert_allclose(_run(fused, xa, xb), expected, rtol=1e-4, atol=1e-4)


def test_the_stride_1_conv_is_the_first_input():
    """Either operand order: the strided shortcut's input is the second (``x2``) input."""
    rng = np.random.default_rng(4)
    conv_a, _, _ = _panel(rng, (1, 12, 7, 7), 16)
    conv_b, _, _ = _panel(rng, (1, 6, 14, 14), 16, (2, 2))
    fused = FuseProjection(TARGET)(_block(conv_b, conv_a))
    (name,) = _projections(fused)
    spec = PanelConvSpec.from_json(str(fused[name].attrs[SPEC_ATTR]))
    assert spec.x_shape == (1, 12, 7, 7) and spec.x2_shape == (1, 6, 14, 14)
    assert spec.x2_strides == (2, 2)


def test_weights_come_back_from_the_records():
    rng = np.random.default_rng(5)
    (kernel, _), w, b = _panel(rng, (1, 20, 7, 7), 12, density=0.2)
    spec = PanelConvSpec.from_json(str(kernel.func.attrs[SPEC_ATTR]))
    weight, bias = panel_weights(spec, list(kernel.consts))
    np.testing.assert_array_equal(weight, w)
    np.testing.assert_array_equal(bias, b)


def test_a_shortcut_read_elsewhere_is_not_fused():
    rng = np.random.default_rng(6)
    conv_a, _, _ = _panel(rng, (1, 12, 8, 8), 16)
    conv_b, _, _ = _panel(rng, (1, 6, 8, 8), 16)
    mod = _block(conv_a, conv_b, read_b_twice=True)
    assert not _projections(FuseProjection(TARGET)(mod))


def test_a_3x3_conv_is_left_to_fuse_residual():
    """Only unpadded 1x1 panel convs are summed; a 3x3 conv with a 1x1 shortcut keeps the
    shortcut as its residual."""
    rng = np.random.default_rng(7)
    w3 = sparse_weight(rng, (16, 6, 3, 3), 0.3)
    conv3 = sparse_conv2d_planes((1, 6, 8, 8), w3, None, ConvAttrs((1, 1), (1, 1, 1, 1)), None,
                                 TARGET)  # fmt: skip
    conv_b, _, _ = _panel(rng, (1, 6, 8, 8), 16)
    mod = FuseProjection(TARGET)(_block((conv3, (1, 6, 8, 8)), conv_b))
    assert not _projections(mod)
    assert any("residual" in gv.name_hint for gv in FuseResidual(TARGET)(mod).functions)


def test_other_targets_are_left_alone():
    rng = np.random.default_rng(8)
    conv_a, _, _ = _panel(rng, (1, 12, 8, 8), 16)
    conv_b, _, _ = _panel(rng, (1, 6, 8, 8), 16)
    mod = _block(conv_a, conv_b)
    assert FuseProjection(tvm.target.Target("cuda"))(mod).same_as(mod)
