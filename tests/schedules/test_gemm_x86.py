"""The GEMM micro-kernel's packing and tile choices (the kernels run in test_dense_x86)."""

from __future__ import annotations

import numpy as np

from tvm_sparse.schedules.dense_conv_x86 import choose_conv_tiling
from tvm_sparse.schedules.gemm_x86 import choose_tiling, pack_gemm_panels


def test_pack_gemm_panels_layout_and_padding():
    w = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    packed = pack_gemm_panels(w, 4)
    assert packed.shape == (2, 3, 4)
    np.testing.assert_array_equal(packed[1, :, 0], w[4])
    np.testing.assert_array_equal(packed[1, :, 1:], 0)
    np.testing.assert_array_equal(packed[0, 2], w[:4, 2])


def test_tiling_choices_keep_enough_accumulators():
    assert choose_tiling(1, 2048).nb * choose_tiling(1, 2048).mr >= 64
    assert choose_tiling(1, 12).nb == 16  # no padding a 12-output layer to 64
    assert choose_tiling(64, 2048).mr in (4, 5, 6)
    # AVX-512: two zmm vectors a row and up to 8 rows (16 of the 32 registers accumulate)
    wide = choose_tiling(128, 384, lanes=16)
    assert (wide.mr, wide.nb, wide.k_unroll) == (8, 32, 4)  # K unrolled 4 on whole zmm units
    assert choose_tiling(128, 384, lanes=8).k_unroll == 1
    assert choose_tiling(1, 2048, lanes=16).nb == 128  # still 8 vectors in flight
    assert choose_tiling(7, 12, lanes=16).nb == 16
    # 512-bit ops in two halves (Zen 4): four vectors a row, four rows
    split = choose_tiling(128, 384, lanes=16, zmm_split=True)
    assert (split.mr, split.nb, split.k_unroll) == (4, 64, 1)
    assert choose_tiling(64, 20, lanes=16, zmm_split=True).nb == 32


def test_panel_widths_are_powers_of_two():
    """A 48-, 80- or 112-column panel ran 10-25x slower than a 64-column one: a 100-output
    layer at batch 1 took a 112-column panel (9.0 against 4.5 us)."""
    for lanes, split in ((8, False), (16, False), (16, True)):
        for rows in (1, 2, 3, 4, 7, 64):
            for cols in range(1, 300, 3):
                nb = choose_tiling(rows, cols, lanes=lanes, zmm_split=split).nb
                assert nb >= 16 and nb & (nb - 1) == 0, (lanes, split, rows, cols, nb)
                assert nb < 32 or nb // 2 < cols  # and no wider than the columns need
    assert choose_conv_tiling(10).mr == 5
    assert choose_conv_tiling(2).mr == 6  # whole rows: 3 rows of 2 pixels
    # AVX-512: 14-pixel row segments (28 zmm accumulators) where the row divides into them
    assert [choose_conv_tiling(w, lanes=16).mr for w in (28, 56, 112, 14)] == [14] * 4
    assert choose_conv_tiling(7, lanes=16).mr == 7  # not two 7-wide rows (no faster)
    assert choose_conv_tiling(16, lanes=16).mr == 8  # 16 = 2 x 8, 14 would compute 28
    assert choose_conv_tiling(4, lanes=16).mr == 8  # whole rows: 2 rows of 4 pixels
    # 6 pixels x 64 channels where rows divide badly by 7 and 14, if the channels fill it
    tile = choose_conv_tiling(17, lanes=16, channels_out=192)
    assert (tile.mr, tile.nb) == (6, 64)
    assert choose_conv_tiling(35, lanes=16, channels_out=64).nb == 64
    assert choose_conv_tiling(17, lanes=16, channels_out=32).nb == 32  # 32 would pad to 64
    assert choose_conv_tiling(28, lanes=16, channels_out=256).mr == 14
    assert choose_conv_tiling(17).nb == 16  # AVX2: one ymm panel pair as before
