"""The row-tile sparse conv (stride 1, few input channels) against a float64 numpy conv, on
every vector width, with the row-tile knob, padding, batches and weight densities."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tvm_sparse.ir.layers import CONV2D, LayerSpec
from tvm_sparse.schedules import registry
from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.sparse_conv_rows_x86 import (
    MARGIN,
    MAX_PLANE_BYTES,
    default_rows,
    fits_rows,
    sparse_conv2d_rows,
)

from .isa import ZMM, asm_of, run_target
from .reference import conv_ref, sparse_weight

CASES = [
    # x shape, weight shape, density, padding (top, left, bottom, right), activation, rows
    ((1, 1, 32, 32), (16, 1, 5, 5), 0.5, (0, 0, 0, 0), None, None),  # GSC's first conv
    ((2, 3, 12, 20), (8, 3, 3, 3), 0.5, (1, 1, 1, 1), "relu", None),  # batch 2, padded
    ((1, 2, 9, 21), (5, 2, 3, 5), "one", (0, 2, 1, 2), None, None),  # uneven pads, 3x5
    ((1, 1, 13, 40), (6, 1, 1, 3), 0.3, (0, 0, 0, 0), "gelu", 5),  # 3 vectors a row, rows 5+5+3
    ((1, 2, 10, 18), (4, 2, 3, 3), 0.0, (1, 1, 1, 1), "relu", None),  # no non-zero: bias only
    ((1, 1, 18, 18), (3, 1, 3, 3), 1.0, (0, 0, 0, 0), None, 1),  # OW 16: one whole vector
    ((1, 1, 12, 24), (4, 1, 7, 7), 0.6, (3, 3, 3, 3), None, 4),  # 7x7, front gap used fully
]


def _lanes(isa: str) -> int:
    return {"avx512": 16, "avx2": 8, "generic": 4}[isa]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_matches_dense(case, isa, rng):
    target = run_target(isa)
    x_shape, w_shape, density, padding, activation, rows = case
    w = sparse_weight(rng, w_shape, density)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    conv = ConvAttrs(padding=padding)
    if not fits_rows(x_shape, w_shape[2:], conv, _lanes(isa)):
        pytest.skip("output rows narrower than this ISA's vector")
    call = sparse_conv2d_rows(x_shape, w, bias, conv, activation, target, rows=rows)
    got = run_kernel(call, target, x)
    want = conv_ref(x, w, bias, padding=padding, activation=activation)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parallel", [True, False])
def test_without_bias_and_in_parallel(parallel, rng, target):
    w = sparse_weight(rng, (12, 2, 3, 3), 0.4)
    x = rng.standard_normal((2, 2, 20, 34)).astype(np.float32)
    call = sparse_conv2d_rows(x.shape, w, None, ConvAttrs(padding=(1, 1, 1, 1)), "relu", target,
                              parallel=parallel)  # fmt: skip
    got = run_kernel(call, target, x)
    np.testing.assert_allclose(
        got, conv_ref(x, w, padding=(1, 1, 1, 1), activation="relu"), rtol=1e-4, atol=1e-4
    )


def test_inner_loop_is_aligned_zmm_fmas(rng):
    """On AVX-512 each weight's 28 accumulators are updated by FMAs that read plane rows at
    64-byte steps from one base (aligned loads folded into the FMAs, nothing in between)."""
    target = {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1}
    w = sparse_weight(rng, (8, 1, 5, 5), 0.5)
    asm = asm_of(sparse_conv2d_rows((1, 1, 32, 32), w, None, target=target), target)
    disps = re.findall(rf"vfmadd231ps\s+(\d*)\(%\w+,%\w+,4\), {ZMM}, {ZMM}", asm)
    assert len(disps) >= 28
    assert all(int(d or 0) % 64 == 0 for d in disps)


def test_where_it_applies():
    rows_conv = ConvAttrs()
    assert fits_rows((1, 1, 32, 32), (5, 5), rows_conv, 16)
    assert not fits_rows((1, 1, 32, 32), (5, 5), ConvAttrs(strides=(2, 2)), 16)  # stride 2
    assert not fits_rows((1, 1, 32, 32), (5, 5), ConvAttrs(dilation=(2, 1)), 16)
    assert not fits_rows((1, 1, 32, 32), (5, 5), ConvAttrs(groups=2), 16)
    assert not fits_rows((1, 1, 32, 19), (5, 5), rows_conv, 16)  # OW 15 < 16 lanes
    assert fits_rows((1, 1, 32, 19), (5, 5), rows_conv, 8)  # ... but a whole AVX2 vector
    assert not fits_rows((1, 1, 32, 64), (1, MARGIN + 2), rows_conv, 16)  # kw past the gap
    big = (1, 64, 56, 56)  # ResNet's 56x56 stage: its planes are megabytes
    assert not fits_rows(big, (3, 3), ConvAttrs(padding=(1, 1, 1, 1)), 16)
    assert 4 * 64 * 3 * 58 * (64 + MARGIN) > MAX_PLANE_BYTES


def test_default_rows_fill_the_registers_evenly():
    assert default_rows(28, 2, 16) == 14  # 28 zmm accumulators, two blocks of 14 rows
    assert default_rows(30, 2, 16) == 10  # three blocks of 10, not 14 + 14 + 2
    assert default_rows(5, 1, 16) == 5
    assert default_rows(100, 3, 8) == 4  # 14 ymm: 4 rows of 3 vectors


def test_refuses_what_it_does_not_compute(rng):
    w = sparse_weight(rng, (4, 1, 3, 3), 0.5)
    with pytest.raises(ValueError, match="sparse_conv2d_rows takes stride-1"):
        sparse_conv2d_rows((1, 1, 40, 40), w, conv=ConvAttrs(strides=(2, 2)))
    with pytest.raises(ValueError, match="rows must be in"):
        sparse_conv2d_rows((1, 1, 40, 40), w, rows=39)


def _first_layer(rng, x_shape=(1, 1, 32, 32), w_shape=(16, 1, 5, 5)) -> LayerSpec:
    w = sparse_weight(rng, w_shape, 0.5)
    attrs = {"strides": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
    oh, ow = x_shape[2] - w_shape[2] + 1, x_shape[3] - w_shape[3] + 1
    return LayerSpec(0, CONV2D, x_shape, (x_shape[0], w_shape[0], oh, ow), w, None, None, None,
                     None, conv_attrs=attrs, name="cnn1", input_density=1.0)  # fmt: skip


def test_offered_for_a_first_layer_and_every_setting_computes_it(rng, target):
    layer = _first_layer(rng)
    families = {f.name: f for f in registry.families_for(layer, target)}
    assert "sparse_conv_rows" in families
    rows = families["sparse_conv_rows"]
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    want = conv_ref(x, layer.weight)
    space = rows.knob_space(layer, target)
    assert space[0] == {} and any("rows" in s for s in space)
    for knobs in space[:4]:
        got = run_kernel(rows.build(layer, target, **knobs), target, x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=str(knobs))


def test_not_offered_for_narrow_or_wide_channel_convs(rng, target):
    narrow = _first_layer(rng, (1, 1, 8, 8), (4, 1, 3, 3))  # 6 output columns
    assert "sparse_conv_rows" not in [f.name for f in registry.families_for(narrow, target)]
    wide = _first_layer(rng, (1, 256, 40, 40), (8, 256, 3, 3))  # megabytes of planes
    assert "sparse_conv_rows" not in [f.name for f in registry.families_for(wide, target)]
