"""Round trips of the CSR / BSR / N:M formats against the dense matrix they came from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tvm_sparse.formats._index import index_dtype
from tvm_sparse.formats.bsr import BSR
from tvm_sparse.formats.csr import CSR
from tvm_sparse.formats.nm import NM

_values = st.one_of(
    st.just(0.0),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@st.composite
def sparse_matrices(draw, max_side: int = 12):
    shape = draw(st.tuples(st.integers(1, max_side), st.integers(1, max_side)))
    return draw(hnp.arrays(np.float32, shape, elements=_values))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def special_matrices():
    rng = np.random.default_rng(1)
    one = np.zeros((5, 7), np.float32)
    one[3, 6] = -2.5
    full = rng.standard_normal((6, 9)).astype(np.float32) + 10
    specials = rng.standard_normal((4, 4)).astype(np.float32)
    specials[0, 0], specials[1, 2], specials[3, 3] = np.nan, np.inf, -np.inf
    return {
        "zeros": np.zeros((4, 6), np.float32),
        "one": one,
        "full": full,
        "specials": specials,
        "negzero": np.full((3, 3), -0.0, np.float32),
    }


@settings(max_examples=60, deadline=None)
@given(sparse_matrices())
def test_csr_round_trip(w):
    csr = CSR.from_dense(w)
    assert same(csr.to_dense(), w)
    assert csr.nnz == int(np.count_nonzero(w))  # NaN counts as a non-zero
    assert csr.indptr[-1] == csr.nnz


@settings(max_examples=60, deadline=None)
@given(sparse_matrices(), st.sampled_from([(1, 1), (1, 8), (4, 1), (8, 1), (2, 3), (16, 1)]))
def test_bsr_round_trip(w, block):
    bsr = BSR.from_dense(w, block)
    assert same(bsr.to_dense(), w)
    assert bsr.nnz == int(np.count_nonzero(w))
    assert 0.0 <= bsr.fill_ratio <= 1.0


@settings(max_examples=60, deadline=None)
@given(sparse_matrices(), st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 3)]))
def test_nm_round_trip_or_refuse(w, nm):
    n, m = nm
    if NM.satisfies(w, n, m):
        fmt = NM.from_dense(w, n, m)
        assert same(fmt.to_dense(), w)
        assert fmt.nnz == int(np.count_nonzero(w))
    else:
        with pytest.raises(ValueError, match="not"):
            NM.from_dense(w, n, m)


@pytest.mark.parametrize("name", list(special_matrices()))
def test_special_matrices_all_formats(name):
    w = special_matrices()[name]
    expected = np.where(w == 0, np.float32(0), w)  # -0.0 comes back as +0.0 (equal value)
    for fmt in (CSR.from_dense(w), BSR.from_dense(w, (2, 4)), BSR.from_dense(w, (4, 1))):
        dense = fmt.to_dense()
        assert same(dense, expected)
        assert not np.signbit(dense[dense == 0]).any()
        assert fmt.nnz == int(np.count_nonzero(w))
    m = max(4, w.shape[1])
    assert same(NM.from_dense(w, w.shape[1], m).to_dense(), expected)


def test_stats_and_bytes():
    w = np.zeros((8, 16), np.float32)
    w[0, :4] = 1.0  # one full 1x4 block, one 2x8 block 25% full
    csr = CSR.from_dense(w)
    assert csr.nnz == 4 and csr.density == 4 / 128
    assert csr.nbytes == 4 * 4 + 4 * 2 + 9 * 2  # float32 values, int16 indices and indptr
    assert BSR.from_dense(w, (1, 4)).fill_ratio == 1.0
    assert BSR.from_dense(w, (2, 8)).fill_ratio == 0.25
    nm = NM.from_dense(np.eye(4, dtype=np.float32), 1, 4)
    assert nm.stored == 4 and nm.nnz == 4 and nm.stats()["pattern"] == "1:4"


def test_index_dtype_grows_with_shape():
    assert index_dtype(32767) == np.int16
    assert index_dtype(32768) == np.int32
    w = np.zeros((2, 40000), np.float32)
    w[1, 39999] = 3.0
    csr = CSR.from_dense(w)
    assert csr.indices.dtype == np.int32 and csr.indptr.dtype == np.int16
    assert same(csr.to_dense(), w)


def test_formats_are_read_only():
    csr = CSR.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError):
        csr.data[0] = 5.0


def test_rejects_non_float32():
    with pytest.raises(TypeError):
        CSR.from_dense(np.eye(3))
