"""The kernel family registry: one list read by the choice, the tuner and the CUDA path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvm_sparse.ir.layers import CONV2D, LINEAR, LayerSpec
from tvm_sparse.schedules import registry
from tvm_sparse.schedules.kernel import run_kernel
from tvm_sparse.schedules.kernels import FAMILIES
from tvm_sparse.target import resolve_target

from .cuda_support import CUDA
from .cuda_support import weight as _weight
from .reference import conv_ref, linear_ref, sparse_weight

KNOB_SETTINGS_BUILT = 3  # the first settings of every knob space built and checked


def _linear(w, rows=3, input_density=0.5, bias=True, activation="relu"):
    n, k = w.shape
    b = np.linspace(-1, 1, n).astype(np.float32) if bias else None
    return LayerSpec(0, LINEAR, (rows, k), (rows, n), w, b, activation, None, None,
                     name="fc", input_density=input_density)  # fmt: skip


def _conv(rng, groups=1):
    w = sparse_weight(rng, (8, 4 // groups, 3, 3), 0.3)
    attrs = {"strides": (1, 1), "padding": (1, 1, 1, 1), "dilation": (1, 1), "groups": groups}
    bias = np.linspace(-1, 1, 8, dtype=np.float32)
    return LayerSpec(0, CONV2D, (1, 4, 6, 6), (1, 8, 6, 6), w, bias, "relu", None, None,
                     conv_attrs=attrs, name="conv", input_density=0.5)  # fmt: skip


def _two_of_four(rng, n=32, k=64):
    """Inputs 1 and 2 of every 4 pruned: 2:4 (and 1:2) sparse, and every r x 1 block is full,
    so the N:M and the tall BSR families apply too."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[:, 1::4] = 0
    w[:, 2::4] = 0
    return w


def _groups():
    """Families grouped by (target kind, layer kind, dynamic rows), in registry order."""
    out: dict[tuple, list] = {}
    for family in FAMILIES:
        kind = "llvm" if family.targets(resolve_target("llvm")) else "cuda"
        out.setdefault((kind, family.layer_kind, family.dynamic_rows), []).append(family)
    return out


def test_every_family_is_listed_once_and_dense_first():
    groups = _groups()
    assert set(groups) == {
        ("llvm", LINEAR, False),
        ("llvm", CONV2D, False),
        ("llvm", LINEAR, True),
        ("cuda", LINEAR, False),
    }
    for families in groups.values():
        names = [f.name for f in families]
        assert len(names) == len(set(names)), names
        assert names[0] == "dense" and not families[0].skips_zeros
        assert all(f.skips_zeros for f in families[1:])


def test_families_apply_only_to_their_target(target, rng):
    layer = _linear(_two_of_four(rng))
    cpu = [f.name for f in registry.families_for(layer, target)]
    cuda = [f.name for f in registry.families_for(layer, CUDA)]
    assert cpu[:3] == ["dense", "csr", "sparse_sparse"] and {"bsr16x1", "nm"} <= set(cpu)
    assert cuda[:2] == ["dense", "csr"] and "bsr8x1" in cuda
    for family in registry.families_for(layer, target):
        assert family.applies(layer, target) and not family.applies(layer, CUDA)
    assert registry.families_for(_conv(rng), CUDA) == []  # TVM lowers conv on CUDA
    assert [f.name for f in registry.families_for(layer, target, sparse=False)] == ["dense"]


def test_grouped_conv_gets_the_sparse_conv_families(target, rng):
    """A pruned grouped conv reaches the groups=1 sparse conv kernels as its block-diagonal
    view; sparse-sparse needs a known input density, which the layer has."""
    names = [f.name for f in registry.families_for(_conv(rng, groups=2), target)]
    assert names[0] == "dense" and {"sparse_conv", "sparse_conv_planes"} <= set(names)


def test_find_family_by_name(target, rng):
    layer = _linear(_two_of_four(rng))
    assert registry.find_family("bsr4x1", layer, target).rows == 4
    assert registry.find_family("bsr4x1", layer, CUDA) in FAMILIES
    assert registry.find_family("sparse_conv", layer, target) is None
    assert registry.find_family("tvm", layer, target) is None


def test_candidates_carry_estimates_and_build(target, rng):
    layer = _linear(_two_of_four(rng))
    cands = registry.candidates_for(layer, target)
    assert [c.name for c in cands] == [f.name for f in registry.families_for(layer, target)]
    assert all(c.estimate_s > 0 for c in cands)
    assert cands[0].build().out_shape == (3, 32)


@pytest.mark.parametrize("rows", [1, 5])
def test_every_cpu_linear_family_computes_the_layer(target, rng, rows):
    """``build`` with the first settings of each knob space matches numpy (float64), for every
    family, whether or not it would be offered for this weight."""
    layer = _linear(_two_of_four(rng), rows=rows)
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    expected = linear_ref(x, layer.weight, layer.bias, "relu")
    families = [f for f in FAMILIES if f.targets(target) and f.layer_kind == LINEAR]
    # dense, csr, sparse_sparse, 4 BSR blocks, N:M; dense and csr for any row count
    assert len(families) == 10
    for family in families:
        space = family.knob_space(layer, target)
        assert space[0] == {}, family.name
        keys = [json.dumps(s, sort_keys=True) for s in space]
        assert len(keys) == len(set(keys)), family.name
        for knobs in space[:KNOB_SETTINGS_BUILT]:
            got = run_kernel(family.build(layer, target, **knobs), target, x)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=family.name)


def test_every_cpu_conv_family_computes_the_layer(target, rng):
    layer = _conv(rng)
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    expected = conv_ref(x, layer.weight, layer.bias, padding=(1, 1, 1, 1), activation="relu")
    families = registry.families_for(layer, target)
    assert [f.name for f in families] == [
        "dense",
        "sparse_conv",
        "sparse_conv_planes",
        "sparse_conv_panel",
        "sparse_sparse",
    ]
    for family in families:
        space = family.knob_space(layer, target)
        assert space[0] == {}, family.name
        for knobs in space[:KNOB_SETTINGS_BUILT]:
            got = run_kernel(family.build(layer, target, **knobs), target, x)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=family.name)


def test_pointwise_convs_get_the_panel_conv(target, rng):
    """An unpadded 1x1 conv (any stride) is also offered as the panel sparse GEMM, which
    computes it; a conv with fewer output positions than a vector is not."""
    w = sparse_weight(rng, (8, 16, 1, 1), 0.2)
    attrs = {"strides": (2, 2), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1}
    layer = LayerSpec(0, CONV2D, (1, 16, 9, 9), (1, 8, 5, 5), w, None, "relu", None, None,
                      conv_attrs=attrs, name="conv1x1")  # fmt: skip
    families = {f.name: f for f in registry.families_for(layer, target)}
    family = families["sparse_conv_panel"]
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    expected = conv_ref(x, w, None, strides=(2, 2), activation="relu")
    for knobs in family.knob_space(layer, target)[:KNOB_SETTINGS_BUILT]:
        got = run_kernel(family.build(layer, target, **knobs), target, x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    small = LayerSpec(0, CONV2D, (1, 16, 5, 5), (1, 8, 2, 2), w, None, "relu", None, None,
                      conv_attrs={**attrs, "padding": (1, 1, 1, 1)}, name="small")  # fmt: skip
    assert "sparse_conv_panel" not in [f.name for f in registry.families_for(small, target)]


def test_cuda_candidates_list_dense_first_and_build():
    w = _weight(64, 128, 0.05)
    layer = LayerSpec(0, LINEAR, (1, 128), (1, 64), w, None, None, None, None)
    layer.input_density = 0.1
    cands = registry.candidates_for(layer, CUDA, sparse=True)
    names = [c.name for c in cands]
    assert names[0] == "dense" and "csr" in names and "sparse_sparse" in names
    assert all(c.estimate_s > 0 for c in cands)
    assert cands[names.index("csr")].build().info["kernel"] == "cuda_warp_rows"
    assert [c.name for c in registry.candidates_for(layer, CUDA, sparse=False)] == ["dense"]
    for family in registry.families_for(layer, CUDA):  # tunable on a GPU (here or over RPC)
        space = family.knob_space(layer, CUDA)
        assert space[0] == {}
        assert (len(space) == 1) == (family.name == "dense")  # dlight's schedule has no knobs


def test_cuda_estimates_follow_the_measured_crossover():
    """On an H200 (bench_cuda.py, 4096x4096 at 5%): CSR beat dlight's dense GEMM 4.9x at batch 1
    and lost 1.7x at batch 64; the GPU model must rank them the same way."""
    w = _weight(4096, 4096, 0.05)
    by_name = {f.name: f for f in registry.families_for(_linear(w, rows=1), CUDA)}

    def ranked(rows: int) -> list[str]:
        layer = _linear(w, rows=rows, input_density=None)
        times = {n: by_name[n].estimate(layer, CUDA, None) for n in ("dense", "csr")}
        return sorted(times, key=times.get)

    assert ranked(1) == ["csr", "dense"]
    assert ranked(64) == ["dense", "csr"]
