"""Small helpers for walking Relax functions: bindings, use counts, constants, shapes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax


def iter_bindings(func: relax.Function) -> Iterator[relax.VarBinding]:
    """All VarBindings of a function body's blocks, in order."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return
    for block in body.blocks:
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                yield binding


def use_counts(func: relax.Function) -> Counter:
    """How many times each Var is used (the function's result counts as a use)."""
    counts: Counter = Counter()
    for binding in iter_bindings(func):
        for v in relax.analysis.free_vars(binding.value):
            counts[v] += 1
    if isinstance(func.body, relax.SeqExpr):
        for v in relax.analysis.free_vars(func.body.body):
            counts[v] += 1
    return counts


def binding_map(func: relax.Function) -> dict[relax.Var, relax.Expr]:
    return {b.var: b.value for b in iter_bindings(func)}


def bound_vars(var2val: Mapping[relax.Var, relax.Expr]) -> dict[relax.Expr, relax.Var]:
    """Each bound call (by identity) -> its var.

    A ``relax.dpl`` pattern matched with ``var2val`` follows vars into their values, so a
    wildcard that stood for a bound var reports the var's value; ``bound.get(e, e)`` gives the var
    back (a parameter or constant is reported as itself).
    """
    leaves = (relax.Var, tvm.ir.Constant)
    return {value: var for var, value in var2val.items() if not isinstance(value, leaves)}


def const_array(expr: relax.Expr) -> np.ndarray | None:
    """The numpy value of a relax.Constant (a read-only view of its data, not a copy: a
    model's weights are read several times per compile), else None."""
    if not isinstance(expr, tvm.ir.Constant):
        return None
    try:
        view = np.from_dlpack(expr.value)
    except (TypeError, ValueError, BufferError, RuntimeError):  # a dtype numpy lacks
        return expr.value.numpy()
    view.flags.writeable = False
    return view


def constant(array: np.ndarray) -> relax.Expr:
    """``array`` as a relax.Constant of its own dtype, copied once (``relax.const`` copies
    twice: an ``astype`` even to the same dtype, then into the tensor; and it turns int64
    arrays into int32 unless told otherwise). A 0-d array stays 0-d (``ascontiguousarray``
    alone makes it 1-d)."""
    array = np.asarray(array)
    return relax.const(tvm.runtime.tensor(np.ascontiguousarray(array).reshape(array.shape)))


def shape_dims(expr: relax.Expr) -> list | None:
    """The dims (IntImm or symbolic PrimExpr) of a tensor expression of known rank, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return list(ty.shape.values)


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor expression, or None when unknown or symbolic."""
    dims = shape_dims(expr)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d.value) for d in dims)


def representative_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The shape of a tensor whose only unknowns are symbolic leading dims (a dynamic batch or
    sequence axis), those dims taken as 1, the size a kernel is chosen and timed at; None when
    the rank is unknown or the last dim is symbolic."""
    dims = shape_dims(expr)
    if not dims or not isinstance(dims[-1], tvm.tirx.IntImm):
        return None
    return tuple(int(d.value) if isinstance(d, tvm.tirx.IntImm) else 1 for d in dims)


def dtype_of(expr: relax.Expr) -> str | None:
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def op_name(expr: relax.Expr) -> str | None:
    """``relax.nn.conv2d`` etc. for an operator call, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def called_prim_func(call: relax.Call, mod: tvm.IRModule) -> tvm.tirx.PrimFunc | None:
    """The PrimFunc of ``mod`` that ``call`` (a call_tir) calls, else None."""
    gvar = call.args[0]
    func = mod[gvar] if isinstance(gvar, tvm.ir.GlobalVar) and gvar in mod.functions else None
    return func if isinstance(func, tvm.tirx.PrimFunc) else None


def kernel_spec(call: relax.Call, mod: tvm.IRModule, attrs: Iterable[str]
                ) -> tuple[str, dict] | None:  # fmt: skip
    """``(attribute, spec)`` of the first of ``attrs`` that the PrimFunc ``call`` (a call_tir)
    calls carries: the JSON spec a hand-scheduled kernel keeps for the passes that rebuild or
    fuse it; None when it carries none of them."""
    func = called_prim_func(call, mod)
    if func is None or func.attrs is None:
        return None
    for attr in attrs:
        if attr in func.attrs:
            return attr, json.loads(str(func.attrs[attr]))
    return None


def int_tuple(values) -> tuple[int, ...]:
    """An attribute's integer array (strides, padding...) as Python ints."""
    return tuple(int(v) for v in values)


def constant_weight_conv(
    var: relax.Var, value: relax.Expr, op: str, layouts: tuple[str, str, str]
) -> tuple[relax.Expr, np.ndarray, tuple[int, ...], tuple[int, ...]] | None:
    """``(x, weight, x shape, output shape)`` when ``value`` (bound to ``var``) calls ``op``
    with ``(data, kernel, out)`` ``layouts``, a constant float32 weight and static input and
    output shapes: what the conv rewrites of ``canonicalize`` start from; else None."""
    if op_name(value) != op:
        return None
    attrs = value.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != layouts:
        return None
    x, weight = value.args[0], const_array(value.args[1])
    x_shape, out_shape = static_shape(x), static_shape(var)
    if weight is None or weight.dtype != np.float32 or x_shape is None or out_shape is None:
        return None
    return x, weight, x_shape, out_shape


def scalar_const(expr: relax.Expr, dtype: str | None) -> float | None:
    """The value of a one-element constant, else None.

    The dtype rule is the caller's, stated at the call: ``dtype`` names the one dtype accepted
    (a kernel that computes in float32 takes only float32 scalars), None accepts any float dtype.
    """
    value = const_array(expr)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    if dtype is not None and value.dtype != np.dtype(dtype):
        return None
    return float(value.reshape(()))


def through_reshape(
    expr: relax.Expr,
    binding_of: Callable[[relax.Var], Any],
    accept: Callable[[relax.Expr], bool],
) -> relax.Expr:
    """The input of the ``reshape`` bound to ``expr`` when ``accept(input)``, else ``expr``.

    A reshape keeps row-major order, so a kernel that reads its operand flat may read the
    reshape's input instead: after FuseOps a reshape is a copy kernel, not a view. ``binding_of``
    looks a var's value up (a bindings dict's ``get``, or a mutator's
    ``builder_.lookup_binding``); ``accept`` is the caller's condition on the input (its shape,
    dtype, producer).
    """
    value = binding_of(expr) if isinstance(expr, relax.Var) else None
    if op_name(value) != "relax.reshape":
        return expr
    src = value.args[0]
    return src if accept(src) else expr
