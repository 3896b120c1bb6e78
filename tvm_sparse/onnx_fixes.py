"""Where TVM 0.27's ONNX frontend converts an op wrongly: the one place that fixes or refuses it.

Why: a wrong answer returned quietly is the worst thing a compiler can do. ONNX's backend suite
shows where the frontend goes wrong (``benchmarks/conformance.py``). Each case here is either
rewritten, before the import, into ONNX ops the frontend converts correctly, or refused with an
error that names the node, the op and the reason. Rewrites work on the ONNX graph (no TVM
internals patched), only on the top-level graph, and only where what they need is known
(constant inputs, shapes from ONNX shape inference); elsewhere the node is left as it was.

Add a case: a function ``(ctx, node) -> list[NodeProto] | None`` (the replacement nodes, None to
keep the node) in ``REWRITES``, or ``(ctx, node) -> str`` (why it is refused, '' to accept) in
``REFUSALS``, and the suite case that shows it in the docstring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .onnx_nodes import node_attr, node_input, node_output
from .onnx_recurrent import RECURRENT_OPS, expand_recurrent, recurrent_refusal
from .run_guards import FullLengthGuard, RunGuard

log = logging.getLogger("tvm_sparse")


class Context:
    """What the fixes read (constants, shapes, types) and write (new initializers, names)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.new_initializers: list[onnx.TensorProto] = []
        self.guards: list[RunGuard | FullLengthGuard] = []
        inits = {t.name for t in model.graph.initializer}
        self.graph_inputs = {i.name for i in model.graph.input if i.name not in inits}
        self._types: dict[str, onnx.TypeProto] | None = None
        self._counter = 0

    # -- what is known ---------------------------------------------------------------------
    def _value_types(self) -> dict[str, onnx.TypeProto]:
        if self._types is None:
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # noqa: BLE001 - inference is best effort; fixes then skip
                inferred = self.model
            graph = inferred.graph
            self._types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}
            for t in self.model.graph.initializer:
                self._types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        return self._types

    def dims(self, name: str) -> tuple[int | None, ...] | None:
        """The dims of value ``name`` (None for each one not known statically), or None."""
        if name in self.consts:
            return tuple(self.consts[name].shape)
        ty = self._value_types().get(name)
        if ty is None or ty.WhichOneof("value") != "tensor_type":
            return None
        if not ty.tensor_type.HasField("shape"):
            return None
        return tuple(
            d.dim_value if d.HasField("dim_value") else None for d in ty.tensor_type.shape.dim
        )

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape of value ``name``, or None (unknown, or a dim not static)."""
        dims = self.dims(name)
        return None if dims is None or None in dims else dims

    def rank(self, name: str) -> int | None:
        dims = self.dims(name)
        return None if dims is None else len(dims)

    def dtype(self, name: str) -> np.dtype | None:
        if name in self.consts:
            return self.consts[name].dtype
        ty = self._value_types().get(name)
        if ty is None or ty.WhichOneof("value") != "tensor_type" or not ty.tensor_type.elem_type:
            return None
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(ty.tensor_type.elem_type))
        except Exception:  # noqa: BLE001 - types numpy has no dtype for (bfloat16, float8...)
            return None

    # -- what the fixes add --------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"tvm_sparse_fix_{self._counter}_{hint}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> tuple[onnx.NodeProto, str]:
        out = self.fresh(hint)
        return helper.make_node(op, inputs, [out], **attrs), out


# -- rewrites ----------------------------------------------------------------------------------


def _float_dtype(ctx: Context, x: str) -> np.dtype | None:
    """The float dtype of ``x`` (float32 when unknown), None for other dtypes."""
    dtype = ctx.dtype(x) or np.dtype(np.float32)
    return dtype if dtype.kind == "f" else None


def _isinf_directions(ctx: Context, node: onnx.NodeProto):
    """IsInf with detect_negative/detect_positive = 0: TVM ignores both attributes
    (test_isinf_negative, test_isinf_positive)."""
    neg, pos = (
        int(node_attr(node, "detect_negative", 1)),
        int(node_attr(node, "detect_positive", 1)),
    )
    if neg and pos:
        return None
    x, out = node.input[0], node.output[0]
    inf, inf_out = ctx.node("IsInf", [x], "isinf")
    zero = ctx.const(np.zeros((), ctx.dtype(x) or np.float32), "zero")
    if pos:
        side, side_out = ctx.node("Greater", [x, zero], "positive")
    elif neg:
        side, side_out = ctx.node("Less", [x, zero], "negative")
    else:
        side, side_out = ctx.node("Not", [inf_out], "none")
    return [inf, side, helper.make_node("And", [inf_out, side_out], [out])]


def _float_mod_by_infinity(ctx: Context, node: onnx.NodeProto):
    """Float Mod (fmod=0) by +-inf: TVM computes x - floor(x / y) * y, NaN; ONNX (Python's
    rule) gives x when x and y agree in sign (or x is 0), else y
    (test_mod_float_edge_cases_fmod_0_*)."""
    if int(node_attr(node, "fmod", 0)) != 0:
        return None
    x, y = node.input[0], node.input[1]
    dtype = ctx.dtype(x)
    if dtype is None or dtype.kind != "f":
        return None
    zero = ctx.const(np.zeros((), dtype), "zero")
    mod, mod_out = ctx.node("Mod", [x, y], "mod", fmod=0)
    y_inf, y_inf_out = ctx.node("IsInf", [y], "y_inf")
    x_neg, x_neg_out = ctx.node("Less", [x, zero], "x_neg")
    y_neg, y_neg_out = ctx.node("Less", [y, zero], "y_neg")
    # Xor, not Equal: TVM emits a float compare for Equal on bools, which LLVM rejects
    differ, differ_out = ctx.node("Xor", [x_neg_out, y_neg_out], "signs_differ")
    x_zero, x_zero_out = ctx.node("Equal", [x, zero], "x_zero")
    flip, flip_out = ctx.node("Not", [x_zero_out], "x_nonzero")
    to_y, to_y_out = ctx.node("And", [differ_out, flip_out], "take_y")
    by_inf, by_inf_out = ctx.node("Where", [to_y_out, y, x], "by_inf")
    final = helper.make_node("Where", [y_inf_out, by_inf_out, mod_out], [node.output[0]])
    return [mod, y_inf, x_neg, y_neg, differ, x_zero, flip, to_y, by_inf, final]


def _accurate_mish(ctx: Context, node: onnx.NodeProto):
    """Mish as x * n / (n + 2), n = e^x (e^x + 2) (= x tanh(softplus(x)) without the
    cancellation of log(1 + e^x) at negative x: TVM's form was 1.3e-3 off near x = -7.6,
    test_mish); x itself above 20, where the ratio is 1 in float32."""
    x = node.input[0]
    dtype = _float_dtype(ctx, x)
    if dtype is None:
        return None
    two, twenty = ctx.const(np.array(2, dtype), "two"), ctx.const(np.array(20, dtype), "twenty")
    e, e_out = ctx.node("Exp", [x], "exp")
    e2, e2_out = ctx.node("Add", [e_out, two], "exp_plus_2")
    n, n_out = ctx.node("Mul", [e_out, e2_out], "n")
    d, d_out = ctx.node("Add", [n_out, two], "n_plus_2")
    r, r_out = ctx.node("Div", [n_out, d_out], "ratio")
    m, m_out = ctx.node("Mul", [x, r_out], "mish")
    big, big_out = ctx.node("Greater", [x, twenty], "big")
    final = helper.make_node("Where", [big_out, x, m_out], [node.output[0]])
    return [e, e2, n, d, r, m, big, final]


def _convtranspose_output_shape(ctx: Context, node: onnx.NodeProto):
    """ConvTranspose's ``output_shape`` attribute: TVM ignores it (test_convtranspose_output_
    shape gave 9x7 for 10x8). Rewritten into the pads and output_padding that give it."""
    output_shape = node_attr(node, "output_shape")
    if not output_shape:
        return None
    x_shape, w_shape = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if x_shape is None or w_shape is None:
        return None
    spatial = len(x_shape) - 2
    want = list(output_shape)[-spatial:]
    strides = list(node_attr(node, "strides", [1] * spatial))
    dilations = list(node_attr(node, "dilations", [1] * spatial))
    out_pad = list(node_attr(node, "output_padding", [0] * spatial))
    kernel = list(node_attr(node, "kernel_shape", w_shape[2:]))
    upper = node_attr(node, "auto_pad", "NOTSET") == "SAME_UPPER"
    begin, end = [0] * spatial, [0] * spatial
    for i in range(spatial):
        total = (
            strides[i] * (x_shape[2 + i] - 1)
            + out_pad[i]
            + (kernel[i] - 1) * dilations[i]
            + 1
            - want[i]
        )
        if total < 0:  # the output is longer than the full result: extend it at the end
            out_pad[i] -= total
            continue
        small, large = total // 2, total - total // 2
        begin[i], end[i] = (small, large) if upper else (large, small)
    attrs = {
        a.name: helper.get_attribute_value(a)
        for a in node.attribute
        if a.name not in ("output_shape", "pads", "auto_pad", "output_padding")
    }
    fixed = helper.make_node(
        "ConvTranspose",
        list(node.input),
        list(node.output),
        name=node.name,
        pads=begin + end,
        output_padding=out_pad,
        **attrs,
    )
    return [fixed]


def _dropout(ctx: Context, node: onnx.NodeProto):
    """Dropout's mask output: TVM gives float32 where ONNX says bool (test_dropout_default_
    mask). Inference Dropout is the identity with an all-true mask; training-mode Dropout is
    refused (REFUSALS) unless its ratio is 0, where it is the identity too."""
    mask = node_output(node, 1)
    training = node_input(node, 2)
    if not mask and not training:
        return None
    if training and training not in ctx.consts:  # a graph input (REFUSALS saw to that)
        ratio = node_input(node, 1)
        value = ctx.consts.get(ratio) if ratio else None
        runtime_ratio = ratio if ratio and value is None else ""
        fixed_ratio = 0.5 if value is None else float(np.asarray(value).reshape(-1)[0])
        ctx.guards.append(RunGuard(node.name or "<unnamed>", training, runtime_ratio, fixed_ratio))
    x = node.input[0]
    nodes = [helper.make_node("Identity", [x], [node.output[0]])]
    if mask:
        shape, shape_out = ctx.node("Shape", [x], "shape")
        true = numpy_helper.from_array(np.array([True]), "value")
        nodes += [shape, helper.make_node("ConstantOfShape", [shape_out], [mask], value=true)]
    return nodes


def _expand_broadcast(ctx: Context, node: onnx.NodeProto):
    """Expand whose shape has a 1 where the input is longer: ONNX broadcasts (the output keeps
    the input's extent), TVM takes the 1 literally (test_expand_dim_changed gave 2x1x6 for
    2x3x6). The shape input is replaced by the broadcast shape: a constant when both are known,
    else computed (each 1 in the shape replaced by the input's extent)."""
    x_shape, target = ctx.shape(node.input[0]), ctx.consts.get(node.input[1])
    if target is None:
        return _expand_runtime_broadcast(ctx, node)
    if x_shape is None:
        return None
    try:
        full = np.broadcast_shapes(tuple(x_shape), tuple(int(d) for d in target))
    except ValueError:
        return None
    if tuple(full) == tuple(int(d) for d in target):
        return None
    shape = ctx.const(np.array(full, np.int64), "expand_shape")
    return [helper.make_node("Expand", [node.input[0], shape], list(node.output), name=node.name)]


def _expand_runtime_broadcast(ctx: Context, node: onnx.NodeProto):
    """The shape is a graph input: the broadcast shape is computed at run time. (A shape the
    graph computes, e.g. from Shape ops, reaches TVM as a shape expression, which it keeps
    static and which such a rewrite would make a tensor it cannot expand by.)"""
    x, target = node.input[0], node.input[1]
    if target not in ctx.graph_inputs:
        return None
    rank, length = ctx.rank(x), ctx.shape(target)
    if rank is None or length is None or len(length) != 1:
        return None
    n = max(rank, length[0])
    nodes = []
    x_shape, x_shape_out = ctx.node("Shape", [x], "x_shape")
    nodes.append(x_shape)

    def padded(value: str, size: int, hint: str) -> str:
        if size == n:
            return value
        ones = ctx.const(np.ones(n - size, np.int64), "ones")
        cat, out = ctx.node("Concat", [ones, value], hint, axis=0)
        nodes.append(cat)
        return out

    xs, ts = padded(x_shape_out, rank, "x_shape_padded"), padded(target, length[0], "padded")
    one = ctx.const(np.ones((), np.int64), "one")
    is_one, is_one_out = ctx.node("Equal", [ts, one], "keeps_input")
    full, full_out = ctx.node("Where", [is_one_out, xs, ts], "broadcast_shape")
    nodes += [is_one, full]
    nodes.append(helper.make_node("Expand", [x, full_out], list(node.output), name=node.name))
    return nodes


def _accurate_softplus(ctx: Context, node: onnx.NodeProto):
    """Softplus as max(x, 0) + log1p(e^-|x|), log1p(u) as u log(1 + u) / ((1 + u) - 1) (exact
    where 1 + u rounds): TVM's log(1 + e^x) loses the digits at negative x
    (test_mish_expanded was 1.3e-3 off near x = -7.6)."""
    x = node.input[0]
    dtype = _float_dtype(ctx, x)
    if dtype is None:
        return None
    zero, one = ctx.const(np.array(0, dtype), "zero"), ctx.const(np.array(1, dtype), "one")
    ab, ab_out = ctx.node("Abs", [x], "abs")
    ng, ng_out = ctx.node("Neg", [ab_out], "neg_abs")
    u, u_out = ctx.node("Exp", [ng_out], "u")
    w, w_out = ctx.node("Add", [u_out, one], "one_plus_u")
    lg, lg_out = ctx.node("Log", [w_out], "log_w")
    wm, wm_out = ctx.node("Sub", [w_out, one], "w_minus_1")
    ratio, ratio_out = ctx.node("Div", [u_out, wm_out], "u_over_wm1")
    corr, corr_out = ctx.node("Mul", [lg_out, ratio_out], "log1p_u")
    exact, exact_out = ctx.node("Equal", [w_out, one], "w_is_one")
    l1p, l1p_out = ctx.node("Where", [exact_out, u_out, corr_out], "log1p")
    pos, pos_out = ctx.node("Max", [x, zero], "relu")
    final = helper.make_node("Add", [pos_out, l1p_out], [node.output[0]])
    return [ab, ng, u, w, lg, wm, ratio, corr, exact, l1p, pos, final]


def _layernorm_statistics(ctx: Context, node: onnx.NodeProto):
    """LayerNormalization's Mean and InvStdDev outputs: TVM returns 0-d placeholders
    (test_layer_normalization_*). They are computed beside the node (in float32, the default
    stash type); the normalized output stays the frontend's layer_norm."""
    mean_out, inv_out = node_output(node, 1), node_output(node, 2)
    if not mean_out and not inv_out:
        return None
    x = node.input[0]
    rank = ctx.rank(x)
    if rank is None:
        return None
    axis = int(node_attr(node, "axis", -1))
    axes = list(range(axis % rank, rank))
    eps = float(node_attr(node, "epsilon", 1e-5))
    keep = [helper.make_node("LayerNormalization", list(node.input), [node.output[0]],
                             name=node.name, axis=axis, epsilon=eps)]  # fmt: skip
    xf, xf_out = ctx.node("Cast", [x], "x_f32", to=onnx.TensorProto.FLOAT)

    def reduce_mean(value: str, hint: str, out: str | None = None) -> tuple[onnx.NodeProto, str]:
        name = out or ctx.fresh(hint)
        if ctx.opset >= 18:
            axes_in = ctx.const(np.array(axes, np.int64), "axes")
            return helper.make_node("ReduceMean", [value, axes_in], [name], keepdims=1), name
        return helper.make_node("ReduceMean", [value], [name], axes=axes, keepdims=1), name

    mean, mean_name = reduce_mean(xf_out, "mean", mean_out or None)
    diff, diff_out = ctx.node("Sub", [xf_out, mean_name], "centered")
    sq, sq_out = ctx.node("Mul", [diff_out, diff_out], "squared")
    var, var_out = reduce_mean(sq_out, "variance")
    nodes = [*keep, xf, mean, diff, sq, var]
    if inv_out:
        eps_c = ctx.const(np.array(eps, np.float32), "epsilon")
        add, add_out = ctx.node("Add", [var_out, eps_c], "var_eps")
        sqrt, sqrt_out = ctx.node("Sqrt", [add_out], "std")
        nodes += [add, sqrt, helper.make_node("Reciprocal", [sqrt_out], [inv_out])]
    return nodes


def _empty_shape_slice(ctx: Context, node: onnx.NodeProto):
    """Shape with start >= end after clamping: an empty 1-D tensor; TVM returns nothing
    (test_shape_start_greater_than_end)."""
    start, end = node_attr(node, "start"), node_attr(node, "end")
    if start is None and end is None:
        return None
    rank = ctx.rank(node.input[0])
    if rank is None:
        return None
    lo = min(max(int(start or 0) + (rank if int(start or 0) < 0 else 0), 0), rank)
    stop = rank if end is None else int(end)
    hi = min(max(stop + (rank if stop < 0 else 0), 0), rank)
    if lo < hi:
        return None
    value = numpy_helper.from_array(np.zeros((0,), np.int64), "value")
    return [helper.make_node("Constant", [], list(node.output), value=value)]


def _space_to_depth(ctx: Context, node: onnx.NodeProto):
    """SpaceToDepth: TVM ignores ``mode`` (CRD, opset 25; test_spacetodepth_crd_mode_example).
    Written out as reshape, transpose, reshape when the input shape is known."""
    if node_attr(node, "mode", "DCR") == "DCR":
        return None
    shape = ctx.shape(node.input[0])
    if shape is None or len(shape) != 4:
        return None
    n, c, h, w = shape
    b = int(node_attr(node, "blocksize"))
    split = ctx.const(np.array([n, c, h // b, b, w // b, b], np.int64), "split_shape")
    merged = ctx.const(np.array([n, c * b * b, h // b, w // b], np.int64), "merged_shape")
    r1, r1_out = ctx.node("Reshape", [node.input[0], split], "blocks")
    tr, tr_out = ctx.node("Transpose", [r1_out], "crd", perm=[0, 1, 3, 5, 2, 4])
    return [r1, tr, helper.make_node("Reshape", [tr_out, merged], list(node.output))]


REWRITES: dict[str, Callable[[Context, onnx.NodeProto], list[onnx.NodeProto] | None]] = {
    "IsInf": _isinf_directions,
    "Mod": _float_mod_by_infinity,
    "Mish": _accurate_mish,
    "Softplus": _accurate_softplus,
    "ConvTranspose": _convtranspose_output_shape,
    "Dropout": _dropout,
    "Expand": _expand_broadcast,
    "LayerNormalization": _layernorm_statistics,
    "Shape": _empty_shape_slice,
    "SpaceToDepth": _space_to_depth,
    # no converter in TVM 0.27: unrolled over the time steps (test_lstm_*, test_gru_*, ...)
    **dict.fromkeys(RECURRENT_OPS, expand_recurrent),
}


# -- refusals ----------------------------------------------------------------------------------


def _training_batchnorm(ctx: Context, node: onnx.NodeProto) -> str:
    """test_batchnorm_*_training_mode: TVM applies the running statistics."""
    if int(node_attr(node, "training_mode", 0)):
        return "training_mode=1 (batch statistics) is not supported; export in eval mode"
    return ""


def _training_dropout(ctx: Context, node: onnx.NodeProto) -> str:
    """test_training_dropout*: random masks; only a constant-false training_mode or a ratio of
    0 (the identity) is accepted. A training_mode that is a graph input is compiled as the
    identity with a RunGuard (``_dropout``): a run that asks for training is refused."""
    training = node_input(node, 2)
    if not training:
        return ""
    flag = ctx.consts.get(training)
    if flag is None and training in ctx.graph_inputs:
        return ""
    if flag is not None and not bool(np.asarray(flag).reshape(-1)[0]):
        return ""
    ratio = ctx.consts.get(node_input(node, 1)) if node_input(node, 1) else None
    if flag is not None and ratio is not None and float(np.asarray(ratio).reshape(-1)[0]) == 0:
        return ""
    return "training-mode Dropout (random masks) is not supported; export in eval mode"


def _always(reason: str) -> Callable[[Context, onnx.NodeProto], str]:
    return lambda _ctx, _node: reason


def _roialign_max(ctx: Context, node: onnx.NodeProto) -> str:
    """test_roialign_mode_max: TVM's max mode differs from ONNX's (0.4 off)."""
    if node_attr(node, "mode", "avg") == "max":
        return "mode='max' is converted wrongly by TVM 0.27's frontend; only 'avg' is supported"
    return ""


REFUSALS: dict[str, Callable[[Context, onnx.NodeProto], str]] = {
    "BatchNormalization": _training_batchnorm,
    "Dropout": _training_dropout,
    # test_nonmaxsuppression_*: every case returns no boxes
    "NonMaxSuppression": _always("TVM 0.27's frontend converts it wrongly (it selects no boxes)"),
    "RoiAlign": _roialign_max,
    **dict.fromkeys(RECURRENT_OPS, recurrent_refusal),
}


def fix_model(
    model: onnx.ModelProto, source: str = "<model>"
) -> tuple[onnx.ModelProto, list[RunGuard | FullLengthGuard]]:
    """``model`` with the wrongly converted ops rewritten (a copy; the caller's is untouched)
    and the checks its runs need, or UnsupportedModelError naming the first node that cannot
    be converted right."""
    if not any(n.op_type in REWRITES or n.op_type in REFUSALS for n in model.graph.node):
        return model, []
    ctx = Context(model)
    new_nodes: list[onnx.NodeProto] = []
    changed = False
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        refuse = REFUSALS.get(node.op_type)
        reason = refuse(ctx, node) if refuse else ""
        if reason:
            raise UnsupportedModelError(
                f"{source}: node {node.name or '<unnamed>'!r}: op {node.op_type!r}: {reason}",
                node=node.name,
                op=node.op_type,
            )
        rewrite = REWRITES.get(node.op_type)
        replacement = rewrite(ctx, node) if rewrite else None
        if replacement is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(replacement)
            changed = True
    if not changed:
        return model, ctx.guards
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.node[:]
    fixed.graph.node.extend(new_nodes)
    fixed.graph.initializer.extend(ctx.new_initializers)
    return fixed, ctx.guards
