"""Rewrite a 2-D max / average pooling into a row stage and a column stage.

Why: TVM 0.27 lowers ``nn.max_pool2d`` / ``nn.avg_pool2d`` to one window reduction per output
with the padding tested inside it; the leftover rule vectorizes it over output columns, each
window step a select per tap (at stride 2 a strided gather too). Inception-v3's pools took
3.9 ms at 1 thread against onnxruntime's 1.4 (the 768 x 17 x 17 3x3 s1 average pools 371 us
against 61 each; separable, 160). A box window is separable:

    rows[n, c, i, v] = reduce over kh of x[n, c, i * sh + kh - top, v - left]   # padded columns
    out[n, c, i, j]  = reduce over kw of rows[n, c, i, j * sw + kw]              # / count

The row stage reads whole input rows (vector loads, the padding a per-row test); the column
stage reduces ``kw`` neighbours of one short row. A k x k window costs 2k operations per
output instead of k^2.

Column stride 2 takes a hand kernel instead (``schedules.pool_x86``: the window's rows reduced
into a padded scratch row, then even-lane permutes): as TE stages the column stage read every
other value and both stages' vector widths were whatever divided the row (111 columns: 37
lanes), and lost to TVM's window reduction (SqueezeNet's 3x3 s2 max pool 403 us against 258;
the kernel: 135, onnxruntime 159). Other strides stay TVM's.

Matched: NCHW, float32, static shapes, no dilation; max pooling (padding and ``ceil_mode``
overhang are ``-inf``), and average pooling without ``ceil_mode`` (the divisor is the window,
or with ``count_include_pad`` false the window's inside part: rows inside x columns inside).
The max is exact; the average sums in another order than TOPI (float rounding).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, int_tuple, op_name, static_shape
from ..ir.rewrite import PlannedRewriter, call_kernel, keep_unfused, plan_bindings
from ..schedules.pool_x86 import strided_pool
from ..target import num_cores, vector_lanes
from .cpu_only import CpuRewrite

OPS = {"relax.nn.max_pool2d": "max", "relax.nn.avg_pool2d": "avg"}


def _plan_entry(var: relax.Var, value: relax.Expr):
    """``(x, kind, window, strides, padding, count_include_pad)`` for a pool this pass takes."""
    kind = OPS.get(op_name(value))
    if kind is None:
        return None
    attrs = value.attrs
    if attrs.layout != "NCHW" or attrs.out_layout not in ("NCHW", "", None):
        return None
    if int_tuple(attrs.dilation) != (1, 1) or (kind == "avg" and attrs.ceil_mode):
        return None
    x = value.args[0]
    shape, out_shape = static_shape(x), static_shape(var)
    if shape is None or out_shape is None or len(shape) != 4 or dtype_of(x) != "float32":
        return None
    window, strides = int_tuple(attrs.pool_size), int_tuple(attrs.strides)
    padding = int_tuple(attrs.padding)
    if len(window) != 2 or len(strides) != 2 or len(padding) != 4 or min(shape) < 1:
        return None
    if strides[1] not in (1, 2) or (strides[1] == 1 and strides[0] != 1):
        return None  # see the module docstring: other strides stay TVM's
    return x, kind, window, strides, padding, bool(attrs.count_include_pad), out_shape[2:]


def _combine(kind: str, terms: list) -> tirx.PrimExpr:
    """The window's terms reduced in order: their max, or their sum (average)."""
    total = terms[0]
    for term in terms[1:]:
        total = tirx.max(total, term) if kind == "max" else total + term
    return total


def _rows_te(x, kind: str, kh: int, sh: int, top: int, left: int, out_h: int, width: int):
    """The ``kh`` rows of each output row's window reduced: ``[N, C, OH, width]`` over the
    padded columns (outside the image: ``-inf`` for max, 0 for average)."""
    n, c, h, w = (int(d) for d in x.shape)
    pad = tirx.const(-np.inf if kind == "max" else 0.0, "float32")
    # tests only where a window reaches past the image (they keep LLVM from vectorizing)
    rows_past = top > 0 or (out_h - 1) * sh + kh - top > h
    cols_past = left > 0 or width - left > w

    def value(b, ch, i, v):
        col = v - left
        col_tests = [col >= 0, col < w] if cols_past else []
        terms = []
        for k in range(kh):
            r = i * sh + k - top
            tests = ([r >= 0, r < h] if rows_past else []) + col_tests
            if tests:
                terms.append(te.if_then_else(tirx.all(*tests), x[b, ch, r, col], pad))
            else:
                terms.append(x[b, ch, r, col])
        return _combine(kind, terms)

    return te.compute((n, c, out_h, width), value, name="pool_rows")


def _cols_te(rows, kind: str, kw: int, sw: int, out_w: int, divisor=None):
    """The ``kw`` neighbours of each output column reduced (and divided, for average)."""
    n, c, out_h, _ = (int(d) for d in rows.shape)

    def value(b, ch, i, j):
        total = _combine(kind, [rows[b, ch, i, j * sw + k] for k in range(kw)])
        if divisor is None:
            return total
        return total / divisor[i, j]

    return te.compute((n, c, out_h, out_w), value, name="pool_columns")


def _inside_counts(size: int, window: int, stride: int, before: int, outputs: int) -> np.ndarray:
    """Per output position, how many of its window's taps fall inside the input."""
    starts = np.arange(outputs) * stride - before
    lows, highs = np.maximum(starts, 0), np.minimum(starts + window, size)
    return np.maximum(highs - lows, 0)


def average_divisor(shape, window, strides, padding, include_pad: bool, out_hw) -> np.ndarray:
    """``[OH, OW]`` divisors: the window size, or (``count_include_pad`` false) the number of
    the window's taps inside the image, rows inside times columns inside."""
    (kh, kw), (sh, sw) = window, strides
    top, left, _, _ = padding
    if include_pad:
        return np.full(out_hw, float(kh * kw), dtype=np.float32)
    rows = _inside_counts(shape[2], kh, sh, top, out_hw[0])
    cols = _inside_counts(shape[3], kw, sw, left, out_hw[1])
    return np.maximum(np.outer(rows, cols), 1).astype(np.float32)


@mutator
class _Rewriter(PlannedRewriter):
    def __init__(self, plan: dict, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(plan, mod)
        self.target = target

    def replacement(self, var: relax.Var, entry) -> relax.Expr:
        x, kind, (kh, kw), (sh, sw), padding, include_pad, (oh, ow) = entry
        shape = static_shape(x)
        if sw == 2:
            return self._strided_pool(self.visit_expr(x), shape, entry)
        top, left, _, _ = padding
        width = (ow - 1) * sw + kw  # the padded columns the column stage reads
        rows = self.builder_.emit_te(
            _rows_te, self.visit_expr(x), kind, kh, sh, top, left, oh, width,
            primfunc_name_hint="pool_rows",
        )  # fmt: skip
        keep_unfused(self.builder_, rows)  # else inlined into every output again
        divisor = None
        if kind == "avg":
            table = average_divisor(shape, (kh, kw), (sh, sw), padding, include_pad, (oh, ow))
            divisor = relax.const(table)
        return self.builder_.emit_te(
            _cols_te, rows, kind, kw, sw, ow, divisor, primfunc_name_hint="pool_columns"
        )

    def _strided_pool(self, x: relax.Expr, shape, entry) -> relax.Expr:
        """The column-stride-2 kernel of ``schedules.pool_x86``, called on ``x``."""
        _, kind, window, strides, padding, include_pad, out_hw = entry
        if kind == "avg":
            divisor = average_divisor(shape, window, strides, padding, include_pad, out_hw)
        else:
            divisor = np.ones(out_hw, dtype=np.float32)
        kernel = strided_pool(
            shape, out_hw, kind, window, strides[0], padding, divisor,
            vector_lanes(self.target), num_cores(self.target),
        )  # fmt: skip
        args = [x, *(relax.const(c) for c in kernel.consts)]
        return call_kernel(self.builder_, kernel.func, kernel.name, args, kernel.out_shape)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.SeparablePool")
class SeparablePool(CpuRewrite):
    """Every NCHW max / average ``pool2d`` left after the sparse rewrites -> a row stage and a
    column stage, on CPU targets (the FPGA and CUDA backends read the pool ops themselves)."""

    def rewriter_for(
        self, func: relax.Function, mod: tvm.IRModule, target: tvm.target.Target
    ) -> _Rewriter | None:
        plan = plan_bindings(func, _plan_entry)
        return _Rewriter(plan, mod, target) if plan else None
