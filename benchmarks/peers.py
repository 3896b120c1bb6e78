"""The benchmark scripts' peers: the runners and timing loops of ``tvm_sparse.peers`` (which
also serves DeepSparse from its own venv), plus the table helpers the scripts print with.

The runners moved into the package so ``tvm-sparse benchmark`` can use them; this module keeps
``from peers import ...`` working for the scripts here.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from tvm_sparse.peers import (
    DEEPSPARSE_PYTHON,
    REPO_ROOT,
    DeepSparseRunner,
    OrtRunner,
    median_time,
    sample_calls,
)

__all__ = [
    "DEEPSPARSE_PYTHON",
    "REPO_ROOT",
    "DeepSparseRunner",
    "OrtRunner",
    "median_time",
    "print_table",
    "ratio_summary",
    "sample_calls",
]


def ratio_summary(peer: Sequence[float], ours: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) over rounds of peer time / our time, each pair from the same round."""
    ratios = [p / o for p, o in zip(peer, ours, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Print `rows` (dicts) as an aligned Markdown table of `columns`; returns the text.

    Missing values and None print as "-", floats with 4 significant digits.
    """
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)) + " |"

    text = "\n".join(
        [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in cells]
    )
    print(text)
    return text
