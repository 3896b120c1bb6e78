"""Shared fixtures: the host target and small generated models written to a temp dir."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# Keep TVM's thread pool small and deterministic on the 2-core CI machine.
os.environ.setdefault("TVM_NUM_THREADS", "2")
# Under pytest-xdist (`make test`) every core runs a worker with its own 2-thread pool: idle pool
# threads must sleep, not spin, or they take the other workers' cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
# Kernel timings are cached per session, not in the user's home (no state leaks between runs).
os.environ["TVM_SPARSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tvm-sparse-test-cache-")


@pytest.fixture(scope="session")
def target():
    from tvm_sparse.target import resolve_target

    return resolve_target("llvm")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def ort_run(model, x: np.ndarray) -> np.ndarray:
    """onnxruntime's output for one input (the reference for end-to-end checks)."""
    import onnxruntime as ort

    payload = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    sess = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def fused_text(model, target: str = "llvm") -> str:
    """An ONNX model's Relax module after the Canonicalize, Sparsify and FuseKernels phases, as
    text: what a fusion pass left or made."""
    from tvm_sparse.frontend import import_onnx
    from tvm_sparse.passes.pipeline import pre_schedule_passes
    from tvm_sparse.target import resolve_target

    resolved = resolve_target(target)
    mod = import_onnx(model).mod
    with resolved:
        for phase in pre_schedule_passes(resolved)[:3]:
            mod = phase(mod)
    return mod.script()


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-3) -> None:
    """Relative to the output's scale: k-WTA/ReLU outputs contain many exact zeros."""
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)
