"""The radix-select k-WTA kernel against the numpy reference and onnxruntime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_sparse import models
from tvm_sparse.schedules.kernel import build_kernel, run_kernel
from tvm_sparse.schedules.kwta_x86 import kwta_kernel, kwta_local_kernel, kwta_maxpool_kernel

from ..conftest import ort_run


def _data(kind: str, rng: np.random.Generator, shape) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "ties":  # few distinct integers: many values equal the k-th
        return rng.integers(-3, 4, shape).astype(np.float32)
    if kind == "negative":
        return -rng.uniform(0.1, 100.0, shape).astype(np.float32)
    if kind == "equal":
        return np.full(shape, 1.5, np.float32)
    raise ValueError(kind)


def _check(target, x: np.ndarray, k: int, boost: np.ndarray | None = None) -> np.ndarray:
    call = kwta_kernel(x.shape[0], x.shape[1], k, boost)
    got = run_kernel(call, target, x)
    np.testing.assert_array_equal(got, models.kwta_reference(x, k, boost))
    return got


@settings(max_examples=12, deadline=None)
@given(
    batch=st.sampled_from([1, 3, 8]),
    n=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["normal", "ties", "negative", "equal"]),
    boosted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_reference(target, batch, n, k_frac, kind, boosted, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    x = _data(kind, rng, (batch, n))
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    _check(target, x, k, boost)


@pytest.mark.parametrize("k", [1, 17, 600])
def test_k_extremes_and_ties(target, rng, k):
    x = rng.integers(-5, 6, (3, 600)).astype(np.float32)
    got = _check(target, x, k)
    kth = -np.sort(-x, axis=1)[:, k - 1 : k]
    assert np.all((got != 0).sum(axis=1) <= (x >= kth).sum(axis=1))
    assert np.all((x >= kth).sum(axis=1) >= k)  # ties: at least k winners


@pytest.mark.parametrize("boosted", [False, True])
def test_gsc_size_uses_the_wide_top_digit(target, rng, boosted):
    n, k = 64 * 28 * 28, 4767
    x = rng.standard_normal((2, n)).astype(np.float32)
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    assert kwta_kernel(2, n, k, boost).info["digits"] == (11, 7)
    got = _check(target, x, k, boost)
    assert np.all((got != 0).sum(axis=1) == k)  # continuous values: exactly k winners


def test_signed_zeros_tie(target):
    x = np.array([[-0.0, 0.0, -0.0, -1.0, -2.0, 3.0]], np.float32)
    got = _check(target, x, 3)  # the 3rd largest is a zero: every zero wins
    np.testing.assert_array_equal(got != 0, [[False, False, False, False, False, True]])


def test_nan_follows_onnxruntime(target):
    """NaN ranks above +inf in onnxruntime's TopK, and NaN >= t is false."""
    x = np.array(
        [
            [1.0, np.nan, 3.0, 2.0, 5.0, 0.0, -1.0, 4.0],  # one NaN takes a winner's place
            [1.0, np.nan, np.nan, np.nan, 5.0, 0.0, -1.0, 4.0],  # k-th is NaN: all zero
            [np.inf, -np.inf, 2.0, -np.nan, 7.0, 7.0, 1.0, 0.5],
        ],
        np.float32,
    )
    model = models.kwta_model(x.shape, 3)
    got = run_kernel(kwta_kernel(3, 8, 3), target, x)
    np.testing.assert_array_equal(got, ort_run(model, x))


@pytest.mark.parametrize(
    "args",
    [(1, 10, 0, None), (1, 10, 11, None), (1, 10, 3, np.ones(9)), (0, 10, 3, None)],
)
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        kwta_kernel(*args)


def _maxpool_reference(y: np.ndarray, size, strides) -> np.ndarray:
    """NCHW max-pool, no padding, floor mode."""
    (ph, pw), (sh, sw) = size, strides
    b, c, h, w = y.shape
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.full((b, c, oh, ow), -np.inf, np.float32)
    for i in range(ph):
        for j in range(pw):
            out = np.maximum(
                out, y[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            )
    return out


@settings(max_examples=10, deadline=None)
@given(
    batch=st.sampled_from([1, 2]),
    chw=st.tuples(st.integers(1, 5), st.integers(2, 9), st.integers(2, 9)),
    pool=st.sampled_from([((2, 2), (2, 2)), ((3, 2), (1, 2)), ((2, 3), (3, 1))]),
    k_frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["normal", "ties", "negative"]),
    boosted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kwta_maxpool_matches_reference(target, batch, chw, pool, k_frac, kind, boosted, seed):
    (ph, pw), strides = pool
    c, h, w = chw
    h, w = max(h, ph), max(w, pw)
    n = c * h * w
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    x = _data(kind, rng, (batch, c, h, w))
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    call = kwta_maxpool_kernel(x.shape, (c, h, w), k, (ph, pw), strides, boost)
    ranked_boost = None if boost is None else boost.reshape(1, c, h, w)
    expected = _maxpool_reference(models.kwta_reference(x, k, ranked_boost), (ph, pw), strides)
    assert call.out_shape == expected.shape
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_kwta_maxpool_gsc_size(target, rng):
    x = rng.standard_normal((1, 64, 28, 28)).astype(np.float32)
    call = kwta_maxpool_kernel(x.shape, (64, 28, 28), 4767, (2, 2))
    expected = _maxpool_reference(models.kwta_reference(x, 4767), (2, 2), (2, 2))
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_kwta_reads_any_row_major_input_shape(target, rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    call = kwta_kernel(2, 105, 20, x_shape=x.shape)
    expected = models.kwta_reference(x, 20).reshape(2, 105)
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        kwta_kernel(2, 100, 5, x_shape=(2, 99))
    with pytest.raises(ValueError):
        kwta_maxpool_kernel((1, 2, 3, 3), (2, 3, 3), 4, (4, 4))
    with pytest.raises(ValueError):
        kwta_maxpool_kernel((1, 18), (2, 3, 3), 0, (2, 2))


# ------------------------------------------------------------------ the sampled bracket path
def _ranked_data(kind: str, rng: np.random.Generator, shape) -> np.ndarray:
    if kind == "relu":  # half the row ties at 0
        return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    return _data(kind, rng, shape)


@settings(max_examples=12, deadline=None)
@given(
    batch=st.sampled_from([1, 3]),
    n=st.integers(512, 2100),
    k_frac=st.floats(0.0, 1.0),
    kind=st.sampled_from(["normal", "ties", "negative", "equal", "relu"]),
    boosted=st.booleans(),
    margin=st.sampled_from([0.0, 0.5, 3.0]),  # 0: the bracket often misses, the fallback runs
    seed=st.integers(0, 2**16),
)
def test_sampled_path_matches_reference(target, batch, n, k_frac, kind, boosted, margin, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    x = _ranked_data(kind, rng, (batch, n))
    boost = rng.uniform(0.5, 1.5, n).astype(np.float32) if boosted else None
    call = kwta_kernel(batch, n, k, boost, target, sample_stride=8, margin=margin)
    assert call.info["sample_stride"] == 8
    np.testing.assert_array_equal(run_kernel(call, target, x), models.kwta_reference(x, k, boost))


def _with_k(call, k: int):
    """The same kernel called with another k (k is data: one compiled kernel serves every k)."""
    rank = call.consts[-1].copy()
    rank[0] = k
    return dataclasses.replace(call, consts=(*call.consts[:-1], rank))


def test_bracket_decides_typical_rows(target, rng):
    """Without the fallback a missed bracket leaves its row zero: typical rows never miss."""
    call = kwta_kernel(4, 2048, 1, None, target, fallback=False)
    module = build_kernel(call, target)
    for kind in ["normal", "ties", "equal", "relu"]:
        x = _ranked_data(kind, rng, (4, 2048))
        for k in [1, 2, 300, 2047, 2048]:
            got = run_kernel(_with_k(call, k), target, x, module)
            np.testing.assert_array_equal(got, models.kwta_reference(x, k), err_msg=kind)


def test_unrepresentative_sample_falls_back(target, rng):
    """The sampled values (positions j * stride + stride // 2) rank far above their row."""
    n, k, stride = 2048, 100, 16
    x = rng.standard_normal((2, n)).astype(np.float32)
    x[:, stride // 2 :: stride] += 100.0  # 128 huge values: the sample puts the k-th near 100
    expected = models.kwta_reference(x, k)
    kw = {"sample_stride": stride}
    missed = run_kernel(kwta_kernel(2, n, k, None, target, fallback=False, **kw), target, x)
    assert not missed.any()  # the bracket missed in both rows...
    got = run_kernel(kwta_kernel(2, n, k, None, target, **kw), target, x)
    np.testing.assert_array_equal(got, expected)  # ...and the full select got them right


def test_sampled_path_nan_and_inf_follow_onnxruntime(target, rng):
    n = 1024
    x = rng.standard_normal((5, n)).astype(np.float32)
    x[0, rng.choice(n, 30, replace=False)] = np.nan  # a few NaNs take winners' places
    x[1, ::8] = np.nan  # NaNs at most sampled positions: the k-th may be NaN
    x[2, rng.choice(n, 50, replace=False)] = np.inf
    x[2, rng.choice(n, 50, replace=False)] = -np.inf
    x[3, :] = np.nan  # all NaN: the row is zero
    x[3, :10] = 1.0
    x[4, rng.choice(n, 20, replace=False)] = -np.nan
    call = kwta_kernel(5, n, 1, None, target, sample_stride=8)
    module = build_kernel(call, target)
    for k in [1, 5, 40, 1024]:
        expected = ort_run(models.kwta_model(x.shape, k), x)
        got = run_kernel(_with_k(call, k), target, x, module)
        np.testing.assert_array_equal(got, expected, err_msg=str(k))


def test_per_channel_boost_is_passed_per_plane(target, rng):
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    per_channel = rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32)
    boost = np.broadcast_to(per_channel, (1, 4, 8, 8)).reshape(-1)
    expected = models.kwta_reference(x, 37, per_channel)
    flat = kwta_kernel(2, 256, 37, boost, target, x_shape=x.shape, sample_stride=2)
    assert flat.info["boost_block"] == 64 and flat.consts[0].shape == (4,)
    got = run_kernel(flat, target, x)
    np.testing.assert_array_equal(got, expected.reshape(2, 256))
    pooled = kwta_maxpool_kernel(x.shape, (4, 8, 8), 37, (2, 2), boost=boost, target=target)
    assert pooled.info["boost_block"] == 64
    np.testing.assert_array_equal(
        run_kernel(pooled, target, x), _maxpool_reference(expected, (2, 2), (2, 2))
    )
    uneven = boost.copy()
    uneven[5] += 1.0  # no longer constant per plane
    assert kwta_kernel(2, 256, 37, uneven, target, x_shape=x.shape).info["boost_block"] == 1


def test_wide_rows_pool_without_the_vector_row(target, rng):
    x = rng.standard_normal((1, 2, 4, 70)).astype(np.float32)
    call = kwta_maxpool_kernel(x.shape, (2, 4, 70), 50, (2, 3), (2, 3))
    expected = _maxpool_reference(models.kwta_reference(x, 50), (2, 3), (2, 3))
    np.testing.assert_array_equal(run_kernel(call, target, x), expected)


def test_sampling_needs_avx2_and_enough_values():
    generic = {"kind": "llvm", "mcpu": "x86-64"}
    assert kwta_kernel(1, 4096, 10, target=generic).info["sample_stride"] == 0
    assert kwta_kernel(1, 1000, 10, sample_stride=16).info["sample_stride"] == 0  # 62 samples
    assert kwta_kernel(1, 1024, 10, sample_stride=0).info["sample_stride"] == 0
    with pytest.raises(ValueError):
        kwta_kernel(1, 1024, 10, margin=-1.0)


def _exact_reference(x: np.ndarray, k: int, boost: np.ndarray | None) -> np.ndarray:
    """Exactly k per row: the largest ranked values, ties broken by the lower index (ONNX TopK)."""
    flat = x.reshape(x.shape[0], -1)
    ranked = flat * boost if boost is not None else flat
    out = np.zeros_like(flat)
    for b in range(flat.shape[0]):
        order = np.lexsort((np.arange(flat.shape[1]), -ranked[b]))[:k]
        out[b, order] = flat[b, order]
    return out


@pytest.mark.parametrize(
    "n, k, kind",  # the full select; the sampled bracket
    [(300, 31, "ties"), (6272, 596, "normal"), (6272, 596, "ties")],
)
def test_exact_keeps_k_and_breaks_ties_by_index(target, rng, n, k, kind):
    x = _data(kind, rng, (2, n))
    x[x == 0] = 5.0  # no kept zeros: a kept value shows as non-zero
    # powers of two times small integers: boosted values still tie
    boost = rng.choice(np.float32([0.5, 1.0, 2.0]), n)
    call = kwta_kernel(2, n, k, boost, exact=True, out_shape=(2, n // 4, 4))
    got = run_kernel(call, target, x)
    assert got.shape == (2, n // 4, 4) and call.info["exact"]
    np.testing.assert_array_equal(got.reshape(2, n), _exact_reference(x, k, boost))
    assert np.all((got.reshape(2, n) != 0).sum(axis=1) == k)
    if kind == "ties":  # the threshold rule keeps more: the two modes differ on this data
        threshold = run_kernel(kwta_kernel(2, n, k, boost), target, x)
        assert np.any((threshold != 0).sum(axis=1) > k)


def _local_reference(x: np.ndarray, k: int, boost: np.ndarray | None, exact: bool) -> np.ndarray:
    """Per location (b, h, w), over the channels, with numpy."""
    ranked = x * boost.reshape(1, *x.shape[1:]) if boost is not None else x
    batch, c = x.shape[:2]
    r = np.moveaxis(ranked, 1, -1).reshape(-1, c)
    v = np.moveaxis(x, 1, -1).reshape(-1, c)
    if exact:
        out = np.zeros_like(v)
        for i in range(v.shape[0]):
            order = np.lexsort((np.arange(c), -r[i]))[:k]
            out[i, order] = v[i, order]
    else:
        kth = -np.partition(-r, k - 1, axis=1)[:, k - 1 : k]
        out = np.where(r >= kth, v, 0).astype(np.float32)
    return np.moveaxis(out.reshape(batch, *x.shape[2:], c), -1, 1)


@pytest.mark.parametrize(
    "shape, k, boost_mode",
    [
        ((2, 8, 5, 5), 2, "channel"),  # 25 locations: 3 vectors and a ragged end
        ((1, 16, 4, 6), 12, "full"),  # k > C/2: the chain keeps the 5 smallest
        ((1, 64, 10, 10), 8, None),
        ((2, 6, 1, 1), 3, "full"),  # one location: the global kernel
    ],
)
def test_local_kernel_matches_reference(target, rng, shape, k, boost_mode):
    c = shape[1]
    boost = None
    if boost_mode == "channel":
        boost = np.broadcast_to(rng.uniform(0.5, 1.5, (1, c, 1, 1)), (1, *shape[1:]))
    elif boost_mode == "full":
        boost = rng.uniform(0.5, 1.5, (1, *shape[1:]))
    boost = None if boost is None else np.ascontiguousarray(boost, dtype=np.float32)
    for kind in ("normal", "ties"):
        x = _data(kind, rng, shape)
        for exact in (False, True):
            call = kwta_local_kernel(shape, k, boost, exact=exact)
            got = run_kernel(call, target, x)
            np.testing.assert_array_equal(got, _local_reference(x, k, boost, exact))
    if boost_mode == "channel" and shape[2] * shape[3] > 1:
        assert call.info["boost_mode"] == "channel"  # one factor per channel, broadcast


def test_local_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kwta_local_kernel((2, 8, 25), 2)  # not NCHW
    with pytest.raises(ValueError):
        kwta_local_kernel((2, 8, 5, 5), 9)  # k > C
    with pytest.raises(ValueError):
        kwta_local_kernel((2, 8, 5, 5), 2, np.ones(7, np.float32))
    with pytest.raises(ValueError):
        kwta_kernel(2, 100, 5, exact=True, out_shape=(2, 99))


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("boost_kind", [None, "feature", "block8", "block16"])
def test_isa_variants_match_reference(isa, boost_kind):
    """The 16-lane AVX-512 form (vcompressps in the sampled bracket) and the 8-lane AVX2 form
    give the reference's answer, tails, NaN / Inf and boosts included; the AVX-512 form is
    built and checked for 512-bit code on any machine, run where this CPU can."""
    from .isa import asm_of, count, isa_target, run_target

    rng = np.random.default_rng(7)
    batch, n = 4, 8 * 16 * 9 + 5  # 1157: not a multiple of 8 or 16; long enough to sample
    x = rng.standard_normal((batch, n)).astype(np.float32)
    x[1, rng.choice(n, 7, replace=False)] = np.nan
    x[2, rng.choice(n, 40, replace=False)] = np.inf
    boost = None
    if boost_kind == "feature":
        boost = rng.uniform(0.5, 2.0, n).astype(np.float32)
    elif boost_kind is not None:  # constant over blocks of 8 or 16 values
        block = int(boost_kind[5:])
        x = x[:, : n - n % block]
        boost = np.repeat(rng.uniform(0.5, 2.0, x.shape[1] // block), block).astype(np.float32)
    k = x.shape[1] // 10
    call = kwta_kernel(batch, x.shape[1], k, boost, isa_target(isa), sample_stride=16)
    assert call.info["sample_stride"] == 16
    assert call.info["lanes"] == (16 if isa == "avx512" else 8)
    asm = asm_of(call, isa_target(isa))
    assert (count("vcompressps", asm) > 0) == (isa == "avx512")
    if isa == "avx512" and boost_kind == "block8":  # 8-value blocks do not hold a 16-lane vector
        assert call.info["boost_block"] == 1
    got = run_kernel(call, run_target(isa), x)
    clean = [0, 2, 3]  # no NaN: the numpy reference ranks NaN unlike onnxruntime
    np.testing.assert_array_equal(got[clean], models.kwta_reference(x, k, boost)[clean])
    if isa == "avx512":  # NaN rows as the AVX2 form (held to onnxruntime in the test above)
        avx2 = kwta_kernel(batch, x.shape[1], k, boost, isa_target("avx2"), sample_stride=16)
        np.testing.assert_array_equal(got, run_kernel(avx2, run_target("avx2"), x))
