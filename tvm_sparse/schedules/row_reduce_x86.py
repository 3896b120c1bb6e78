"""Sum or mean over the trailing axes of a tensor (global average pooling) for x86.

Why: TVM legalizes ``mean(x, axis=[2, 3])`` to a scalar reduction loop per channel, one add
chained on the last; dlight's CPU reduction rule does not vectorize it. EfficientNet-B0's
squeeze-excitation blocks pool 16 activations that way: 0.97 ms of the network, against 0.25 ms
in onnxruntime. Here each row (one channel of one sample) is summed in ``ACCUMULATORS`` vector
accumulators (independent adds, contiguous loads), then single vectors, a horizontal sum by
halving shuffles and a scalar tail under one vector. The tail was everything short of
``ACCUMULATORS`` vectors before: a 7x7 plane (49 values) was 49 chained scalar adds and
MobileNetV3's 576-channel pools took 10.6 us against 4 in onnxruntime (Zen 4).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .kernel import KernelCall, finish_opaque

ACCUMULATORS = 4
_MIN_PARALLEL_ELEMENTS = 1 << 15  # a parallel launch costs microseconds


def horizontal_sum(vector: tvm.tirx.PrimExpr, lanes: int) -> tvm.tirx.PrimExpr:
    """The sum of a vector's lanes by halving: log2(lanes) shuffle + add steps."""
    while lanes > 1:
        half = lanes // 2
        low = tvm.tirx.Shuffle([vector], list(range(half)))
        high = tvm.tirx.Shuffle([vector], list(range(half, lanes)))
        vector, lanes = low + high, half
    return vector


def row_reduce_kernel(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], axes: int, lanes: int,
    parallel: bool,
) -> tvm.tirx.PrimFunc:  # fmt: skip
    """``out = scale * (sum of x over its last ``axes`` axes)``; ``out_shape`` is the kept
    shape (with or without the reduced dims as 1). The scale is an argument (1 / row or 1)
    rather than a constant in the code: with only ``x`` and ``out``, Relax's reshape check
    (``HasReshapePattern``) asserts on block-free TIR."""
    rows = int(np.prod(in_shape[: len(in_shape) - axes], dtype=np.int64))
    k = int(np.prod(in_shape[len(in_shape) - axes :], dtype=np.int64))
    L, A = lanes, ACCUMULATORS
    step = L * A
    blocks = k // step
    vectors = (k - blocks * step) // L  # single vectors after the blocks
    done = blocks * step + vectors * L
    loop = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer(in_shape, "float32"),
        scale: T.Buffer((1,), "float32"),
        y: T.Buffer(out_shape, "float32"),
    ):
        xf = T.decl_buffer((rows * k,), "float32", data=x.data)
        yf = T.decl_buffer((rows,), "float32", data=y.data)
        for r in loop(rows):
            acc = T.alloc_buffer((step,), "float32", scope="local")
            total = T.alloc_buffer((1,), "float32", scope="local")
            for a in T.unroll(A):
                acc[T.ramp(a * L, 1, L)] = T.broadcast(T.float32(0), L)
            for b in range(blocks):
                for a in T.unroll(A):
                    acc[T.ramp(a * L, 1, L)] = (
                        acc[T.ramp(a * L, 1, L)] + xf[T.ramp(r * k + b * step + a * L, 1, L)]
                    )
            for a in T.unroll(A - 1):
                acc[T.ramp(0, 1, L)] = acc[T.ramp(0, 1, L)] + acc[T.ramp((a + 1) * L, 1, L)]
            for v in T.unroll(vectors):
                acc[T.ramp(0, 1, L)] = (
                    acc[T.ramp(0, 1, L)] + xf[T.ramp(r * k + blocks * step + v * L, 1, L)]
                )
            total[0] = horizontal_sum(acc[T.ramp(0, 1, L)], L)
            for e in range(k - done):
                total[0] = total[0] + xf[r * k + done + e]
            yf[r] = total[0] * scale[0]

    return finish_opaque(kernel)


def row_reduce(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...], axes: int, mean: bool, target=None
) -> KernelCall:
    """The kernel for ``sum`` / ``mean`` of a float32 tensor over its last ``axes`` axes."""
    from ..target import num_cores, vector_lanes

    if not 1 <= axes <= len(in_shape):
        raise ValueError(f"row_reduce: cannot reduce the last {axes} axes of {in_shape}")
    lanes = vector_lanes(target)
    elements = int(np.prod(in_shape, dtype=np.int64))
    rows = elements // max(int(np.prod(in_shape[len(in_shape) - axes :], dtype=np.int64)), 1)
    parallel = num_cores(target) > 1 and elements >= _MIN_PARALLEL_ELEMENTS and rows > 1
    func = row_reduce_kernel(tuple(in_shape), tuple(out_shape), axes, lanes, parallel)
    row = int(np.prod(in_shape[len(in_shape) - axes :], dtype=np.int64))
    return KernelCall(
        func=func,
        name=("mean" if mean else "sum") + "_rows_" + "x".join(map(str, in_shape)),
        consts=(np.array([1.0 / row if mean else 1.0], np.float32),),
        out_shape=tuple(out_shape),
        info={"kind": "row_reduce", "mean": mean, "axes": axes},
    )
