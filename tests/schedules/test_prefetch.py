"""The spread prefetch: every line of the next weight block is requested once the current
block's steps are done, evenly, and never past the block."""

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from tvm_sparse.schedules._prefetch import spread_offset
from tvm_sparse.target import resolve_target


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


@pytest.mark.parametrize(
    "steps, floats", [(64 * 20 * 1600, 1600 * 32), (2_048_007, 1600 * 32), (1000, 40)]
)
def test_spread_offset_in_tir_past_int32_products(steps, floats):
    """A batch-64 conv's steps times its block's lines pass 2**31 (2,048,000 x 3,200): the
    offset is still exact, and the kernel builds (int32 folding refused to)."""
    samples = np.linspace(0, steps - 1, 97).astype(np.int32)

    @T.prim_func
    def offsets(step: T.Buffer((97,), "int32"), out: T.Buffer((97,), "int32")):
        for i in range(97):
            out[i] = spread_offset(step[i], steps, floats)

    lib = tvm.tirx.build(tvm.IRModule({"main": offsets}), target=resolve_target("llvm"))
    out = tvm.runtime.tensor(np.zeros(97, np.int32))
    lib["main"](tvm.runtime.tensor(samples), out)
    np.testing.assert_array_equal(
        out.numpy(), [spread_offset(int(s), steps, floats) for s in samples]
    )
