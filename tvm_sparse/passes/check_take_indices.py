"""Gathers check their indices: an index out of range is an error, as onnxruntime makes it.

Why: ``ClipTakeMode`` turns the frontend's fast-mode gathers into clamped ones, so an
out-of-range index cannot take the process down; but clamped, a token id past the vocabulary
silently reads the last row, where onnxruntime raises ("indices element out of data bounds").
Here an index tensor known only at run time first passes through a small kernel that checks
every index against the axis's extent (after the frontend's negative-index normalization, so
``[0, n)``) and fails the run with a message naming the gather's shapes; a constant index is
checked now, at compile time. A ``take`` that reads ONNX data always comes from a fast-mode
gather (the frontend writes no clamped one), so every clamped ``take`` is checked.

CPU targets only: a failed assert in a GPU kernel cannot report back; there the gather clamps.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

from ..errors import UnsupportedModelError
from ..ir.relax_utils import const_array, dtype_of, op_name, shape_dims
from ..schedules.kernel import finish_opaque
from ..target import is_cpu
from .flush_denormals import KEEP_FP_MODE


def _shape_text(dims: list) -> str:
    return "x".join(str(int(d)) if isinstance(d, tirx.IntImm) else str(d) for d in dims) or "scalar"


def check_kernel(dtype: str, extent: int, message: str, count: int | None) -> tirx.PrimFunc:
    """``(idx, out)``, 1-D of ``count`` elements (None: any): ``out = idx``, failing the call
    (with ``message``) at the first index outside ``[0, extent)``. Opaque to FuseOps: fused
    with a reshape, FuseTIR met a static and a symbolic buffer for one var and failed. A root
    block: RewriteDataflowReshape inspects every one-input call_tir and wants one. Outside
    FlushDenormals (``KEEP_FP_MODE``): a failed check returns before the caller's floating-point
    mode would be restored."""
    lo, hi = tirx.const(0, dtype), tirx.const(extent, dtype)
    if count is None:

        @T.prim_func(private=True, check_well_formed=False)
        def check(a: T.handle, b: T.handle):
            n = T.int64()
            idx = T.match_buffer(a, (n,), dtype)
            out = T.match_buffer(b, (n,), dtype)
            with T.sblock("root"):
                for i in range(n):
                    assert lo <= idx[i] and idx[i] < hi, message
                    out[i] = idx[i]

    else:

        @T.prim_func(private=True, check_well_formed=False)
        def check(idx: T.Buffer((count,), dtype), out: T.Buffer((count,), dtype)):
            with T.sblock("root"):
                for i in range(count):
                    assert lo <= idx[i] and idx[i] < hi, message
                    out[i] = idx[i]

    return finish_opaque(check).with_attr(KEEP_FP_MODE, True)


def _element_count(dims: list):
    """The number of elements of a tensor of ``dims``: an int when static, else a PrimExpr."""
    if all(isinstance(d, tirx.IntImm) for d in dims):
        return int(np.prod([int(d) for d in dims], dtype=np.int64))
    count = dims[0]
    for d in dims[1:]:
        count = count * d
    return count


@mutator
class _CheckTakes(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.kernels: dict[tuple, relax.GlobalVar] = {}

    def _kernel(self, dtype: str, extent: int, message: str, count) -> relax.GlobalVar:
        key = (dtype, extent, message, count if isinstance(count, int) else None)
        if key not in self.kernels:
            name = f"check_gather_indices_{len(self.kernels)}"
            self.kernels[key] = self.builder_.add_func(check_kernel(*key), name)
        return self.kernels[key]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if op_name(call) != "relax.take" or str(call.attrs.mode) != "clip":
            return call
        x, indices = call.args
        x_dims, dims, dtype = shape_dims(x), shape_dims(indices), dtype_of(indices)
        if x_dims is None or dims is None or dtype not in ("int32", "int64") or not x_dims:
            return call
        axis = 0 if call.attrs.axis is None else int(call.attrs.axis) % len(x_dims)
        if not isinstance(x_dims[axis], tirx.IntImm):
            return call
        extent = int(x_dims[axis])
        what = (
            f"Gather: an index is out of range: each must be in [{-extent}, {extent - 1}] for "
            f"axis {axis} of the {_shape_text(x_dims)} data (indices {_shape_text(dims)})"
        )
        value = const_array(indices)
        if value is not None:
            if value.size and (np.any(value < 0) or np.any(value >= extent)):
                held = f"{value.min()} .. {value.max()}"
                raise UnsupportedModelError(
                    f"{what}; the constant indices hold {held}", op="Gather"
                )
            return call
        flat_shape = [_element_count(dims)]
        flat = self.builder_.emit(relax.op.reshape(indices, flat_shape))
        checked = self.builder_.emit(
            relax.call_tir(
                self._kernel(dtype, extent, what, flat_shape[0]),
                [flat],
                relax.TensorType(flat_shape, dtype),
            )
        )
        restored = self.builder_.emit(relax.op.reshape(checked, dims))
        return relax.op.take(x, restored, call.attrs.axis, mode="clip")


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.CheckTakeIndices")
class CheckTakeIndices:
    """Every clamped ``take`` with run-time indices reads them through a range check."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if not is_cpu(self.target):
            return mod
        rewriter = _CheckTakes(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()
