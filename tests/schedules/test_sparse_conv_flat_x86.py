"""Register tiles of the flat conv layout (the kernel itself runs in test_sparse_conv_x86)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tvm_sparse.schedules.sparse_conv_flat_x86 import flat_tiles


@given(va=st.integers(0, 200), vb=st.integers(0, 40), most=st.integers(1, 28))
def test_flat_tiles_cover_every_vector_once(va, vb, most):
    if va + vb == 0:
        return  # an output has at least one position
    kinds = flat_tiles(va, vb, most)
    assert len(kinds) <= 4  # the kernel has four tile slots
    seen_a, seen_b = [], []
    for count, na, nb, a0, b0 in kinds:
        assert 0 < na + nb <= most
        for t in range(count):
            seen_a += range(a0 + t * na, a0 + (t + 1) * na)
            seen_b += range(b0 + t * nb, b0 + (t + 1) * nb)
    assert sorted(seen_a) == list(range(va)) and sorted(seen_b) == list(range(vb))
