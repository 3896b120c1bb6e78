"""Rewrite a bilinear ``resize2d`` into a gather over constant index and weight tables.

Why: TVM 0.27 lowers ``image.resize2d`` (method ``linear``) to one loop nest that recomputes,
for every output value, both source coordinates in float (floor, casts, clamps) and reads four
input values through them. The leftover rule vectorizes it, but the index arithmetic stays:
DeepLab's final 16x16 -> 128x128 upsampling of 21 channels took 972 us at 1 thread, 4x
onnxruntime's resize. The coordinates depend on the output row or column only, so they are
constants of the model: tables ``y0 / y1 / wy`` per output row and ``x0 / x1 / wx`` per output
column, computed here in float32 as TOPI computes them (``in = f(out)``, ``i0 = floor(in)``,
``w = in - i0``, indices clamped to the image). Two functions read them, in TOPI's lerp order
(so the values are TOPI's):

    cols[n, c, r, j] = lerp(x[n, c, r, x0[j]], x[n, c, r, x1[j]], wx[j])     # every input row
    out[n, c, i, j]  = lerp(cols[n, c, y0[i], j], cols[n, c, y1[i], j], wy[i])

The column stage gathers once per input row, not per output row; the row stage reads whole
rows (vector loads). Measured at 1 thread: DeepLab's upsampling 972 -> 244 us (61 + 183);
a UNet's last upsampling, which TVM fused with its skip concat, 1,659 -> 920-990 us in two
runs (columns 330-350, rows 145-155, and the concat, now a kernel of its own, 430-500).

Matched: ``resize2d`` with method ``linear``, layout NCHW, float32 data, static shapes, and a
coordinate mode of ``half_pixel``, ``pytorch_half_pixel``, ``align_corners`` or ``asymmetric``
(the ROI is read only by ``tf_crop_and_resize``, which is left alone, as are nearest and cubic).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import dtype_of, op_name, static_shape
from ..ir.rewrite import PlannedRewriter, keep_unfused, rewrite_bindings

MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")


def source_coordinates(
    in_size: int, out_size: int, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, w)`` per output position: the two source indices (clamped) and the weight
    of ``i1``, in float32 arithmetic as TOPI's ``get_inx`` and linear resize compute them."""
    f32 = np.float32
    out = np.arange(out_size, dtype=f32)
    scale = f32(in_size) / f32(out_size)
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out_size > 1):
        src = (out + f32(0.5)) * scale - f32(0.5)
    elif mode == "pytorch_half_pixel":
        src = np.zeros_like(out)
    elif mode == "align_corners":
        src = (f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)) * out
    elif mode == "asymmetric":
        src = scale * out
    else:
        raise ValueError(f"unsupported coordinate_transformation_mode {mode!r}")
    src = src.astype(f32)
    low = np.floor(src).astype(np.int64)
    weight = (src - low.astype(f32)).astype(f32)
    clamp = lambda i: np.clip(i, 0, in_size - 1).astype(np.int64)  # noqa: E731
    return clamp(low), clamp(low + 1), weight


def _plan_entry(var: relax.Var, value: relax.Expr):
    """``(x, (h, w), (out h, out w), mode)`` for a bilinear NCHW resize this pass rewrites."""
    if op_name(value) != "relax.image.resize2d":
        return None
    attrs = value.attrs
    if attrs.method != "linear" or attrs.layout != "NCHW":
        return None
    mode = str(attrs.coordinate_transformation_mode)
    if mode not in MODES or attrs.out_dtype not in (None, "", "float32"):
        return None
    x = value.args[0]
    shape, out_shape = static_shape(x), static_shape(var)
    if shape is None or out_shape is None or len(shape) != 4 or dtype_of(x) != "float32":
        return None
    if min(shape) < 1 or min(out_shape) < 1:
        return None
    return x, shape[2:], out_shape[2:], mode


def _columns_te(x, x0, x1, wx):
    """Every input row lerped at the output columns: ``[N, C, H, OW]``, TOPI's column lerp."""
    n, c, h, _ = x.shape
    ow = x0.shape[0]

    def value(b, ch, r, j):
        return x[b, ch, r, x0[j]] * (1.0 - wx[j]) + x[b, ch, r, x1[j]] * wx[j]

    return te.compute((n, c, h, ow), value, name="resize_columns")


def _rows_te(t, y0, y1, wy):
    """The output rows: two whole rows of ``t`` lerped, TOPI's row lerp (contiguous loads)."""
    n, c, _, ow = t.shape
    oh = y0.shape[0]

    def value(b, ch, i, j):
        return t[b, ch, y0[i], j] * (1.0 - wy[i]) + t[b, ch, y1[i], j] * wy[i]

    return te.compute((n, c, oh, ow), value, name="resize_rows")


@mutator
class _Rewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, entry) -> relax.Expr:
        x, (h, w), (oh, ow), mode = entry
        y0, y1, wy = (relax.const(t) for t in _tables(h, oh, mode))
        x0, x1, wx = (relax.const(t) for t in _tables(w, ow, mode))
        cols = self.builder_.emit_te(
            _columns_te, self.visit_expr(x), x0, x1, wx, primfunc_name_hint="resize_columns"
        )
        # opaque: fused into the row stage it would be inlined into every output again (four
        # gathers per value). Neither stage fuses into a following concatenate, as TVM's
        # resize did (UNet's skip concat is a kernel of its own, 430-500 us of the 1.66 ms)
        keep_unfused(self.builder_, cols)
        return self.builder_.emit_te(_rows_te, cols, y0, y1, wy, primfunc_name_hint="resize_rows")


def _tables(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, ...]:
    i0, i1, w = source_coordinates(in_size, out_size, mode)
    return i0.astype(np.int32), i1.astype(np.int32), w.astype(np.float32)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.SeparableResize")
class SeparableResize:
    """Every bilinear NCHW ``resize2d`` -> one gather-lerp function over constant tables."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_bindings(mod, _plan_entry, _Rewriter)
