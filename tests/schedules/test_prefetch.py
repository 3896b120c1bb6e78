"""The spread prefetch: every line of the next weight block is requested once the current
block's steps are done, evenly, and never past the block."""

import pytest

from tvm_sparse.schedules._prefetch import spread_offset


@pytest.mark.parametrize(
    "steps, floats",
    [(33 * 1024, 1024 * 64), (7 * 4608, 4608 * 32), (100, 16 * 1000), (1000, 40), (5, 16)],
)
def test_spread_offset_covers_the_block_evenly(steps, floats):
    offsets = [spread_offset(step, steps, floats) for step in range(steps)]
    lines = -(-floats // 16)
    assert all(o % 16 == 0 and 0 <= o < lines * 16 for o in offsets)
    assert offsets == sorted(offsets)
    if steps >= lines:  # enough steps: every line of the block, none skipped
        assert {o // 16 for o in offsets} == set(range(lines))
    else:  # fewer steps than lines: an even subset, first and last kept apart
        assert len(set(offsets)) == steps and offsets[0] == 0
