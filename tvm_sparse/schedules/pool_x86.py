"""Max / average pooling with a column stride of 2 (NCHW, x86): one output row at a time.

Why: TVM's window reduction vectorizes over output columns, so at stride 2 every tap is a
strided gather behind a padding select (Inception-v3's 64 x 147 x 147 3x3 s2 max pool:
1302 us at 1 thread against onnxruntime's 383; ResNet-50's 352 against 209). Here, per output
row, the window's input rows are reduced into a padded scratch row with contiguous vector
loads (the padding is the scratch's border, ``-inf`` or 0: no test per tap), then each vector
of outputs reads two vectors of the scratch per tap column and keeps their even lanes (one
two-source permute), reduces them, and stores whole vectors; the last ``OW % lanes`` outputs
are scalar.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .kernel import KernelCall, finish_opaque

_MIN_PARALLEL_ROWS = 64  # output rows below which a parallel launch does not pay


def strided_pool_kernel(
    x_shape: tuple[int, int, int, int], out_hw: tuple[int, int], kind: str,
    window: tuple[int, int], row_stride: int, padding: tuple[int, int, int, int], lanes: int,
    parallel: bool,
) -> tvm.tirx.PrimFunc:  # fmt: skip
    """The kernel: params ``x, divisor [OH, OW] (1 for max), y``; column stride 2."""
    bn, c, h, w = x_shape
    oh, ow = out_hw
    kh, kw = window
    top, left, _, _ = padding
    L = lanes
    width = -(-(max(2 * ow + kw + 2 * L, left + w) + 1) // L) * L  # the scratch row
    pad = T.float32(-np.inf) if kind == "max" else T.float32(0)
    evens = list(range(0, 2 * L, 2))
    rows = bn * c * oh
    loop = T.parallel if parallel and rows >= _MIN_PARALLEL_ROWS else T.serial
    full = w // L  # whole vectors of an input row

    def combine(a, b):
        return T.max(a, b) if kind == "max" else a + b

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, c, h, w), "float32"),
        divisor: T.Buffer((oh, ow), "float32"),
        y: T.Buffer((bn, c, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((bn * c * h * w,), "float32", data=x.data)
        yf = T.decl_buffer((bn * c * oh * ow,), "float32", data=y.data)
        df = T.decl_buffer((oh * ow,), "float32", data=divisor.data)
        for task in loop(rows):
            plane: T.let = task // oh  # n * c + channel
            oy: T.let = task % oh
            line = T.alloc_buffer((width,), "float32", scope="global")
            for q in range(width // L):
                line[T.ramp(q * L, 1, L)] = T.broadcast(pad, L)
            # 1. the window's input rows, reduced into the scratch at column offset `left`
            for ky in range(kh):
                r: T.let = oy * row_stride + ky - top
                if r >= 0 and r < h:
                    for v in range(full):
                        line[T.ramp(left + v * L, 1, L)] = combine(
                            line[T.ramp(left + v * L, 1, L)],
                            xf[T.ramp((plane * h + r) * w + v * L, 1, L)],
                        )
                    for e in range(w - full * L):
                        line[left + full * L + e] = combine(
                            line[left + full * L + e], xf[(plane * h + r) * w + full * L + e]
                        )
            # 2. output vectors: the even lanes of two scratch vectors per tap column
            out: T.let = task * ow
            for u in range(ow // L):
                acc = T.alloc_buffer((L,), "float32", scope="local")
                acc[T.ramp(0, 1, L)] = T.Shuffle([line[T.ramp(2 * u * L, 1, 2 * L)]], evens)
                for kx in range(1, kw):
                    acc[T.ramp(0, 1, L)] = combine(
                        acc[T.ramp(0, 1, L)],
                        T.Shuffle([line[T.ramp(2 * u * L + kx, 1, 2 * L)]], evens),
                    )
                if kind == "max":
                    yf[T.ramp(out + u * L, 1, L)] = acc[T.ramp(0, 1, L)]
                else:
                    yf[T.ramp(out + u * L, 1, L)] = (
                        acc[T.ramp(0, 1, L)] / df[T.ramp(oy * ow + u * L, 1, L)]
                    )
            for j in range(ow // L * L, ow):
                total = T.alloc_buffer((1,), "float32", scope="local")
                total[0] = line[2 * j]
                for kx in range(1, kw):
                    total[0] = combine(total[0], line[2 * j + kx])
                if kind == "max":
                    yf[out + j] = total[0]
                else:
                    yf[out + j] = total[0] / df[oy * ow + j]

    return kernel


def strided_pool(
    x_shape: tuple[int, int, int, int], out_hw: tuple[int, int], kind: str,
    window: tuple[int, int], row_stride: int, padding: tuple[int, int, int, int],
    divisor: np.ndarray, lanes: int, num_cores: int,
) -> KernelCall:  # fmt: skip
    """The pool as a ``KernelCall``: consts ``(divisor,)`` (``[OH, OW]``; ones for max; an
    argument so the function has more than ``x`` and ``y``, see ``row_reduce_x86``)."""
    func = strided_pool_kernel(
        x_shape, out_hw, kind, window, row_stride, padding, lanes, num_cores > 1
    )
    name = f"{kind}_pool2d_s2_" + "x".join(map(str, x_shape))
    return KernelCall(
        func=finish_opaque(func),
        name=name,
        consts=(np.ascontiguousarray(divisor, dtype=np.float32),),
        out_shape=(x_shape[0], x_shape[1], *out_hw),
        info={"kind": "pool", "window": window, "strides": (row_stride, 2)},
    )
