"""On-disk cache of kernel timings, so re-compiling a model does not re-measure its kernels.

Keyed by the kernel's name, its PrimFunc's structural hash, a digest of its constant arrays (the
real sparsity structure), the activation density it was timed at, where its weights were
(``weights_residency``), the target, and the group of kernels it was timed with
(``group_keys``). It also remembers which kernels compiled
(``compile_key``: the PrimFunc, the target and TVM's version), so a kernel checked once is not
compiled again to be checked. Set ``TVM_SPARSE_CACHE_DIR`` to move it, or to an empty string to
turn it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import tvm
import tvm_ffi

from .candidate_run import TIMING_METHOD
from .kernel import KernelCall
from .weights_residency import DRAM

_LOCK = threading.Lock()
_MEMORY: dict[str, float] = {}
_FILE_NAME = "measurements.json"


def _cache_dir() -> str | None:
    value = os.environ.get("TVM_SPARSE_CACHE_DIR")
    if value is not None:
        return value or None
    return os.path.join(os.path.expanduser("~"), ".cache", "tvm-sparse")


def key(name: str, kernel: KernelCall, density: float | None, target: tvm.target.Target,
        weights_in: str = DRAM) -> str:  # fmt: skip
    """The key of a kernel's timing at input ``density`` with its weights in ``weights_in``."""
    digest = hashlib.sha1()
    digest.update(name.encode())
    digest.update(str(tvm_ffi.structural_hash(kernel.func)).encode())
    for const in kernel.consts:
        digest.update(str(const.dtype).encode() + str(const.shape).encode())
        digest.update(const.tobytes())
    digest.update(repr(None if density is None else round(density, 4)).encode())
    digest.update(str(target).encode())
    digest.update(TIMING_METHOD.encode())
    digest.update(weights_in.encode())
    return digest.hexdigest()


def compile_key(kernel: KernelCall, target: tvm.target.Target) -> str:
    """The key under which a kernel that compiled is remembered (its constants do not matter)."""
    digest = hashlib.sha1(b"compiles")
    digest.update(str(tvm_ffi.structural_hash(kernel.func)).encode())
    digest.update(str(target).encode())
    digest.update(str(tvm.__version__).encode())
    return digest.hexdigest()


def group_keys(keys: dict[str, str]) -> dict[str, str]:
    """The keys of kernels timed together, each tied to the whole group: a group hits the cache
    only as the same group (timings of one choice come from the same spell of the machine)."""
    group = hashlib.sha1("".join(sorted(keys.values())).encode()).hexdigest()
    return {name: hashlib.sha1((k + group).encode()).hexdigest() for name, k in keys.items()}


def _path() -> str | None:
    folder = _cache_dir()
    return None if folder is None else os.path.join(folder, _FILE_NAME)


def _load() -> dict[str, float]:
    path = _path()
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a corrupt cache is ignored, then rewritten


def get(cache_key: str) -> float | None:
    with _LOCK:
        if cache_key not in _MEMORY:
            _MEMORY.update(_load())
        return _MEMORY.get(cache_key)


def put(cache_key: str, seconds: float) -> None:
    with _LOCK:
        _MEMORY[cache_key] = seconds
        path = _path()
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = _load()
            data[cache_key] = seconds
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimization; a read-only home must not break compiles
