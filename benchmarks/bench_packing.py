"""Complementary packing and pattern detection: quality (groups, fill, residual) and time.

Usage: ``python benchmarks/bench_packing.py [--repeats 5]``. Prints one table. Times are the
median of ``--repeats`` runs on this (shared, noisy) machine; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tvm_sparse.formats.complementary import ComplementaryPacked
from tvm_sparse.formats.patterns import detect_patterns
from tvm_sparse.sparsify import complementary_mask, random_mask


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def weight(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(mask.shape).astype(np.float32)
    return np.where(mask, values, np.float32(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cases = [
        ("random 5% 1500x1600", random_mask((1500, 1600), 0.05, seed=0), {}),
        (
            "random 5%, whole rows only",
            random_mask((1500, 1600), 0.05, seed=0),
            {"backfill": False},
        ),
        (
            "random 5%, whole rows, G=75",
            random_mask((1500, 1600), 0.05, seed=0),
            {"backfill": False, "max_groups": 75},
        ),
        ("complementary 5% 1500x1600", complementary_mask((1500, 1600), 0.05, seed=0), {}),
        ("random 10% 1000x1600", random_mask((1000, 1600), 0.10, seed=0), {}),
        ("random 20% conv 64x64x5x5", random_mask((64, 64, 5, 5), 0.2, seed=0), {}),
        ("complementary 20% conv 64x64x5x5", complementary_mask((64, 64, 5, 5), 0.2, seed=0), {}),
    ]
    header = (
        "weight",
        "nnz",
        "groups",
        "fill",
        "residual nnz",
        "residual %",
        "whole rows",
        "pack ms",
        "round trip",
    )
    rows = [header]
    for name, mask, options in cases:
        w = weight(mask)
        seconds, packed = median_seconds(
            lambda w=w, o=options: ComplementaryPacked.from_conv_weight(w, **o), args.repeats
        )
        exact = np.array_equal(packed.to_dense(), w)
        rows.append(
            (
                name,
                f"{packed.nnz:,}",
                str(packed.n_groups),
                f"{packed.fill_ratio:.1%}",
                f"{packed.residual_nnz:,}",
                f"{packed.residual_fraction:.2%}",
                f"{packed.whole_row_fraction:.1%}",
                f"{seconds * 1e3:.1f}",
                "exact" if exact else "MISMATCH",
            )
        )
    print_table(rows)

    print()
    rows = [("detect_patterns on", "summary", "complementary groups", "ms")]
    for n, density in ((2048, 0.05), (2048, 0.5), (4096, 0.05), (4096, 0.3)):
        w = weight(random_mask((n, n), density, seed=1))
        seconds, found = median_seconds(lambda w=w: detect_patterns(w), max(1, args.repeats // 2))
        rows.append(
            (
                f"random {density:.0%} {n}x{n}",
                found.summary,
                str(found.complementary.groups),
                f"{seconds * 1e3:.0f}",
            )
        )
    print_table(rows)


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
