"""Fold constant-only layout and float arithmetic with numpy, before TVM's ``FoldConstant``.

Why: Relax's ``FoldConstant`` evaluates each constant call by legalizing it, building the TIR
with LLVM and running it: about 40 ms a call. TVM's ONNX frontend reshapes every conv bias
(57 calls in GoogLeNet: 2.2 s), and a network whose BatchNorms sit before their convs (DenseNet)
leaves hundreds of ``expand_dims`` / ``subtract`` / ``sqrt`` on constant statistics. numpy does
the same in microseconds. Only the ops below; arithmetic on floats, or on int32 / int64 where
the exact result fits int32 (integer division and overflow follow TVM's rules, not numpy's);
comparisons where both operands are one of those dtypes; the result cast to the dtype Relax says
the call has. Anything else is left for ``FoldConstant``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.arrays import transposed
from ..ir.relax_utils import (
    const_array,
    constant,
    dtype_of,
    iter_bindings,
    op_name,
    static_shape,
)
from ..ir.rewrite import PlannedRewriter, rewrite_functions


def _axes(attrs, name: str) -> list[int] | None:
    value = getattr(attrs, name, None)
    return None if value is None else [int(a) for a in value]


_LAYOUT: dict[str, Callable[[list[np.ndarray], object], np.ndarray]] = {
    "relax.expand_dims": lambda a, attrs: np.expand_dims(a[0], tuple(_axes(attrs, "axis"))),
    "relax.permute_dims": lambda a, attrs: _permute(a[0], _axes(attrs, "axes")),
    "relax.reshape": lambda a, _: np.reshape(a[0], a[1]),  # the frontend's bias reshapes
}


def _permute(a: np.ndarray, axes: list[int] | None) -> np.ndarray:
    if a.ndim == 2 and axes in (None, [1, 0]):
        return transposed(a)  # a Gemm's weight: the cache-friendly copy
    return np.transpose(a, axes)


def _static_value(arg: relax.Expr, known: dict[relax.Var, np.ndarray]):
    """A constant's numpy value, a static shape's tuple, or None."""
    if isinstance(arg, relax.Var):
        return known.get(arg)
    if isinstance(arg, relax.ShapeExpr):
        dims = arg.values
        ok = all(isinstance(d, tvm.tirx.IntImm) for d in dims)
        return tuple(int(d.value) for d in dims) if ok else None
    return const_array(arg)


_FLOAT_MATH: dict[str, Callable[[list[np.ndarray], object], np.ndarray]] = {
    "relax.add": lambda a, _: a[0] + a[1],
    "relax.subtract": lambda a, _: a[0] - a[1],
    "relax.multiply": lambda a, _: a[0] * a[1],
    "relax.divide": lambda a, _: a[0] / a[1],
    "relax.sqrt": lambda a, _: np.sqrt(a[0]),
    "relax.rsqrt": lambda a, _: 1 / np.sqrt(a[0]),
    "relax.negative": lambda a, _: -a[0],
}


# folded for int32 / int64 / float operands of one dtype (``_index_or_float``): the frontend's
# Gather writes less(index, 0) for each constant index (x[:, -1] of a sequence), and
# FoldConstant built each with LLVM (~3 s for the first)
_COMPARE: dict[str, Callable[[list[np.ndarray], object], np.ndarray]] = {
    "relax.less": lambda a, _: np.less(a[0], a[1]),
    "relax.less_equal": lambda a, _: np.less_equal(a[0], a[1]),
    "relax.greater": lambda a, _: np.greater(a[0], a[1]),
    "relax.greater_equal": lambda a, _: np.greater_equal(a[0], a[1]),
    "relax.equal": lambda a, _: np.equal(a[0], a[1]),
    "relax.not_equal": lambda a, _: np.not_equal(a[0], a[1]),
}


def _index_or_float(args: list) -> bool:
    """Every operand of one dtype, int32 / int64 or float: what ONNX index arithmetic uses."""
    dtypes = {np.asarray(a).dtype for a in args}
    return len(dtypes) == 1 and dtypes.pop().name in ("int32", "int64", "float32", "float64")


def _take_in_bounds(a: list[np.ndarray], attrs) -> np.ndarray | None:
    """``take`` where every index is in bounds (then every ``mode`` agrees), else None."""
    data, idx = np.asarray(a[0]), np.asarray(a[1])
    axis = int(attrs.axis) if attrs.axis is not None else 0
    if idx.dtype.kind not in "iu" or np.any(idx < 0) or np.any(idx >= data.shape[axis]):
        return None
    return np.take(data, idx, axis=axis)


# the frontend's plumbing of a constant Gather index on a static shape (x[:, -1], a k-WTA's
# k-th value): where(less(i, 0), add(i, take(shape_to_tensor(shape_of(x)), axis)), i); folded
# whole, the take gets a constant index, which the k-WTA rewrite matches
_INDEX: dict[str, Callable[[list[np.ndarray], object], np.ndarray | None]] = {
    "relax.shape_to_tensor": lambda a, _: np.asarray(a[0], np.int64),
    "relax.take": _take_in_bounds,
    "relax.where": lambda a, _: np.where(a[0], a[1], a[2]),
}
_INT_MATH = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply}
_INT32 = 2**31


def _int_math(name: str, args: list) -> np.ndarray | None:
    """Integer add / subtract / multiply of int32 or int64 operands where the exact result
    fits int32 (no wrap-around rule can differ then), else None."""
    if not _index_or_float(args) or np.asarray(args[0]).dtype.kind != "i":
        return None
    exact = _INT_MATH[name](*(np.asarray(a, object) for a in args))
    if np.any(np.abs(np.asarray(exact, object)) >= _INT32):
        return None
    return np.asarray(exact, np.int64)


def _fold_plan(func: relax.Function) -> dict[relax.Var, np.ndarray]:
    """The var of each foldable binding -> its value (values feed later bindings)."""
    known: dict[relax.Var, np.ndarray] = {}
    shapes: dict[relax.Var, tuple[int, ...]] = {}  # shape_of a static tensor: read, not replaced
    for binding in iter_bindings(func):
        value = binding.value
        name = op_name(value)
        if name == "relax.shape_of":
            shape = static_shape(value.args[0])
            if shape is not None:
                shapes[binding.var] = shape
            continue
        rule = _LAYOUT.get(name) or _FLOAT_MATH.get(name) or _COMPARE.get(name)
        rule = rule or _INDEX.get(name)
        if rule is None:
            continue
        args = [shapes.get(a) or _static_value(a, known) for a in value.args]
        if not args or any(a is None for a in args):
            continue
        dtype = dtype_of(binding.var)
        if dtype is None:
            continue
        if name in _COMPARE and not _index_or_float(args):
            continue  # mixed or narrow types (an int8 Gather index): TVM's rules, not numpy's
        floats = dtype.startswith("float") and all(np.asarray(a).dtype.kind == "f" for a in args)
        if name in _FLOAT_MATH and not floats:
            result = _int_math(name, args) if name in _INT_MATH else None
        else:
            with np.errstate(all="ignore"):
                result = rule(args, value.attrs)
        if result is None:
            continue
        # np.array, not ascontiguousarray: that makes a 0-d result 1-d (a where() over a
        # folded scalar then broadcast a Gather index to shape (1,))
        known[binding.var] = np.array(result, dtype=dtype, order="C")
    return known


@mutator
class _FoldRewriter(PlannedRewriter):
    def replacement(self, _var: relax.Var, value: np.ndarray) -> relax.Expr:
        return constant(value)


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.NumpyFoldConstant")
class NumpyFoldConstant:
    """Replace every constant-only call of the ops above by its numpy value."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewriter_for(func: relax.Function, module: tvm.IRModule):
            plan = _fold_plan(func)
            return _FoldRewriter(plan, module) if plan else None

        return rewrite_functions(mod, rewriter_for)
