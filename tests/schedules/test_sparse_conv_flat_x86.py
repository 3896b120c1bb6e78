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


def _spec(x_shape, kw, out_hw, lanes):
    from tvm_sparse.schedules.sparse_conv_flat_x86 import FlatConvSpec

    pads, hw = (0, 0), x_shape[2:]
    return FlatConvSpec(x_shape, 8, out_hw, hw, pads, (1, 1), (1, 1), kw, 0, "int32", "int32",
                        1, False, None, 28, 1, 8, False, lanes=lanes)  # fmt: skip


def test_planes_kept_twice_only_where_vectors_would_split_lines_and_they_are_small():
    """16 lanes over 8-float plane rows (OW 10: GSC's cnn2) keep a second copy an odd number
    of rows later; 8 lanes, 16-float rows and large planes do not."""
    cnn2 = _spec((1, 64, 14, 14), 5, (10, 10), 16)
    assert cnn2.shift % 2 == 1 and cnn2.shift == 64 * 5 * cnn2.hq + 1
    assert cnn2.base_b % 16 == 0 and cnn2.base_b >= 2 * cnn2.shift * 8 - 8
    assert _spec((1, 64, 14, 14), 5, (10, 10), 8).shift == 0  # AVX2: 32-byte loads fit
    assert _spec((1, 8, 20, 20), 3, (18, 18), 16).shift == 0  # 16-float rows: aligned
    assert _spec((1, 64, 58, 58), 3, (56, 56), 16).shift == 0  # ResNet 56x56: megabytes


def test_odd_tap_rows_read_the_aligned_copy():
    """Every stored tap row of the cnn2 kernel starts its region-A vectors on 64 bytes."""
    import numpy as np

    from tvm_sparse.schedules.sparse_conv_x86 import sparse_conv2d

    w = np.random.default_rng(0).standard_normal((16, 8, 5, 5)).astype(np.float32)
    call = sparse_conv2d((1, 8, 14, 14), w, None, lanes=16, layout="flat")
    offs = call.consts[1].astype(np.int64)
    assert (offs * 8 % 16 == 0).all()  # wa = 8 floats a plane row
