"""Vector expressions that degrade to scalars at one lane, and a strided row copy by vector,
for the TVMScript kernels.

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


def row_copy_macro(n: int, stride: int, lanes: int):
    """Macro: ``dst[d0 + v] = src[s0 + v * stride]`` for ``v < n``, in ``lanes``-wide vectors.

    Why not one ``T.vectorized(n)`` loop: LLVM builds an ``n``-lane strided gather (112 lanes
    for a 224-pixel stem) through the stack. At stride 2 each output vector is the even lanes
    of two contiguous loads (one ``vpermt2ps``); the last vectors, whose odd lane would read
    one float past the last one needed, are gathered. A 3x3 stride-2 stem's planes filled so
    took 67 instead of 78 us, and RegNetX's stem in the model 270 instead of 361 (Zen 4)."""
    whole = (n - 1) // lanes if stride == 2 else n // lanes
    rest = n - whole * lanes
    evens = [2 * i for i in range(lanes)]

    @T.macro
    def copy(dst, d0, src, s0):
        for v in range(whole):
            if stride == 2:
                dst[T.ramp(d0 + v * lanes, 1, lanes)] = T.Shuffle(
                    [src[T.ramp(s0 + 2 * v * lanes, 1, 2 * lanes)]], evens
                )
            else:
                dst[T.ramp(d0 + v * lanes, 1, lanes)] = src[
                    T.ramp(s0 + v * lanes * stride, stride, lanes)
                ]
        if rest > 0:  # a 0-extent vectorized loop does not build
            for v in T.vectorized(rest):
                dst[d0 + whole * lanes + v] = src[s0 + (whole * lanes + v) * stride]

    return copy
