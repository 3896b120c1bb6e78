"""Back the tensors a CPU model's kernels read with 2 MiB pages (Linux transparent huge pages).

Why: an inference streams every weight once, ~100 MB for ResNet-50, mostly from memory. On
4 KiB pages each 4 KiB of that stream needs its own TLB entry, and the page walks add to the
weight-bound kernels' time (ResNet-50's 7x7 and 14x14 layers, classifiers). Neither TVM's
allocator nor glibc asks for huge pages, and most hosts give them only on request
(``transparent_hugepage=madvise``). Measured (Intel Xeon, AVX-512, 1 thread, one library
loaded twice in one process, in turns with onnxruntime): ResNet-50 0% 48.33 ms on 4 KiB pages,
47.42 ms with its weights collapsed into 2 MiB pages (1.012 -> 1.035x onnxruntime).

How: the first call of a module runs once with the VM's instrument, which hands over every
tensor each kernel reads (weights, activations); then ``madvise(MADV_COLLAPSE)`` moves each
whole 2 MiB-aligned piece of them into a huge page (Linux >= 6.1). Elsewhere, or with
``TVM_SPARSE_HUGE_PAGES=0``, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def wanted(device: Any) -> bool:
    """On for CPU devices on Linux, unless ``TVM_SPARSE_HUGE_PAGES=0`` or the host turned
    transparent huge pages off."""
    if os.environ.get("TVM_SPARSE_HUGE_PAGES", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if device.dlpack_device_type() != 1:  # kDLCPU
        return False
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


# spans this close are taken as one: what lies between two tensors allocated one after the
# other is the allocator's headers and padding (a chunk that is not mapped fails alone)
MERGE_GAP = 64 << 10


def huge_chunks(spans: Iterable[tuple[int, int]]) -> list[int]:
    """The 2 MiB-aligned chunks wholly inside the union of ``(address, bytes)`` spans, spans
    at most ``MERGE_GAP`` apart joined."""
    merged: list[list[int]] = []
    for start, size in sorted((int(a), int(n)) for a, n in spans if n > 0):
        if merged and start <= merged[-1][1] + MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], start + size)
        else:
            merged.append([start, start + size])
    chunks = []
    for lo, hi in merged:
        first = -(-lo // HUGE_PAGE) * HUGE_PAGE
        chunks.extend(range(first, hi - HUGE_PAGE + 1, HUGE_PAGE))
    return chunks


def collapse(spans: Iterable[tuple[int, int]]) -> int:
    """Move the whole 2 MiB pieces of ``spans`` into huge pages; the bytes moved (0 where the
    kernel cannot: before Linux 6.1, or memory that is not anonymous)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    moved = 0
    for chunk in huge_chunks(spans):
        madvise(chunk, HUGE_PAGE, _MADV_HUGEPAGE)
        if madvise(chunk, HUGE_PAGE, _MADV_COLLAPSE) == 0:
            moved += HUGE_PAGE
    return moved


def tensors_of_a_run(executable: Any, device: Any, args: tuple) -> tuple[Any, list]:
    """One run of ``main`` on ``args``: its result, and ``(address, bytes)`` of every tensor
    a kernel got."""
    from tvm import relax

    spans: dict[int, int] = {}

    def instrument(func, symbol, before_run, ret_value, *call_args) -> int:
        if before_run:
            for t in call_args:
                if hasattr(t, "shape") and hasattr(t, "data_ptr"):
                    size = int(np.prod(t.shape)) * np.dtype(str(t.dtype)).itemsize
                    spans[t.data_ptr()] = max(spans.get(t.data_ptr(), 0), size)
        return 0

    vm = relax.VirtualMachine(executable, device)
    vm.set_instrument(instrument)
    result = vm["main"](*args)
    return result, list(spans.items())


def collapse_on_first_call(executable: Any, device: Any, main: Callable) -> Callable:
    """``main``, whose first call runs the model instrumented instead and then collapses the
    tensors it read into huge pages (``collapse``); every later call is ``main``'s."""
    done = [False]

    def call(*args):
        if not done[0]:
            done[0] = True
            result, spans = tensors_of_a_run(executable, device, args)
            collapse(spans)
            return result
        return main(*args)

    return call
