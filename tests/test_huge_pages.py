"""tvm_sparse.huge_pages: the tensors a model's kernels read move to 2 MiB pages after the
first call, with their contents and the model's results unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_sparse
from tvm_sparse import huge_pages, models

MB = 1 << 20


def test_huge_chunks_are_the_whole_aligned_pieces_of_the_joined_spans():
    base = 64 * MB
    # one 5 MiB span from 1 MiB past a boundary: its whole pieces are at 2 and 4 MiB
    assert huge_pages.huge_chunks([(base + MB, 5 * MB)]) == [base + 2 * MB, base + 4 * MB]
    # two spans a few KB apart are joined; one far away stands alone
    near = [(base, 3 * MB), (base + 3 * MB + 4096, 3 * MB), (base + 40 * MB, MB)]
    assert huge_pages.huge_chunks(near) == [base, base + 2 * MB, base + 4 * MB]
    assert huge_pages.huge_chunks([(base + 1, 2 * MB)]) == []  # no whole piece
    assert huge_pages.huge_chunks([(base, 0)]) == []


def _anon_huge_kb(address: int) -> int:
    """AnonHugePages of the mapping that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


def test_collapse_moves_an_array_to_huge_pages_and_keeps_its_values():
    if not huge_pages.wanted(tvm.cpu()):
        pytest.skip("no transparent huge pages on this host")
    values = np.arange(12 * MB // 4, dtype=np.float32)
    before = values.copy()
    moved = huge_pages.collapse([(values.ctypes.data, values.nbytes)])
    if moved == 0:
        pytest.skip("MADV_COLLAPSE is not available (Linux < 6.1)")
    assert moved >= 8 * MB  # 12 MiB from any address hold at least 5 whole 2 MiB pieces
    assert _anon_huge_kb(values.ctypes.data + 6 * MB) >= 2048
    np.testing.assert_array_equal(values, before)


def test_a_module_collapses_its_tensors_on_the_first_call_only(monkeypatch):
    if not huge_pages.wanted(tvm.cpu()):
        pytest.skip("no transparent huge pages on this host")
    model = models.pruned_mlp(layers=2, hidden=1024, density=1.0, batch=1)  # 4 MiB weights
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    module = tvm_sparse.compile(model, "llvm", measure=False)
    collapsed = []
    real = huge_pages.collapse
    monkeypatch.setattr(
        huge_pages, "collapse", lambda spans: collapsed.append(spans) or real(spans)
    )
    first, second = module.run(x), module.run(x)
    assert len(collapsed) == 1  # once, on the first call
    biggest = max(size for _, size in collapsed[0])
    assert biggest >= 1024 * 1024 * 4  # a layer's dense weight was among the tensors read
    monkeypatch.setenv("TVM_SPARSE_HUGE_PAGES", "0")
    plain = tvm_sparse.compile(model, "llvm", measure=False)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, plain.run(x))
    assert len(collapsed) == 1  # turned off: no collapse


def test_huge_pages_only_for_cpu_and_when_asked(monkeypatch):
    assert not huge_pages.wanted(tvm.cuda())
    monkeypatch.setenv("TVM_SPARSE_HUGE_PAGES", "0")
    assert not huge_pages.wanted(tvm.cpu())
