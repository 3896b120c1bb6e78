"""What the CUDA kernel tests share: the target, compiling to CUDA source and to a cubin with
nvcc (no GPU needed), and running a kernel where a GPU exists."""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
import tvm

from tvm_sparse.target import resolve_target

from .reference import sparse_weight

CUDA = resolve_target("cuda")  # the GPU present, else sm_90
HAS_GPU = tvm.cuda(0).exist
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")


def weight(n, k, density, seed=0):
    return sparse_weight(np.random.default_rng(seed), (n, k), density)


def cuda_source(call) -> str:
    func = call.func.with_attr("global_symbol", "main")
    ex = tvm.compile(tvm.IRModule({"main": func}), target=CUDA)
    cuda = [m for m in ex.mod.imports if m.kind == "cuda"]
    assert cuda, "no CUDA device module was generated"
    return cuda[0].inspect_source()


def nvcc_compile(source: str) -> bytes:
    from tvm.support import nvcc

    with CUDA:
        return nvcc.compile_cuda(source, target_format="cubin", compiler="nvcc")


def reference(x, w, bias, activation):
    y = x.astype(np.float64) @ w.T.astype(np.float64)
    if bias is not None:
        y = y + bias
    if activation == "relu":
        y = np.maximum(y, 0)
    return y.astype(np.float32)


def run_gpu(call, x):
    if importlib.util.find_spec("cuda.bindings") is None:  # TVM's default NVRTC needs it
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    dev = tvm.cuda(0)
    func = call.func.with_attr("global_symbol", "main")
    mod = tvm.compile(tvm.IRModule({"main": func}), target=CUDA).jit()
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, np.float32), dev)
    mod["main"](*args, out)
    return out.numpy()
