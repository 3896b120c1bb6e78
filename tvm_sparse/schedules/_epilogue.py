"""What every kernel builder shares: the fused activations and the bias constant.

One definition, so the CPU and CUDA kernels can never disagree on the NaN behaviour of ReLU or
the form of GELU.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from .vector_math import install_llvm_lowering, sigmoid_f32, silu_f32

ACTIVATIONS = (
    None, "relu", "gelu", "gelu_tanh", "relu6", "silu", "sigmoid", "hardswish", "hardsigmoid"
)  # fmt: skip
SQRT1_2 = 0.7071067811865476
SQRT_2_PI = 0.7978845608028654  # sqrt(2 / pi): the tanh-GELU's scale
GELU_TANH_CUBIC = 0.044715


def check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def epilogue(v, activation: str | None, lanes: int = 1):
    """act(v) as a TIR expression (``lanes``-wide); ReLU and ReLU6 keep NaN (like numpy /
    onnxruntime), GELU is the erf form, ``gelu_tanh`` the tanh approximation (GPT-2's
    ``0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))``), SiLU is v / (1 + exp(-v))
    (``vector_math.silu_f32``).
    Hard-sigmoid is torch's relu6(v + 3) / 6 and hard-swish v * relu6(v + 3) / 6 (ONNX
    HardSwish); both keep NaN (the ReLU6 selects), and hard-swish(-inf) is -inf * 0 = NaN, as
    onnxruntime computes it.
    A GELU installs the vector ``erf`` lowering for llvm builds (``vector_math``, idempotent):
    LLVM has no vector libm call for it, and a kernel builder that wrote an erf without it
    failed to build ("unknown intrinsic tirx.erf")."""

    def c(value: float):
        return T.float32(value) if lanes == 1 else T.broadcast(T.float32(value), lanes)

    # Select, not if_then_else: a branch per value mispredicts on data (a ReLU6 tail loop ran
    # 10x slower with two nested data-dependent branches)
    if activation == "relu":
        return T.Select(v < c(0), c(0), v)
    if activation == "gelu":
        install_llvm_lowering()
        return c(0.5) * v * (c(1) + T.erf(v * c(SQRT1_2)))
    if activation == "gelu_tanh":
        install_llvm_lowering()  # tanh as vector_math.tanh_f32
        inner = c(SQRT_2_PI) * (v + c(GELU_TANH_CUBIC) * (v * v * v))
        return c(0.5) * v * (c(1) + T.tanh(inner))
    if activation == "relu6":  # NaN stays NaN, as with ReLU
        return T.Select(v < c(0), c(0), T.Select(v > c(6), c(6), v))
    if activation in ("hardswish", "hardsigmoid"):
        u = v + c(3)
        gate = T.Select(u < c(0), c(0), T.Select(u > c(6), c(6), u)) * c(1 / 6)
        return v * gate if activation == "hardswish" else gate
    if activation == "silu":  # plain arithmetic: no exp call for LLVM (or CUDA) to lower
        return silu_f32(v)
    if activation == "sigmoid":
        return sigmoid_f32(v)
    return v


# Activations of ~40 vector ops: applied in a register tile's epilogue, beside its accumulators,
# they spill (a SiLU after a 1x1 conv of 16 -> 96 channels at 112x112 cost 534 us there, against
# 200 us as a second pass over the stored tile while it is in L1).
HEAVY_ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "sigmoid")


def register_activation(activation: str | None) -> str | None:
    """The activation a register-tile kernel applies before it stores: ``activation``, or None
    for a heavy one, which the kernel applies in a pass over the stored tile."""
    return None if activation in HEAVY_ACTIVATIONS else activation


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
