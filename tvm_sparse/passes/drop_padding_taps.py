"""Drop the kernel rows and columns of a dilated conv that only ever read zero padding.

Why: an atrous conv whose dilation reaches past the image (DeepLab's ASPP at rate 18 on a
16x16 feature map, padding 18) has taps that fall in the padding for every output: their
products are all ``w * 0``. Every conv kernel here computes them anyway: the rate-18 3x3 conv
(256 -> 128 channels) took 1.50 ms at 1 thread, where its one live tap is a 1x1 conv of about
0.1 ms. For kernel row ``a`` (dilation ``d``, stride ``s``, top padding ``p``) output row ``y``
reads input row ``y * s - p + a * d``; a row whose reads all miss ``[0, H)`` contributes
nothing. Live rows form one run (the read window slides with ``a``), so the conv becomes the
same conv with that run of rows (and of columns) and the padding shifted by the rows cut:
the same output shape and, for finite weights, the same values (each cut product was
``w * 0 = 0``).

Matched: ``conv2d`` NCHW / OIHW with a constant float32 weight and static shapes. A weight
that is not finite in a cut tap keeps the conv as it is (``inf * 0`` is NaN there).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.relax_utils import constant_weight_conv, int_tuple
from ..ir.rewrite import PlannedRewriter, rewrite_bindings


def live_taps(
    size: int, out: int, k: int, stride: int, pad_before: int, dilation: int
) -> tuple[int, int]:
    """``(first, last)`` kernel index along one axis that reads the image for some output;
    ``(0, k - 1)`` when every tap does; ``first > last`` when none does."""
    live = [
        a
        for a in range(k)
        if a * dilation - pad_before < size and (out - 1) * stride - pad_before + a * dilation >= 0
    ]
    return (live[0], live[-1]) if live else (1, 0)


def _cut(
    live: tuple[int, int], k: int, dilation: int, before: int, after: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The taps kept on one axis and the new paddings: the dead run before the live taps is cut
    when the padding before stays >= 0, the run after likewise (conv2d has no negative
    padding); no live tap at all keeps the axis (the output is the bias: rare, left alone)."""
    first, last = live
    if first > last:
        return (0, k - 1), (before, after)
    if before - first * dilation < 0:
        first = 0
    if after - (k - 1 - last) * dilation < 0:
        last = k - 1
    return (first, last), (before - first * dilation, after - (k - 1 - last) * dilation)


def _plan_entry(var: relax.Var, value: relax.Expr):
    found = constant_weight_conv(var, value, "relax.nn.conv2d", ("NCHW", "OIHW", "NCHW"))
    if found is None:
        return None
    x, weight, x_shape, out_shape = found
    attrs = value.attrs
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw) = int_tuple(attrs.strides), int_tuple(attrs.dilation)
    top, left, bottom, right = int_tuple(attrs.padding)
    (r0, r1), (top, bottom) = _cut(
        live_taps(x_shape[2], out_shape[2], kh, sh, top, dh), kh, dh, top, bottom
    )
    (c0, c1), (left, right) = _cut(
        live_taps(x_shape[3], out_shape[3], kw, sw, left, dw), kw, dw, left, right
    )
    if (r0, r1, c0, c1) == (0, kh - 1, 0, kw - 1):
        return None
    cut = np.ones((kh, kw), bool)
    cut[r0 : r1 + 1, c0 : c1 + 1] = False
    if not np.isfinite(weight[:, :, cut]).all():
        return None  # a non-finite weight in a cut tap: inf * 0 is NaN, not 0
    kept = weight[:, :, r0 : r1 + 1, c0 : c1 + 1]
    padding = (top, left, bottom, right)
    conv = {
        "strides": (sh, sw),
        "padding": padding,
        # one tap left on an axis: its dilation means nothing (a 1x1 conv is then pointwise)
        "dilation": (dh if kept.shape[2] > 1 else 1, dw if kept.shape[3] > 1 else 1),
        "groups": int(attrs.groups),
        "data_layout": "NCHW",
        "kernel_layout": "OIHW",
        "out_dtype": attrs.out_dtype,
    }
    return x, np.ascontiguousarray(kept), conv


@mutator
class _Rewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, entry) -> relax.Expr:
        x, kept, conv = entry
        return relax.op.nn.conv2d(self.visit_expr(x), relax.const(kept), **conv)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.DropPaddingTaps")
class DropPaddingTaps:
    """Every conv2d with kernel rows / columns that read only padding -> the conv without them."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_bindings(mod, _plan_entry, _Rewriter)
