"""Knob-space helpers shared by the CPU families.

The sparse kernels are block-free TIR whose loop extents come from the packed weight, so
MetaSchedule cannot transform them: their schedule lives in the builders' keyword knobs
(register tile, batch tile, column panel, output tile, packing budget, parallel), and a family's
``knob_space`` lists the settings worth trying.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

from ..sparse_cuda import panel_tile_fits, pow2_at_least


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def product(**axes: list) -> list[dict]:
    """Every combination of the axes' values, the first axis varying slowest."""
    out: list[dict] = [{}]
    for name, values in axes.items():
        out = [{**o, name: v} for o in out for v in values]
    return out


def parallel_choices(cores: int) -> list[bool]:
    return [True, False] if cores > 1 else [False]


def panel_space(m: int, cores: int, block_cols: int) -> list[dict]:
    """CSR / BSR: the row / block kernel (``min_batch = m + 1``; ``row_batch`` rows per decoded
    chunk) or the transposed batch-panel kernel (``min_batch = m``; batch tile, panel width)."""
    par = parallel_choices(cores)
    small = product(min_batch=[m + 1], row_batch=[1, 2, 4] if m > 1 else [1], parallel=par)
    if m < 2:
        return small
    tiles = [t for t in (8, 16, 32, 64) if t <= round_up(m, 8)]
    cols = [None] + [c for c in (64, 128, 256, 512, 1024, 2048) if c >= block_cols]
    panel = product(min_batch=[m], m_tile=tiles, panel_cols=cols, row_block=[None, 64, 256])
    return small + [{**p, "parallel": q} for p in panel for q in par]


def cuda_panel_space(m: int, block_cols: int) -> list[dict]:
    """CUDA CSR / BSR: the warp-per-row kernel up to ``warp_batch`` rows, else shared-memory
    panel tiles of ``batch_tile`` samples x ``panel_cols`` columns; ``warps`` per block. Only
    settings whose panel fits the shared memory (the builder refuses the others)."""
    out = []
    batches = [1, 4, 8]
    # every warp_batch >= m picks the warp kernel: keep the first of them only
    batches = [b for b in batches if b < m] + [b for b in batches if b >= m][:1]
    for setting in product(
        warp_batch=batches, warps=[2, 4, 8], batch_tile=[None, 4, 8, 16, 32],
        panel_cols=[None, 256, 512, 1024],
    ):  # fmt: skip
        tile = setting["batch_tile"] or pow2_at_least(m)
        cols = setting["panel_cols"]
        if cols is not None and (cols < block_cols or not panel_tile_fits(cols, tile)):
            continue
        if m <= setting["warp_batch"] and (setting["batch_tile"] or setting["panel_cols"]):
            continue  # the warp kernel ignores the panel knobs: the same kernel again
        out.append(setting)
    return out


def cuda_sparse_sparse_space() -> list[dict]:
    """CUDA sparse-sparse: packing budget, threads per block, inputs per block, and where the
    accumulators live (shared memory when they fit, or global)."""
    return product(
        max_groups=[None, 4, 8, 16], threads=[128, 256, 512], chunk=[256, 512, 1024],
        shared_acc=[None, False],
    )  # fmt: skip


def settings_for(builder: Callable, space: list[dict]) -> list[dict]:
    """``{}`` then ``space``, each setting cut to the knobs ``builder`` takes, without repeats:
    a builder that loses a knob narrows the space instead of breaking the tuner."""
    params = set(inspect.signature(builder).parameters)
    out, seen = [{}], {"{}"}
    for setting in space:
        setting = {k: v for k, v in setting.items() if k in params}
        key = json.dumps(setting, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(setting)
    return out
