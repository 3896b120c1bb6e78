"""The fuzz harness's quick subset: mutated real models through analyze, compile (llvm) and the
FPGA flow; no case may crash, raise through the CLI, hang, or give a wrong answer.

The full run (``python benchmarks/fuzz_models.py``: 2,000 / 300 / 30 cases) is a benchmark;
this subset keeps the same rules in ``make test`` (about a minute on one worker).
"""

from __future__ import annotations

import os
import random
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))

import fuzz_models  # noqa: E402


@pytest.fixture(scope="module")
def seeds():
    return {k: v for k, v in fuzz_models.seed_models().items() if k in ("mlp", "kwta_cnn")}


def test_every_mutation_applies(seeds):
    rng = random.Random(0)
    for name, mutate in fuzz_models.MUTATIONS.items():
        payload, extra = mutate(seeds["mlp"], rng)
        assert isinstance(payload, bytes) and payload, name
        assert all(isinstance(v, bytes) for v in extra.values())


@pytest.mark.slow
def test_fuzz_subset_has_no_disallowed_outcome(seeds):
    rng = random.Random(7)
    cases = (
        fuzz_models.make_cases(120, "analyze", seeds, rng)
        + fuzz_models.make_cases(16, "compile", seeds, rng)
        + fuzz_models.make_cases(2, "fpga", seeds, rng)
    )
    results = fuzz_models.run_all(cases, workers=1, timeout_s=120, memory_mb=6144)
    assert len(results) == len(cases)
    bad = [r for r in results if r.status in fuzz_models.DISALLOWED]
    assert not bad, fuzz_models.summary(results, 0)
    assert {r.status for r in results} <= {"ok", "error"}
