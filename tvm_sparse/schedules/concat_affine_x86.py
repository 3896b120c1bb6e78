"""Channel concat with a per-channel affine and activation after it, as one copy (x86).

Why: TVM writes ``concat`` as one loop over the output whose value is an ``if_then_else`` chain
over the inputs, so each vector of the output evaluates every input's branch: DenseNet's
dense-block concats (up to 25 inputs) with the BatchNorm and ReLU after them (the
"pre-activation" of the next layer, which cannot fold into a conv) took 5.7 ms of a 47 ms
DenseNet-121 at 1 thread (Intel), about twice the time of reading and writing their tensors.
Here each input is copied into its channel range in a loop of its own: ``y[:, off + c] =
act(x_i[:, c] * scale[off + c] + shift[off + c])``, whole vectors along the positions, a
scalar loop for the rest.

The kernel has one parameter per input, so its TVMScript is written out as text for the
input count and parsed (TVMScript has no variadic parameters).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .kernel import KernelCall
from .kernel import finish as _finish

ACTIVATIONS = (None, "relu")
# Work (outputs) below which the channel loops stay serial: a parallel launch costs microseconds.
PARALLEL_MIN_OUTPUTS = 1 << 15


def _source(in_channels: list[int], n: int, h: int, w: int, activation: str | None,
            lanes: int, parallel: bool) -> str:  # fmt: skip
    """The TVMScript text of the kernel."""
    total = sum(in_channels)
    positions = h * w
    whole = positions // lanes * lanes
    loop = "T.parallel" if parallel else "T.serial"
    zero_v = f"T.broadcast(T.float32(0), {lanes})"

    def act(value: str, vector: bool) -> str:
        if activation is None:
            return value
        return f"T.max({value}, {zero_v if vector else 'T.float32(0)'})"

    params = [f"x{i}: T.Buffer(({n}, {c}, {h}, {w}), 'float32')" for i, c in enumerate(in_channels)]
    params += [
        f"scale: T.Buffer(({total},), 'float32')",
        f"shift: T.Buffer(({total},), 'float32')",
        f"y: T.Buffer(({n}, {total}, {h}, {w}), 'float32')",
    ]
    lines = [
        "@T.prim_func",
        f"def concat_affine({', '.join(params)}):",
        f"    yf = T.decl_buffer(({n * total * positions},), 'float32', data=y.data)",
    ]
    offset = 0
    for i, c in enumerate(in_channels):
        lines += [
            f"    x{i}f = T.decl_buffer(({n * c * positions},), 'float32', data=x{i}.data)",
            f"    for q{i} in {loop}({n * c}):",
            f"        oc{i} = {offset} + q{i} % {c}",
            f"        src{i} = q{i} * {positions}",
            f"        dst{i} = (q{i} // {c} * {total} + oc{i}) * {positions}",
        ]
        if whole:
            vx = f"x{i}f[T.ramp(src{i} + v{i} * {lanes}, 1, {lanes})]"
            value = (
                f"{vx} * T.broadcast(scale[oc{i}], {lanes}) + T.broadcast(shift[oc{i}], {lanes})"
            )
            lines += [
                f"        for v{i} in range({whole // lanes}):",
                f"            yf[T.ramp(dst{i} + v{i} * {lanes}, 1, {lanes})] = "
                + act(value, True),
            ]
        if whole < positions:
            value = f"x{i}f[src{i} + e{i}] * scale[oc{i}] + shift[oc{i}]"
            lines += [
                f"        for e{i} in range({whole}, {positions}):",
                f"            yf[dst{i} + e{i}] = " + act(value, False),
            ]
        offset += c
    return "\n".join(lines) + "\n"


def concat_affine_kernel(in_channels: list[int], n: int, h: int, w: int,
                         activation: str | None, lanes: int,
                         parallel: bool) -> tvm.tirx.PrimFunc:  # fmt: skip
    """The PrimFunc ``(x_0, ..., x_k, scale, shift, y)`` for NCHW inputs of ``in_channels``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"concat_affine: activation must be one of {ACTIVATIONS}")
    if not in_channels or min(in_channels) < 1 or min(n, h, w) < 1:
        raise ValueError(f"concat_affine: bad shapes {in_channels} x {n}x{h}x{w}")
    text = _source(list(in_channels), n, h, w, activation, lanes, parallel)
    func = tvm.script.from_source(text, extra_vars={"T": T})
    if isinstance(func, tvm.IRModule):
        func = func["concat_affine"]
    return _finish(func)


def concat_affine(x_shapes: list[tuple[int, int, int, int]], scale: np.ndarray,
                  shift: np.ndarray, activation: str | None, lanes: int,
                  cores: int) -> KernelCall:  # fmt: skip
    """``y = act(concat(xs, axis=1) * scale[c] + shift[c])`` for NCHW float32 inputs."""
    n, _, h, w = x_shapes[0]
    if any((s[0], s[2], s[3]) != (n, h, w) for s in x_shapes):
        raise ValueError(f"concat_affine: inputs differ outside the channels: {x_shapes}")
    channels = [int(s[1]) for s in x_shapes]
    total = sum(channels)
    scale = np.asarray(scale, np.float32).reshape(total)
    shift = np.asarray(shift, np.float32).reshape(total)
    parallel = cores > 1 and n * total * h * w >= PARALLEL_MIN_OUTPUTS
    func = concat_affine_kernel(channels, n, h, w, activation, lanes, parallel)
    return KernelCall(
        func=func,
        name="concat_affine",
        consts=(scale, shift),
        out_shape=(n, total, h, w),
        info={"inputs": len(channels), "activation": activation},
    )


__all__ = ["concat_affine", "concat_affine_kernel"]
