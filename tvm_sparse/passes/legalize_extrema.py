"""Float ``max`` / ``min`` reductions start from -inf / +inf: a row of -inf reduces to -inf.

Why: TVM legalizes ``relax.max`` / ``relax.min`` with topi, whose reduction starts from the
dtype's lowest (highest) finite value, so max over ``[-inf, -inf]`` is -3.4e38 (numpy and
onnxruntime: -inf). ONNX's Attention (opset 23+) masks with -inf and zeroes the rows where
``max(mask) == -inf``; with TVM's max those fully masked rows came out NaN (4 of ONNX's expanded
attention cases, compiled for their shapes). Integer dtypes, and reductions over an empty axis,
keep TVM's rule (``LegalizeOps``' default for the op).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm
from tvm import relax, te, tirx

_OPS = ("relax.max", "relax.min")


def _reduction(x: te.Tensor, axis, keepdims: bool, is_max: bool) -> te.Tensor:
    ndim = len(x.shape)
    axes = list(range(ndim)) if axis is None else sorted({int(a) % ndim for a in axis})
    start = -math.inf if is_max else math.inf

    def combine(a, b):
        return tirx.max(a, b) if is_max else tirx.min(a, b)

    reducer = te.comm_reducer(combine, lambda dtype: tirx.const(start, dtype), name="extremum")
    raxes = {a: te.reduce_axis((0, x.shape[a]), name=f"k{a}") for a in axes}
    if keepdims:
        out_shape = [1 if i in raxes else x.shape[i] for i in range(ndim)]
    else:
        out_shape = [x.shape[i] for i in range(ndim) if i not in raxes]

    def body(*index):
        kept = iter(index)
        at = []
        for i in range(ndim):
            if i in raxes:
                at.append(raxes[i].var)
                if keepdims:
                    next(kept)
            else:
                at.append(next(kept))
        return reducer(x[tuple(at)], axis=list(raxes.values()))

    return te.compute(out_shape, body, name="max" if is_max else "min")


def _legalize(op_name: str) -> Callable:
    default = tvm.ir.Op.get(op_name).get_attr("FLegalize")
    is_max = op_name == "relax.max"

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        x = call.args[0]
        ty = getattr(x, "ty", None)
        shape = getattr(ty, "shape", None)
        if (
            not isinstance(ty, relax.TensorType)
            or not str(ty.dtype).startswith(("float", "bfloat"))
            or not isinstance(shape, relax.ShapeExpr)
        ):
            return default(bb, call)
        dims = shape.values
        axes = range(len(dims)) if call.attrs.axis is None else call.attrs.axis
        if any(isinstance(dims[int(a) % len(dims)], tirx.IntImm) and
               int(dims[int(a) % len(dims)]) == 0 for a in axes):  # fmt: skip
            return default(bb, call)
        return bb.call_te(
            _reduction, x, call.attrs.axis, bool(call.attrs.keepdims), is_max,
            primfunc_name_hint="max" if is_max else "min",
        )  # fmt: skip

    return legalize


def float_extrema_legalizations() -> dict[str, Callable]:
    """``LegalizeOps``' ``customize_legalize_map`` entries for float max / min."""
    return {name: _legalize(name) for name in _OPS}
