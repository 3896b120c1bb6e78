"""Dense float64 numpy references the kernel tests compare against (one copy for all of them)."""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def act(v: np.ndarray, activation: str | None) -> np.ndarray:
    """The fused epilogues: ReLU keeps NaN (as numpy and onnxruntime do), GELU in erf form."""
    if activation == "relu":
        return np.where(v < 0, 0.0, v)
    if activation == "gelu":
        return 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    return v


def linear_ref(x, w, bias=None, activation=None):
    """act(x @ w.T + bias) in float64; NaN / Inf weights give NaN rows, as expected."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = x.astype(np.float64) @ w.T.astype(np.float64)
    if bias is not None:
        y = y + bias
    return act(y, activation)
