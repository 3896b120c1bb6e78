"""What every kernel builder shares: the fused activations and the bias constant.

One definition, so the CPU and CUDA kernels can never disagree on the NaN behaviour of ReLU or
the form of GELU.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from .vector_math import install_llvm_lowering

ACTIVATIONS = (None, "relu", "gelu", "relu6")
SQRT1_2 = 0.7071067811865476


def check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def epilogue(v, activation: str | None, lanes: int = 1):
    """act(v) as a TIR expression (``lanes``-wide); ReLU and ReLU6 keep NaN (like numpy /
    onnxruntime), GELU is the erf form. A GELU installs the vector ``erf`` lowering for llvm
    builds (``vector_math``, idempotent): LLVM has no vector libm call for it, and a kernel
    builder that wrote an erf without it failed to build ("unknown intrinsic tirx.erf")."""

    def c(value: float):
        return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)

    # Select, not if_then_else: a branch per value mispredicts on data (a ReLU6 tail loop ran
    # 10x slower with two nested data-dependent branches)
    if activation == "relu":
        return T.Select(v < c(0), c(0), v)
    if activation == "gelu":
        install_llvm_lowering()
        return c(0.5) * v * (c(1) + T.erf(v * c(SQRT1_2)))
    if activation == "relu6":  # NaN stays NaN, as with ReLU
        return T.Select(v < c(0), c(0), T.Select(v > c(6), c(6), v))
    return v


def plus_bias(v, bias_v, has_bias: bool):
    """``v + bias_v`` when the kernel has a bias (both TIR expressions of the same lanes)."""
    return v + bias_v if has_bias else v


def bias_const(bias: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """The bias array passed to the kernel; a 1-element placeholder when there is none."""
    if bias is None:
        return np.zeros((1,), dtype=np.float32), False
    bias = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if bias.shape != (n,):
        raise ValueError(f"bias must have {n} entries, got {bias.shape}")
    return bias, True
