"""Sparse-sparse kernels against dense numpy: weight and activation densities, masks, batches,
conv geometry, bias / activation, NaN / Inf.

The one semantic difference of skipping zeros, tested explicitly below: an inactive (zero) input
times an Inf / NaN weight is 0 here, while dense math gives ``0 * Inf = NaN``. Everywhere else
(finite weights, or non-finite weights met by active inputs) the kernels equal dense numpy up to
summation order. The references therefore multiply only the non-zero activations
(``_masked_product``), which is dense math whenever the weights are finite.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse.schedules._conv_dims import ConvAttrs
from tvm_sparse.schedules.kernel import build_kernel, run_kernel
from tvm_sparse.schedules.sparse_sparse_conv_x86 import sparse_sparse_conv2d
from tvm_sparse.schedules.sparse_sparse_x86 import sparse_sparse_linear, sparse_sparse_macs
from tvm_sparse.sparsify import complementary_mask, random_mask
from tvm_sparse.target import resolve_target

from .reference import conv_ref, linear_ref, sparse_weight

TARGET = resolve_target("llvm")


def sparse_x(rng, shape, density):
    """Activations with the given fraction of non-zeros ("one": a single active input)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if density == "one":
        keep = np.zeros(x.size, dtype=bool)
        keep[x.size // 3] = True
        return np.where(keep.reshape(shape), x, np.float32(0))
    return np.where(rng.random(shape) < density, x, np.float32(0))


def sparse_w(rng, shape, density, kind="random"):
    """``reference.sparse_weight`` with an exact non-zero count (``random_mask``), or with
    disjoint-support groups (``complementary_mask``) that the packing overlays."""
    if density == "one":
        return sparse_weight(rng, shape, "one")
    w = rng.standard_normal(shape).astype(np.float32)
    if kind == "complementary":
        mask = complementary_mask(shape, density, seed=rng)
    else:
        mask = random_mask(shape, density, seed=rng)
    return np.where(mask, w, np.float32(0))


def check(call, x, expected, rtol=1e-4, atol=1e-4, module=None):
    out = run_kernel(call, TARGET, x, module)
    assert out.shape == call.out_shape
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=atol, equal_nan=True)
    return out


# --------------------------------------------------------------------------- linear


X_DENSITIES = (0.0, "one", 0.1, 1.0)


@pytest.mark.parametrize("w_density", [0.0, "one", 0.05, 0.5, 1.0])
def test_linear_densities(w_density):
    """One build per weight; the activation density is data, so every x density reuses it."""
    rng = np.random.default_rng(abs(hash(str(w_density))) % 2**32)
    w = sparse_w(rng, (45, 83), w_density)
    call = sparse_sparse_linear(3, w, target=TARGET)
    module = build_kernel(call, TARGET)
    for x_density in X_DENSITIES:
        x = sparse_x(rng, (3, 83), x_density)
        check(call, x, linear_ref(x, w), module=module)


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("kind", ["complementary", "random"])
@pytest.mark.parametrize("vector", [False, True])
def test_linear_masks_batches_and_scatter_forms(m, kind, vector):
    rng = np.random.default_rng(m * 7 + len(kind) + vector)
    w = sparse_w(rng, (120, 200), 0.1, kind)
    bias = rng.standard_normal(120).astype(np.float32)
    x = sparse_x(rng, (m, 200), 0.15)
    call = sparse_sparse_linear(m, w, bias, "relu", TARGET, vector=vector)
    assert call.info["vector_scatter"] == vector
    check(call, x, linear_ref(x, w, bias, "relu"))


def test_linear_residual_and_forced_budget():
    """A budget of 2 groups pushes most non-zeros to the residual CSR; the result must not move."""
    rng = np.random.default_rng(3)
    w = sparse_w(rng, (64, 96), 0.3)
    x = sparse_x(rng, (2, 96), 0.3)
    call = sparse_sparse_linear(2, w, target=TARGET, max_groups=2, prefetch=False)
    assert call.info["packing"]["residual_nnz"] > 0
    check(call, x, linear_ref(x, w))


def test_linear_wide_output_uses_16_bit_owners_and_gelu():
    rng = np.random.default_rng(4)
    w = sparse_w(rng, (700, 64), 0.05, "complementary")
    x = sparse_x(rng, (1, 64), 0.5)
    call = sparse_sparse_linear(1, w, None, "gelu", TARGET, vector=True)
    assert call.info["vector_scatter"] and call.info["owner_bits"] == 16
    check(call, x, linear_ref(x, w, None, "gelu"))


def test_linear_without_simd_target():
    """A generic x86 target (no AVX2): scalar compaction and scatter, same results."""
    rng = np.random.default_rng(5)
    generic = {"kind": "llvm", "mcpu": "x86-64", "num-cores": 1}
    w = sparse_w(rng, (50, 70), 0.2)
    x = sparse_x(rng, (4, 70), 0.2)
    call = sparse_sparse_linear(4, w, target=generic)
    assert not call.info["vector_scatter"]
    check(call, x, linear_ref(x, w))


def test_linear_nan_inf_weights_with_active_inputs():
    """NaN / Inf weights met by active inputs propagate exactly as in dense math."""
    rng = np.random.default_rng(6)
    w = sparse_w(rng, (40, 30), 0.2)
    w[3, 5], w[7, 6], w[7, 9] = np.nan, np.inf, -np.inf
    x = sparse_x(rng, (2, 30), 0.3)
    x[:, [5, 6, 9]] = [1.0, 2.0, 0.5]  # the inputs those weights meet are active
    out = check(sparse_sparse_linear(2, w, target=TARGET), x, linear_ref(x, w))
    assert np.isnan(out[:, 3]).all() and np.isnan(out[:, 7]).all()  # Inf - Inf = NaN


def test_linear_inactive_input_times_inf_weight_is_zero_not_nan():
    """The documented difference: dense gives 0 * Inf = NaN, skipping the zero input gives 0."""
    w = np.zeros((4, 6), np.float32)
    w[1, 2], w[1, 4] = np.inf, 3.0
    w[2, 2] = np.nan
    x = np.zeros((1, 6), np.float32)
    x[0, 4] = 2.0  # input 2 is inactive
    out = run_kernel(sparse_sparse_linear(1, w, target=TARGET), TARGET, x)
    with np.errstate(invalid="ignore"):
        dense = x @ w.T
    assert np.isnan(dense[0, 1]) and np.isnan(dense[0, 2])
    np.testing.assert_array_equal(out, [[0.0, 6.0, 0.0, 0.0]])


def test_linear_nan_activation_is_active():
    w = np.zeros((3, 4), np.float32)
    w[0, 1] = 2.0
    x = np.array([[0.0, np.nan, 0.0, 1.0]], np.float32)
    out = run_kernel(sparse_sparse_linear(1, w, target=TARGET), TARGET, x)
    assert np.isnan(out[0, 0]) and out[0, 1] == 0 and out[0, 2] == 0


def test_linear_info_costs():
    rng = np.random.default_rng(7)
    w = sparse_w(rng, (100, 160), 0.05, "complementary")
    call = sparse_sparse_linear(2, w, target=TARGET, activation_density=0.25)
    info = call.info
    assert info["nnz_weights"] == np.count_nonzero(w)
    assert info["macs_dense"] == 2 * 100 * 160
    assert info["macs_sparse_sparse"] == round(0.25 * 2 * np.count_nonzero(w))
    assert info["kernel_macs"] >= info["macs_sparse_sparse"]
    assert sparse_sparse_macs(info, 0.5) == (
        round(0.5 * info["macs_per_unit_density"]),
        round(0.5 * info["kernel_macs_per_unit_density"]),
    )


def test_linear_rejects_bad_arguments():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="activation"):
        sparse_sparse_linear(1, w, activation="tanh")
    with pytest.raises(ValueError, match="bias"):
        sparse_sparse_linear(1, w, bias=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        sparse_sparse_linear(1, np.ones(4, np.float32))


@settings(max_examples=10, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 50),
    m=st.integers(1, 4),
    w_density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    x_density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    vector=st.sampled_from([None, False, True]),
    seed=st.integers(0, 2**16),
)
def test_linear_hypothesis(n, k, m, w_density, x_density, vector, seed):
    rng = np.random.default_rng(seed)
    w = sparse_w(rng, (n, k), w_density)
    x = sparse_x(rng, (m, k), x_density)
    bias = rng.standard_normal(n).astype(np.float32)
    call = sparse_sparse_linear(m, w, bias, "relu", TARGET, vector=vector)
    check(call, x, linear_ref(x, w, bias, "relu"))


# --------------------------------------------------------------------------- conv2d


@pytest.mark.parametrize(
    ("strides", "padding", "dilation"),
    [
        ((1, 1), (0, 0, 0, 0), (1, 1)),
        ((2, 2), (1, 1, 1, 1), (1, 1)),
        ((1, 2), (2, 0, 1, 2), (1, 1)),
        ((1, 1), (1, 1, 1, 1), (2, 2)),
        ((3, 1), (0, 1, 0, 0), (2, 1)),
    ],
)
def test_conv_geometry(strides, padding, dilation):
    rng = np.random.default_rng(sum(strides) + sum(padding) + sum(dilation))
    w = sparse_w(rng, (6, 4, 3, 3), 0.3)
    bias = rng.standard_normal(6).astype(np.float32)
    x = sparse_x(rng, (2, 4, 9, 8), 0.2)
    call = sparse_sparse_conv2d(
        x.shape, w, bias, ConvAttrs(strides, padding, dilation), "relu", TARGET
    )
    check(call, x, conv_ref(x, w, bias, strides, padding, dilation, "relu"))


@pytest.mark.parametrize("w_density", [0.0, "one", 0.05, 0.5, 1.0])
def test_conv_densities(w_density):
    rng = np.random.default_rng(abs(hash(("conv", str(w_density)))) % 2**32)
    w = sparse_w(rng, (8, 3, 3, 2), w_density)
    call = sparse_sparse_conv2d((1, 3, 7, 6), w, target=TARGET)
    module = build_kernel(call, TARGET)
    for x_density in X_DENSITIES:
        x = sparse_x(rng, (1, 3, 7, 6), x_density)
        check(call, x, conv_ref(x, w), module=module)


@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("kind", ["complementary", "random"])
def test_conv_gsc_like_layer(batch, kind):
    """The reference network's second conv, shrunk: 5x5 filters at 20 %, k-WTA-sparse input."""
    rng = np.random.default_rng(batch + len(kind))
    w = sparse_w(rng, (16, 16, 5, 5), 0.2, kind)
    x = sparse_x(rng, (batch, 16, 10, 10), 0.1)
    check(sparse_sparse_conv2d(x.shape, w, target=TARGET), x, conv_ref(x, w))


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pad",
    [
        ((1, 64, 56, 56), (256, 64, 1, 1), 1, 0),  # ResNet-50 layer 4: lanes wrapped negative
        ((1, 3, 64, 64), (64, 3, 7, 7), 2, 3),  # stem-like: 32768 lanes exactly
    ],
)
def test_conv_accumulator_past_int16_lanes_builds_and_is_exact(x_shape, w_shape, stride, pad):
    """The accumulator of these layers has 2^15 floats or more; zeroing it as one vector made
    TIR's int16 lane count wrap (a build error, or an LLVM abort that killed the process)."""
    rng = np.random.default_rng(7)
    w = sparse_w(rng, w_shape, 0.1)
    x = sparse_x(rng, x_shape, 0.3)
    strides, padding = (stride, stride), (pad,) * 4
    call = sparse_sparse_conv2d(x_shape, w, conv=ConvAttrs(strides, padding), target=TARGET)
    check(call, x, conv_ref(x, w, strides=strides, padding=padding))


def test_linear_accumulator_past_int16_lanes_builds_and_is_exact():
    rng = np.random.default_rng(8)
    w = sparse_w(rng, (40000, 16), 0.25)
    x = sparse_x(rng, (2, 16), 0.5)
    check(sparse_sparse_linear(2, w, target=TARGET), x, linear_ref(x, w))


@pytest.mark.parametrize("vector", [False, True])
def test_conv_scatter_forms_and_residual(vector):
    rng = np.random.default_rng(11)
    w = sparse_w(rng, (10, 5, 3, 3), 0.4)
    x = sparse_x(rng, (2, 5, 6, 6), 0.3)
    call = sparse_sparse_conv2d(
        x.shape, w, conv=ConvAttrs(padding=(1, 1, 1, 1)), target=TARGET, vector=vector, max_groups=2
    )
    assert call.info["packing"]["residual_nnz"] > 0
    check(call, x, conv_ref(x, w, padding=(1, 1, 1, 1)))


def test_conv_padding_times_inf_weight_is_zero_not_nan():
    """Zero padding is an inactive input: a border tap on an Inf weight adds 0, not NaN."""
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = np.inf, 1.0
    x = np.ones((1, 1, 4, 4), np.float32)
    out = run_kernel(
        sparse_sparse_conv2d(x.shape, w, conv=ConvAttrs(padding=(1, 1, 1, 1)), target=TARGET),
        TARGET,
        x,
    )
    dense = conv_ref(x, w, padding=(1, 1, 1, 1))
    assert np.isnan(dense[0, 0, 0, 0]) and out[0, 0, 0, 0] == 1.0
    assert np.isposinf(out[0, 0, 1, 1]) and np.isposinf(dense[0, 0, 1, 1])


def test_conv_info_costs():
    rng = np.random.default_rng(12)
    w = sparse_w(rng, (8, 4, 3, 3), 0.25, "complementary")
    x_shape = (2, 4, 6, 6)
    call = sparse_sparse_conv2d(
        x_shape, w, conv=ConvAttrs(padding=(1, 1, 1, 1)), activation_density=1.0
    )
    # At density 1 the useful MACs are the dense conv's MACs on non-zero weights, padding excluded.
    ones = np.ones(x_shape, np.float32)
    mask_w = (w != 0).astype(np.float32)
    expected = conv_ref(ones, mask_w, padding=(1, 1, 1, 1)).sum()
    assert call.info["macs_sparse_sparse"] == round(expected)
    assert call.info["macs_dense"] == 2 * 8 * 4 * 9 * 36


def test_conv_rejects_bad_arguments():
    w = np.ones((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="groups"):
        sparse_sparse_conv2d((1, 3, 5, 5), w, conv=ConvAttrs(groups=3))
    with pytest.raises(ValueError, match="channels"):
        sparse_sparse_conv2d((1, 4, 5, 5), w)
    with pytest.raises(ValueError, match="empty"):
        sparse_sparse_conv2d((1, 3, 2, 2), w)


@settings(max_examples=10, deadline=None)
@given(
    o=st.integers(1, 12),
    c=st.integers(1, 4),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    hw=st.integers(3, 8),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
    w_density=st.sampled_from([0.05, 0.3, 1.0]),
    x_density=st.sampled_from([0.0, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_conv_hypothesis(o, c, kh, kw, hw, stride, pad, dil, w_density, x_density, seed):
    if hw + 2 * pad < dil * (kh - 1) + 1 or hw + 2 * pad < dil * (kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    w = sparse_w(rng, (o, c, kh, kw), w_density)
    x = sparse_x(rng, (2, c, hw, hw), x_density)
    geom = ((stride, stride), (pad, pad, pad, pad), (dil, dil))
    call = sparse_sparse_conv2d(x.shape, w, None, ConvAttrs(*geom), None, TARGET)
    check(call, x, conv_ref(x, w, None, *geom))


# --------------------------------------------------------------------------- ISA variants


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_compaction_variant_per_isa(isa):
    """vpcompressd on AVX-512, pdep/pext on AVX2, scalar otherwise: each emits its instructions
    on any machine and, where this CPU runs it, equals the reference (NaN is active, tails past
    the last 16 / 8 inputs included: 77 inputs = 4 x 16 + 8 + 5)."""
    from .isa import asm_of, count, isa_target, run_target

    rng = np.random.default_rng(11)
    w = sparse_w(rng, (40, 77), 0.3)
    x = sparse_x(rng, (3, 77), 0.3)
    x[1, 70] = np.nan  # in the 8-input step
    x[2, 20] = np.nan  # in a 16-input step
    w[:, [20, 70]] = 1.0  # every output of rows 1 and 2 meets the NaN
    call = sparse_sparse_linear(3, w, target=isa_target(isa))
    asm = asm_of(call, isa_target(isa))
    assert call.info["compaction"] == {"avx512": "vpcompressd", "avx2": "pdep/pext"}.get(
        isa, "scalar"
    )
    assert (count("vpcompressd", asm) > 0) == (isa == "avx512")
    # AVX-512 too: the 8 inputs of the 13-input tail
    assert (count(r"\tpext[lq]?\s", asm) > 0) == (isa != "generic")
    out = run_kernel(call, run_target(isa), x)
    np.testing.assert_allclose(out, linear_ref(x, w), rtol=1e-4, atol=1e-4, equal_nan=True)
    assert np.isnan(out[1:]).all() and not np.isnan(out[0]).any()


def test_conv_compaction_avx512_matches_avx2():
    """The sparse-sparse conv compacts its whole flattened input (C*H*W, not a multiple of 16)
    with vpcompressd on AVX-512; the result equals the AVX2 form's."""
    from .isa import asm_of, count, isa_target, run_target

    rng = np.random.default_rng(12)
    w = sparse_w(rng, (8, 5, 3, 3), 0.3)
    x = sparse_x(rng, (2, 5, 7, 9), 0.2)
    call = sparse_sparse_conv2d(x.shape, w, conv=ConvAttrs(padding=(1, 1, 1, 1)),
                                target=isa_target("avx512"))  # fmt: skip
    assert count("vpcompressd", asm_of(call, isa_target("avx512"))) > 0
    out = run_kernel(call, run_target("avx512"), x)
    np.testing.assert_allclose(out, conv_ref(x, w, padding=(1, 1, 1, 1)), rtol=1e-4, atol=1e-4)
