"""ONNX's recurrent ops (LSTM, GRU, RNN) unrolled over their time steps into plain ONNX ops.

Why: TVM 0.27's ONNX frontend has no converter for them, so a keyword-spotting LSTM or a CRNN
exported from PyTorch did not compile at all. Unrolled, they become what the rest of the
compiler already handles, and where sparsity pays: the input projection of every step is one
``MatMul`` of the whole sequence by ``W^T`` (a sparse GEMM when W is pruned), and each step's
recurrence is a ``MatMul`` of the last hidden state by ``R^T`` (a sparse matrix-vector product),
with the gates' elementwise ops fused around it by TVM.

What is expanded (the ONNX operator spec, opsets 7-22): every direction (forward, reverse,
bidirectional), both layouts, optional biases, initial states and LSTM peepholes, GRU's
``linear_before_reset`` both ways, and every activation the spec lists with its alpha / beta.
The sequence length must be static. Refused with the reason (``recurrent_refusal``):
``sequence_lens`` that can differ from the sequence length, ``clip`` and ``input_forget`` (no
exporter writes them; onnxruntime and the spec's reference disagree on where ``clip`` applies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_nodes import node_attr, node_input, node_output
from .run_guards import FullLengthGuard

# activation -> (alpha default, beta default) for the ones that take them (ONNX op defaults)
_PARAMS = {
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (1.0, None),
    "elu": (1.0, None),
    "hardsigmoid": (0.2, 0.5),
    "affine": (1.0, 0.0),
    "scaledtanh": (1.0, 1.0),
}
_PLAIN = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign",
          "softplus": "Softplus"}  # fmt: skip
_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT_OPS = tuple(_GATES)


@dataclass(frozen=True)
class Activation:
    """One activation function of a recurrent op: its name (lower case) and alpha / beta."""

    name: str
    alpha: float | None = None
    beta: float | None = None


def activations(node: onnx.NodeProto) -> list[Activation]:
    """The node's activation functions, one per gate function and direction, with their
    alpha / beta taken in order by the functions that use them (as onnxruntime reads them)."""
    dirs = 2 if node_attr(node, "direction", "forward") == "bidirectional" else 1
    names = list(node_attr(node, "activations") or _DEFAULTS[node.op_type])
    if len(names) == len(_DEFAULTS[node.op_type]):
        names *= dirs  # one direction's list serves both
    alphas = list(node_attr(node, "activation_alpha") or [])
    betas = list(node_attr(node, "activation_beta") or [])
    out = []
    for raw in names:
        name = raw.lower()
        alpha, beta = _PARAMS.get(name, (None, None))
        if alpha is not None and alphas:
            alpha = float(alphas.pop(0))
        if beta is not None and betas:
            beta = float(betas.pop(0))
        out.append(Activation(name, alpha, beta))
    return out


def recurrent_refusal(ctx, node: onnx.NodeProto) -> str:
    """Why ``node`` (LSTM / GRU / RNN) cannot be expanded ('' when it can)."""
    if node_attr(node, "clip") is not None:
        return "the clip attribute is not supported"
    if node.op_type == "LSTM" and int(node_attr(node, "input_forget", 0)):
        return "input_forget=1 is not supported"
    if ctx.opset < 10:
        return f"opset {ctx.opset}: the expansion needs opset 10 or later (Slice with inputs)"
    layout = int(node_attr(node, "layout", 0))
    shape = ctx.dims(node.input[0])
    if shape is None or len(shape) != 3 or not all(isinstance(shape[i], int) for i in (layout, 2)):
        return f"the sequence length and input size of {node.input[0]!r} must be static"
    if node_attr(node, "hidden_size") is None:
        return "hidden_size is missing"
    acts = activations(node)
    dirs = 2 if node_attr(node, "direction", "forward") == "bidirectional" else 1
    if len(acts) != len(_DEFAULTS[node.op_type]) * dirs:
        return (
            f"{len(acts)} activations for {dirs} direction(s): {node.op_type} takes "
            f"{len(_DEFAULTS[node.op_type])} per direction"
        )
    for act in acts:
        if act.name not in _PLAIN and act.name not in _PARAMS:
            return f"activation {act.name!r} is not an ONNX recurrent activation"
    lens = node_input(node, 4)
    if lens and lens not in ctx.graph_inputs:  # a graph input gets a FullLengthGuard
        value = ctx.consts.get(lens)
        if value is None or np.any(np.asarray(value) != shape[layout]):
            return (
                f"sequence_lens {lens!r} must be a constant or graph input equal to the sequence "
                f"length ({shape[layout]}): shorter sequences in a batch are not supported"
            )
    return ""


class _Builder:
    """Emits the nodes of one expansion, naming every value after the node. Work on constants
    (weights, biases) is done here in numpy, so each ``MatMul`` has an initializer for its
    weight: what the sparse rewrite looks for."""

    _NUMPY = {"Add": np.add, "Mul": np.multiply, "Sub": np.subtract}

    def __init__(self, ctx, node: onnx.NodeProto):
        self.ctx, self.nodes = ctx, []
        self.prefix = (node.name or node.op_type).replace("/", "_")
        self._ints: dict[tuple[int, ...], str] = {}  # index constants, made once each
        self._gates: dict[tuple, str] = {}  # a value's column blocks, sliced once each
        self.dtype = ctx.dtype(node.input[0]) or np.dtype(np.float32)  # float16/32/64

    def known(self, name: str) -> np.ndarray | None:
        return self.ctx.consts.get(name)

    def op(self, op: str, inputs: list[str], hint: str, out: str = "", **attrs) -> str:
        values = [self.known(i) for i in inputs]
        if op in self._NUMPY and not out and all(v is not None for v in values):
            return self.const(self._NUMPY[op](*values), hint)
        out = out or self.ctx.fresh(f"{self.prefix}_{hint}")
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def const(self, value: np.ndarray, hint: str) -> str:
        value = np.array(value)  # a contiguous copy; 0-d stays 0-d (a Gather index)
        name = self.ctx.const(value, f"{self.prefix}_{hint}")
        self.ctx.consts[name] = value
        return name

    def ints(self, values: list[int]) -> str:
        """An int64 constant of ``values`` (Slice bounds, Reshape shapes, Unsqueeze axes), one
        initializer per distinct list however many steps use it."""
        key = tuple(values)
        if key not in self._ints:
            self._ints[key] = self.const(np.array(values, np.int64), "i")
        return self._ints[key]

    def take(self, name: str, index: int, axis: int, shape: list[int], hint: str) -> str:
        """``name[index]`` along ``axis`` (that axis dropped), of result ``shape`` (-1: the
        batch). A Slice and a Reshape, not a Gather: TVM imports a Gather's constant index as
        a bounds check that FoldConstant then builds with LLVM, ~0.3 s per time step."""
        value = self.known(name)
        if value is not None:
            return self.const(np.take(value, index, axis=axis), hint)
        bounds = [self.ints([v]) for v in (index, index + 1, axis)]
        part = self.op("Slice", [name, *bounds], hint)
        return self.op("Reshape", [part, self.ints(shape)], hint)

    def unsqueeze(self, x: str, axes: list[int], hint: str) -> str:
        """Unsqueeze, its axes an input from opset 13 and an attribute before."""
        if self.ctx.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)], hint)
        return self.op("Unsqueeze", [x], hint, axes=axes)

    def transposed(self, name: str, d: int, rows: int, cols: int, hint: str) -> str:
        """``name[d]^T`` ([cols, rows]) of a [dirs, rows, cols] weight."""
        value = self.known(name)
        if value is not None:
            return self.const(np.asarray(value)[d].T, hint)
        part = self.take(name, d, 0, [rows, cols], hint)
        return self.op("Transpose", [part], f"{hint}_t", perm=[1, 0])

    def gate(self, x: str, g: int, width: int, hint: str) -> str:
        """Block ``g`` of ``width`` columns (the last axis) of ``x``: sliced once, however many
        steps read it (a constant's in numpy, as an initializer)."""
        key = (x, g, width)
        if key not in self._gates:
            value = self.known(x)
            if value is not None:
                self._gates[key] = self.const(value[..., g * width : (g + 1) * width], hint)
            else:
                bounds = [self.ints([g * width]), self.ints([(g + 1) * width]), self.ints([-1])]
                self._gates[key] = self.op("Slice", [x, *bounds], hint)
        return self._gates[key]

    def activate(self, x: str, act: Activation, hint: str) -> str:
        name = act.name
        if name in _PLAIN:
            return self.op(_PLAIN[name], [x], hint)
        if name == "affine":
            scaled = self.op("Mul", [x, self.const(self.dtype.type(act.alpha), "a")], hint)
            return self.op("Add", [scaled, self.const(self.dtype.type(act.beta), "b")], hint)
        if name == "scaledtanh":
            inner = self.op(
                "Tanh",
                [self.op("Mul", [x, self.const(self.dtype.type(act.beta), "b")], hint)],
                hint,
            )
            return self.op("Mul", [inner, self.const(self.dtype.type(act.alpha), "a")], hint)
        if name == "hardsigmoid":
            return self.op("HardSigmoid", [x], hint, alpha=act.alpha, beta=act.beta)
        op = {"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}[name]
        return self.op(op, [x], hint, alpha=act.alpha)


@dataclass
class _Direction:
    """What one direction's steps read: the projected inputs, R^T, biases, initial states."""

    index: int
    reverse: bool
    projected: str  # [steps, batch, gates * H] (layout 0) or [batch, steps, gates * H]
    r_t: str  # [H, gates * H]
    r_bias: str  # GRU with linear_before_reset: the recurrent bias of the h gate, else ''
    h0: str  # [batch, H] or '' (zeros)
    c0: str  # LSTM: [batch, H] or ''
    peep: tuple[str, str, str] | None  # LSTM: P_i, P_o, P_f ([H] each)
    acts: list[Activation]


def expand_recurrent(ctx, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The nodes that compute ``node`` (LSTM / GRU / RNN) step by step; None where
    ``recurrent_refusal`` gives a reason (that is reported, not this)."""
    if recurrent_refusal(ctx, node):
        return None
    b = _Builder(ctx, node)
    kind, hidden = node.op_type, int(node_attr(node, "hidden_size"))
    gates = _GATES[kind]
    layout = int(node_attr(node, "layout", 0))
    direction = node_attr(node, "direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    steps = ctx.dims(node.input[0])[layout]
    acts = activations(node)
    per_dir = len(acts) // dirs
    x, w, r, bias = node.input[0], node.input[1], node.input[2], node_input(node, 3)
    h_init = node_input(node, 5)
    c_init = node_input(node, 6) if kind == "LSTM" else ""
    peep = node_input(node, 7) if kind == "LSTM" else ""
    state_axis = 1 if layout else 0  # initial_h: [dirs, batch, H] or [batch, dirs, H]
    lens = node_input(node, 4)
    if lens in ctx.graph_inputs:  # compiled for full sequences; a run checks it
        ctx.guards.append(FullLengthGuard(node.name or node.op_type, lens, steps))

    runs = []
    for d in range(dirs):
        # the input projection of every step at once: x @ W^T (+ both biases, summed)
        w_t = b.transposed(w, d, gates * hidden, ctx.dims(x)[2], f"w{d}")
        projected = b.op("MatMul", [x, w_t], f"xw{d}")
        r_bias = ""
        if bias:
            bias_d = b.take(bias, d, 0, [2 * gates * hidden], f"b{d}")  # Wb, then Rb
            w_b, r_b = (
                b.gate(bias_d, 0, gates * hidden, "wb"),
                b.gate(bias_d, 1, gates * hidden, "rb"),
            )
            if kind == "GRU" and int(node_attr(node, "linear_before_reset", 0)):
                # the h gate's Rb is applied inside r * (h @ Rh^T + Rbh): keep it apart
                mask = np.ones(gates * hidden, b.dtype)
                mask[2 * hidden :] = 0
                r_bias = b.gate(r_b, 2, hidden, "rbh")
                r_b = b.op("Mul", [r_b, b.const(mask, "m")], "rbzr")
            projected = b.op("Add", [projected, b.op("Add", [w_b, r_b], "bsum")], f"xwb{d}")
        runs.append(
            _Direction(
                index=d,
                reverse=direction == "reverse" or d == 1,
                projected=projected,
                r_t=b.transposed(r, d, gates * hidden, hidden, f"r{d}"),
                r_bias=r_bias,
                h0=_initial_state(b, h_init, d, state_axis, hidden, f"h0_{d}"),
                c0=_initial_state(b, c_init, d, state_axis, hidden, f"c0_{d}"),
                peep=_peepholes(b, peep, d, hidden) if peep else None,
                acts=acts[d * per_dir : (d + 1) * per_dir],
            )
        )
    step = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[kind]
    if kind == "GRU":
        step = _gru_step if not int(node_attr(node, "linear_before_reset", 0)) else _gru_step_lbr
    time_axis = 1 if layout else 0
    ys, hs, cs = [], [], []
    for run in runs:
        h, c = run.h0, run.c0
        outs: list[str] = [""] * steps
        order = range(steps - 1, -1, -1) if run.reverse else range(steps)
        for t in order:
            xt = b.take(run.projected, t, time_axis, [-1, gates * hidden], f"x{run.index}_{t}")
            h, c = step(b, run, xt, h, c, hidden, f"{run.index}_{t}")
            outs[t] = h
        ys.append(outs)
        hs.append(h)
        cs.append(c)
    _outputs(b, node, ys, hs, cs, layout)
    return b.nodes


def _initial_state(b: _Builder, name: str, d: int, axis: int, hidden: int, hint: str) -> str:
    """Direction ``d``'s initial state ([batch, H]), or '' for zeros: absent, or a constant of
    zeros (PyTorch exports h0 = 0 so), whose step-0 product h0 @ R^T is skipped."""
    if not name or _all_zero(b.ctx, name):
        return ""
    value = b.known(name)
    if value is not None and not np.take(value, d, axis=axis).any():
        return ""
    return b.take(name, d, axis, [-1, hidden], hint)


def _all_zero(ctx, name: str) -> bool:
    """Whether value ``name`` is zeros whatever its shape: a constant of zeros, or an Expand or
    ConstantOfShape of one (PyTorch sizes its zero h0 / c0 to the batch so)."""
    value = ctx.consts.get(name)
    if value is not None:
        return not np.asarray(value).any()
    producer = next((n for n in ctx.model.graph.node if name in n.output), None)
    if producer is None:
        return False
    if producer.op_type == "Expand":
        return _all_zero(ctx, producer.input[0])
    if producer.op_type == "ConstantOfShape":
        fill = node_attr(producer, "value")
        return fill is None or not numpy_helper.to_array(fill).any()
    return False


def _peepholes(b: _Builder, peep: str, d: int, hidden: int) -> tuple[str, str, str]:
    """P_i, P_o, P_f ([H] each) of direction ``d`` of a [dirs, 3 * H] peephole weight."""
    p_d = b.take(peep, d, 0, [3 * hidden], f"p{d}")
    return tuple(b.gate(p_d, g, hidden, f"p{d}{g}") for g in range(3))


def _recurrent(b: _Builder, run: _Direction, h: str, hint: str) -> str:
    return b.op("MatMul", [h, run.r_t], f"hr{hint}")


def _plus_recurrent(b: _Builder, run: _Direction, xt: str, h: str, hint: str) -> str:
    """The step's pre-activations: x_t W^T + b, plus h R^T unless h is the zero start."""
    return b.op("Add", [xt, _recurrent(b, run, h, hint)], f"pre{hint}") if h else xt


def _lstm_step(b: _Builder, run: _Direction, xt: str, h: str, c: str, hidden: int, hint: str):
    f, g, hact = run.acts
    pre = _plus_recurrent(b, run, xt, h, hint)
    i_, o_, f_, c_ = (b.gate(pre, k, hidden, f"g{k}{hint}") for k in range(4))  # iofc
    if run.peep is not None and c:
        p_i, _, p_f = run.peep
        i_ = b.op("Add", [i_, b.op("Mul", [c, p_i], f"pi{hint}")], f"ip{hint}")
        f_ = b.op("Add", [f_, b.op("Mul", [c, p_f], f"pf{hint}")], f"fp{hint}")
    i_, f_ = b.activate(i_, f, f"i{hint}"), b.activate(f_, f, f"f{hint}")
    cell = b.op("Mul", [i_, b.activate(c_, g, f"c{hint}")], f"ic{hint}")
    if c:
        cell = b.op("Add", [b.op("Mul", [f_, c], f"fc{hint}"), cell], f"cell{hint}")
    if run.peep is not None:
        o_ = b.op("Add", [o_, b.op("Mul", [cell, run.peep[1]], f"po{hint}")], f"op{hint}")
    h_new = b.op(
        "Mul", [b.activate(o_, f, f"o{hint}"), b.activate(cell, hact, f"hc{hint}")], f"h{hint}"
    )
    return h_new, cell


def _gru_blend(b: _Builder, z: str, cand: str, h: str, hint: str) -> str:
    """H_t = (1 - z) * h~ + z * H_{t-1} = h~ + z * (H_{t-1} - h~)."""
    if not h:
        return b.op("Sub", [cand, b.op("Mul", [z, cand], f"zc{hint}")], f"h{hint}")
    diff = b.op("Sub", [h, cand], f"d{hint}")
    return b.op("Add", [cand, b.op("Mul", [z, diff], f"zd{hint}")], f"h{hint}")


def _gru_step(b: _Builder, run: _Direction, xt: str, h: str, c: str, hidden: int, hint: str):
    """linear_before_reset = 0: h~ = g(x Wh^T + (r * H) Rh^T + Rbh + Wbh)."""
    f, g = run.acts
    x_z, x_r, x_h = (b.gate(xt, k, hidden, f"x{k}{hint}") for k in range(3))
    if h:
        r_zr = b.gate(run.r_t, 0, 2 * hidden, "rzr")  # [H, 2H]: the z and r columns
        r_h = b.gate(run.r_t, 2, hidden, "rh")
        hzr = b.op("MatMul", [h, r_zr], f"hzr{hint}")
        x_z = b.op("Add", [x_z, b.gate(hzr, 0, hidden, f"hz{hint}")], f"z_{hint}")
        x_r = b.op("Add", [x_r, b.gate(hzr, 1, hidden, f"hr{hint}")], f"r_{hint}")
    z = b.activate(x_z, f, f"z{hint}")
    if h:
        r = b.activate(x_r, f, f"r{hint}")
        reset = b.op("MatMul", [b.op("Mul", [r, h], f"rh{hint}"), r_h], f"rhh{hint}")
        x_h = b.op("Add", [x_h, reset], f"hh{hint}")
    return _gru_blend(b, z, b.activate(x_h, g, f"n{hint}"), h, hint), ""


def _gru_step_lbr(b: _Builder, run: _Direction, xt: str, h: str, c: str, hidden: int, hint: str):
    """linear_before_reset = 1 (PyTorch's GRU): h~ = g(x Wh^T + Wbh + r * (H Rh^T + Rbh))."""
    f, g = run.acts
    x_z, x_r, x_h = (b.gate(xt, k, hidden, f"x{k}{hint}") for k in range(3))
    if h:
        hr = _recurrent(b, run, h, hint)
        x_z = b.op("Add", [x_z, b.gate(hr, 0, hidden, f"hz{hint}")], f"z_{hint}")
        x_r = b.op("Add", [x_r, b.gate(hr, 1, hidden, f"hr{hint}")], f"r_{hint}")
        rec = b.gate(hr, 2, hidden, f"hh{hint}")
    else:
        rec = ""
    if run.r_bias:
        rec = b.op("Add", [rec, run.r_bias], f"hb{hint}") if rec else run.r_bias
    z = b.activate(x_z, f, f"z{hint}")
    if rec:
        r = b.activate(x_r, f, f"r{hint}")
        x_h = b.op("Add", [x_h, b.op("Mul", [r, rec], f"rr{hint}")], f"n_{hint}")
    return _gru_blend(b, z, b.activate(x_h, g, f"n{hint}"), h, hint), ""


def _rnn_step(b: _Builder, run: _Direction, xt: str, h: str, c: str, hidden: int, hint: str):
    return b.activate(_plus_recurrent(b, run, xt, h, hint), run.acts[0], f"h{hint}"), ""


def _outputs(b: _Builder, node, ys, hs, cs, layout: int) -> None:
    """Y ([steps, dirs, batch, H]; layout 1: [batch, steps, dirs, H]), Y_h and Y_c
    ([dirs, batch, H]; layout 1: [batch, dirs, H]) under the node's own output names."""
    y, y_h, y_c = node_output(node, 0), node_output(node, 1), node_output(node, 2)
    step_axes, state_axis = ([0, 1], 0) if layout == 0 else ([1, 2], 1)
    if y:
        per_dir = []
        for outs in ys:
            expanded = [b.unsqueeze(h, step_axes, "y1") for h in outs]
            per_dir.append(b.op("Concat", expanded, "ydir", axis=step_axes[0]))
        b.op("Concat", per_dir, "y", out=y, axis=step_axes[1])
    for name, states in ((y_h, hs), (y_c, cs)):
        if name:
            b.op(
                "Concat",
                [b.unsqueeze(s, [state_axis], "s1") for s in states],
                "s",
                out=name,
                axis=state_axis,
            )
