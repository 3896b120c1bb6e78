"""Vector expressions that degrade to scalars at one lane, for the TVMScript kernels.

Why: the conv kernels size their vectors from the layer (a 1-pixel image, a 1-pixel tile), and
TIR has no 1-lane ramp or broadcast.
"""

from __future__ import annotations

from tvm.script import tirx as T


def run(first, lanes: int, stride: int = 1):
    """``lanes`` indices from ``first``, ``stride`` apart (``first`` itself at one lane)."""
    return T.ramp(first, stride, lanes) if lanes > 1 else first


def splat(value, lanes: int):
    """``value`` in every lane (itself at one lane)."""
    return T.broadcast(value, lanes) if lanes > 1 else value
