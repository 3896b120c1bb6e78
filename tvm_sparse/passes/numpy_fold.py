"""Fold constant-only layout and float arithmetic with numpy, before TVM's ``FoldConstant``.

Why: Relax's ``FoldConstant`` evaluates each constant call by legalizing it, building the TIR
with LLVM and running it: about 40 ms a call. TVM's ONNX frontend reshapes every conv bias
(57 calls in GoogLeNet: 2.2 s), and a network whose BatchNorms sit before their convs (DenseNet)
leaves hundreds of ``expand_dims`` / ``subtract`` / ``sqrt`` on constant statistics. numpy does
the same in microseconds. Only the ops below (comparisons of any dtype: they are exact), only
float dtypes for the arithmetic (integer division and overflow follow TVM's rules, not numpy's),
and the result cast to the dtype Relax says the call has; anything else is left for
``FoldConstant``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import mutator

from ..ir.arrays import transposed
from ..ir.relax_utils import const_array, constant, dtype_of, iter_bindings, op_name
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


# exact in numpy for every dtype: the frontend's Gather writes less(index, 0) for each constant
# index (x[:, -1] of a sequence), and FoldConstant built each with LLVM (~3 s for the first)
_COMPARE: dict[str, Callable[[list[np.ndarray], object], np.ndarray]] = {
    "relax.less": lambda a, _: np.less(a[0], a[1]),
    "relax.less_equal": lambda a, _: np.less_equal(a[0], a[1]),
    "relax.greater": lambda a, _: np.greater(a[0], a[1]),
    "relax.greater_equal": lambda a, _: np.greater_equal(a[0], a[1]),
    "relax.equal": lambda a, _: np.equal(a[0], a[1]),
    "relax.not_equal": lambda a, _: np.not_equal(a[0], a[1]),
}


def _index_or_float(args: list) -> bool:
    """Both operands of one dtype, int32 / int64 or float: what ONNX index arithmetic uses."""
    dtypes = {np.asarray(a).dtype for a in args}
    return len(dtypes) == 1 and dtypes.pop().name in ("int32", "int64", "float32", "float64")


def _fold_plan(func: relax.Function) -> dict[relax.Var, np.ndarray]:
    """The var of each foldable binding -> its value (values feed later bindings)."""
    known: dict[relax.Var, np.ndarray] = {}
    for binding in iter_bindings(func):
        value = binding.value
        name = op_name(value)
        rule = _LAYOUT.get(name) or _FLOAT_MATH.get(name) or _COMPARE.get(name)
        if rule is None:
            continue
        args = [_static_value(a, known) for a in value.args]
        if not args or any(a is None for a in args):
            continue
        dtype = dtype_of(binding.var)
        if name in _COMPARE and not _index_or_float(args):
            continue  # mixed or narrow types (an int8 Gather index): TVM's rules, not numpy's
        if (
            dtype is None
            or name in _FLOAT_MATH
            and not (
                dtype.startswith("float") and all(np.asarray(a).dtype.kind == "f" for a in args)
            )
        ):
            continue
        with np.errstate(all="ignore"):
            # np.array, not ascontiguousarray: that makes a 0-d result 1-d (a where() over
            # a folded scalar then broadcast a Gather index to shape (1,))
            result = np.array(rule(args, value.attrs), dtype=dtype, order="C")
        known[binding.var] = result
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
