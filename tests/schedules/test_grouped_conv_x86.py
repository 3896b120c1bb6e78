"""Grouped convs that are not depthwise: the dense kernels (the tap planes with a group's
channels broadcast, the implicit GEMM with a group's channels in the lanes, the direct loop
nest) and the sparse conv families through the block-diagonal view, against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_sparse.ir.layers import CONV2D, LayerSpec
from tvm_sparse.schedules import registry
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.dense_x86 import (
    choose_grouped_tiling,
    default_grouped_layout,
    dense_conv2d,
)
from tvm_sparse.schedules.gemm_x86 import GemmTiling
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.kernels import FAMILIES
from tvm_sparse.schedules.kernels.base import block_diagonal

from .reference import conv_ref, sparse_weight


def grouped_ref(x, w, b, strides, padding, groups, activation):
    """float64 grouped conv2d (NCHW / OIHW), dilation 1."""
    return conv_ref(x, w, b, strides, padding, activation=activation, groups=groups)


# (batch, groups, input channels a group, output channels a group, kernel, stride, pad, hw):
# groups 2 / 4 / 8 / 32, group widths 1 (two outputs a channel: not depthwise) / 4 / 8 / 16 /
# 24, 1x1 and 3x3, stride 1 and 2, padded and not, batch 1 and 3
CASES = [
    (1, 2, 1, 2, 3, 1, 1, 7),
    (3, 4, 1, 2, 1, 2, 0, 6),
    (1, 2, 4, 4, 3, 2, 1, 9),
    (3, 32, 4, 4, 3, 1, 1, 5),
    (1, 8, 8, 8, 1, 1, 0, 6),
    (3, 4, 8, 8, 3, 2, 0, 8),
    (1, 2, 16, 16, 3, 1, 1, 8),
    (3, 8, 16, 16, 1, 2, 0, 7),
    (1, 32, 16, 16, 3, 2, 1, 5),
    (1, 4, 24, 24, 3, 1, 1, 6),
    (3, 2, 24, 24, 1, 1, 0, 5),
    (1, 8, 24, 24, 3, 2, 1, 7),
    (1, 4, 8, 16, 3, 1, 1, 6),  # more outputs than inputs a group
]
LAYOUTS = [None, "planes", "implicit_gemm"]


def _case(case, seed=0, density=None):
    batch, groups, cig, cog, k, s, p, hw = case
    rng = np.random.default_rng(seed)
    shape = (groups * cog, cig, k, k)
    if density is None:
        w = rng.standard_normal(shape, dtype=np.float32)
    else:
        w = sparse_weight(rng, shape, density)
    b = rng.standard_normal(groups * cog, dtype=np.float32)
    x = rng.standard_normal((batch, groups * cig, hw, hw), dtype=np.float32)
    conv = ConvAttrs((s, s), (p, p, p, p), (1, 1), groups)
    return x, w, b, conv


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}g{}ci{}co{}k{}s{}p{}".format(*c[:7]))
def test_grouped_dense_conv_matches_numpy(target, case, layout):
    x, w, b, conv = _case(case)
    activation = "relu" if case[0] == 1 else None
    call = dense_conv2d(x.shape, w, b, conv, activation, target, layout=layout)
    assert call.info["groups"] == conv.groups
    assert call.info["layout"] == layout or layout is None
    expected = grouped_ref(x, w, b, conv.strides, conv.padding, conv.groups, activation)
    got = run_kernel(call, target, x)
    assert got.shape == expected.shape == call.out_shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_grouped_conv_without_bias_and_odd_tiles(target):
    """No bias; planes tiles and implicit GEMM tiles that leave a group's last tile partial,
    rows not a multiple of the pixel tile, and panels of a quarter vector."""
    x, w, _, conv = _case((1, 4, 8, 12, 3, 1, 1, 9), seed=3)
    expected = grouped_ref(x, w, None, conv.strides, conv.padding, conv.groups, "relu")
    settings = [
        {"layout": "planes", "planes_tile": (5, 2)},
        {"layout": "planes", "planes_tile": (8, 1)},
        {"layout": "implicit_gemm", "tiling": GemmTiling(mr=4, nb=8)},
        {"layout": "implicit_gemm", "tiling": GemmTiling(mr=7, nb=4)},
        {"layout": "implicit_gemm", "tiling": GemmTiling(mr=18, nb=16)},  # 2 whole rows
        {"layout": "direct"},
    ]
    for knobs in settings:
        call = dense_conv2d(x.shape, w, None, conv, "relu", target, **knobs)
        got = run_kernel(call, target, x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=str(knobs))


def test_grouped_layout_and_tile_choice():
    from tvm_sparse.schedules.dense_x86 import conv_geometry

    def geo(co, cig, groups, k):
        return conv_geometry((1, cig * groups, 14, 14), (co, cig, k, k), ConvAttrs(groups=groups))

    assert default_grouped_layout(geo(64, 16, 4, 3), 16) == "implicit_gemm"  # RegNetX
    assert default_grouped_layout(geo(128, 4, 32, 3), 16) == "planes"  # ResNeXt stage 1
    assert default_grouped_layout(geo(256, 32, 8, 1), 16) == "planes"  # 1x1: in place

    def tile(co_g, ow):
        t = choose_grouped_tiling(co_g, ow, 1, 16)
        return t.mr, t.nb

    assert tile(16, 28) == (14, 16) and tile(16, 7) == (7, 16) and tile(32, 56) == (14, 16)
    assert tile(24, 4) == (12, 8)  # 3 whole rows; 24 channels as 3 half vectors
    with pytest.raises(ValueError, match="grouped conv's layout"):
        x, w, b, conv = _case(CASES[2])
        dense_conv2d(x.shape, w, b, conv, None, layout="winograd")


def _layer(x, w, b, conv, activation="relu"):
    out = grouped_ref(x[:1], w, None, conv.strides, conv.padding, conv.groups, None).shape
    attrs = {"strides": conv.strides, "padding": conv.padding, "dilation": (1, 1),
             "groups": conv.groups}  # fmt: skip
    return LayerSpec(0, CONV2D, x.shape, (x.shape[0], *out[1:]), w, b, activation, None, None,
                     conv_attrs=attrs, name="conv")  # fmt: skip


def test_block_diagonal_view_is_the_grouped_conv():
    x, w, b, conv = _case(CASES[5])
    layer = _layer(x, w, b, conv)
    view = block_diagonal(layer)
    assert view.conv_attrs["groups"] == 1 and view.weight.shape == (32, 32, 3, 3)
    assert np.count_nonzero(view.weight) == np.count_nonzero(w)
    assert block_diagonal(layer) is view  # asked again: the same view
    assert block_diagonal(view) is view
    expected = grouped_ref(x, w, b, conv.strides, conv.padding, conv.groups, None)
    got = grouped_ref(x, view.weight, b, conv.strides, conv.padding, 1, None)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    depthwise = _layer(x, np.ones((32, 1, 3, 3), np.float32), None, ConvAttrs(groups=32))
    assert block_diagonal(depthwise) is depthwise


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[7], CASES[11]], ids=str)
def test_sparse_conv_families_take_pruned_grouped_convs(target, case):
    """At 10% density every sparse conv family applies to a grouped conv (block-diagonal view)
    and computes it; a dense grouped weight is offered only dense."""
    x, w, b, conv = _case(case, seed=5, density=0.1)
    layer = _layer(x, w, b, conv)
    expected = grouped_ref(x, w, b, conv.strides, conv.padding, conv.groups, "relu")
    families = registry.families_for(layer, target)
    names = [f.name for f in families]
    assert names[0] == "dense" and {"sparse_conv_planes", "sparse_conv_panel"} <= set(names)
    pointwise = w.shape[2:] == (1, 1) and not any(conv.padding)
    assert ("sparse_conv" in names) != pointwise  # 1x1: the planes and the panel take those
    for family in families:
        for knobs in family.knob_space(layer, target)[:2]:
            got = run_kernel(family.build(layer, target, **knobs), target, x)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=family.name)
        assert family.estimate(layer, target, registry.DEFAULT_MACHINE) > 0
    dense_layer = _layer(*_case(case, seed=5))
    assert [f.name for f in registry.families_for(dense_layer, target)] == ["dense"]
    assert all(f.skips_zeros for f in FAMILIES if f.name.startswith("sparse_conv"))


@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize(
    "x_shape, groups, activation, overlaps",
    [
        ((1, 32, 12, 11), 4, "relu", True),  # 132 positions: the last tile overlaps
        ((2, 16, 9, 9), 8, None, True),  # 81 positions, two samples
        ((1, 32, 12, 11), 4, "silu", False),  # a heavy activation keeps the tail scratch
        ((1, 16, 3, 4), 2, "relu", False),  # 12 positions: fewer than one tile (8 or 16 lanes)
    ],
)
def test_grouped_planes_conv_last_tile(target, x_shape, groups, activation, overlaps, flush):
    """The dense tap-plane conv runs its channel tiles outer for grouped convs, and its last
    position tile overlaps the one before where that stores the same values twice; checked
    with the FlushDenormals wrapper too (it made LLVM keep the tail path's accumulators on the
    stack)."""
    import dataclasses

    from tvm_sparse.passes.flush_denormals import flush_denormals_in
    from tvm_sparse.schedules.dense_conv_planes_x86 import (
        SPEC_ATTR,
        dense_conv2d_planes,
        overlaps_last_tile,
    )
    from tvm_sparse.schedules.sparse_conv_planes_x86 import PlaneConvSpec

    rng = np.random.default_rng(31)
    ci = x_shape[1]
    w = rng.standard_normal((ci, ci // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(ci).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    conv = ConvAttrs((1, 1), (1, 1, 1, 1), (1, 1), groups)
    call = dense_conv2d_planes(x_shape, w, b, conv, activation, target)
    assert overlaps_last_tile(PlaneConvSpec.from_json(str(call.func.attrs[SPEC_ATTR]))) == overlaps
    if flush:
        call = dataclasses.replace(call, func=flush_denormals_in(call.func, 2))
    expected = grouped_ref(x, w, b, (1, 1), (1, 1, 1, 1), groups, activation)
    np.testing.assert_allclose(run_kernel(call, target, x), expected, rtol=1e-4, atol=1e-4)
