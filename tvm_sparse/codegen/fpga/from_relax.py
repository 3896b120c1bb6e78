"""The canonical Relax ``main`` -> an ``HwModel`` for one variant.

``build_hw_model`` walks ``main`` from its input to its output, turns each layer, k-WTA,
max-pool and ReLU into an ``HwLayer`` (reshape / flatten vanish), picks each weighted layer's
engine for the variant (and so its weight store), marks the sparse edges and sets the expected
densities and number formats.

A value with two consumers (a residual block's input) becomes a ``clone`` stage, and the add
where the two branches meet (a tensor plus a tensor, same shape) an ``add`` stage with the ReLU
after it fused: ResNet basic blocks, identity or downsample shortcut. The walk goes one branch at
a time, so the stages come out in a topological order.

Anything else in the graph raises ``UnsupportedModelError`` naming the op (a concat, a value with
three consumers, an add with a constant the layer patterns did not take as a bias).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from ...errors import UnsupportedModelError
from ...ir.layers import CONV2D, LINEAR, LayerSpec, anchor_of, find_layers
from ...ir.relax_utils import binding_map, iter_bindings, op_name, static_shape
from ...passes.activation_sparsity import find_kwta, pooled_density
from ...passes.analyze_sparsity import ASSUMED_RELU_DENSITY, name_layers
from ...schedules.kernels.base import DENSE_FILL_THRESHOLD
from .hw_model import VARIANTS, HwLayer, HwModel
from .names import NameTable
from .number_formats import assign_types
from .target import FpgaTarget
from .weight_stores import csr_store, dense_store, packed_store

_SHAPE_ONLY = ("relax.reshape", "relax.flatten", "relax.expand_dims", "relax.squeeze")
SUPPORTED_OPS = (
    "conv2d, linear (matmul/Gemm), global k-WTA, max_pool2d, relu, reshape/flatten, residual "
    "add and a final (log-)softmax"
)


def _through_reshapes(expr: relax.Expr, bindings: dict) -> relax.Expr:
    while isinstance(expr, relax.Var) and op_name(bindings.get(expr)) == "relax.reshape":
        expr = bindings[expr].args[0]
    return expr


def _computed_between(start: relax.Expr, end: relax.Var, bindings: dict) -> set[relax.Var]:
    """The vars ``end`` is computed from, back to (not including) ``start``: a k-WTA's own
    bindings, so that a consumer of its input outside the pattern is seen as a second one."""
    inside: set[relax.Var] = set()
    stack = [end]
    while stack:
        v = stack.pop()
        if v in inside or v.same_as(start) or v not in bindings:
            continue
        inside.add(v)
        stack.extend(relax.analysis.free_vars(bindings[v]))
    return inside


def _unsupported(binding: relax.VarBinding, why: str = "") -> UnsupportedModelError:
    op = op_name(binding.value) or type(binding.value).__name__
    extra = f" ({why})" if why else ""
    return UnsupportedModelError(
        f"the fpga target does not support op {op!r} (value {binding.var.name}){extra}; "
        f"it compiles networks of {SUPPORTED_OPS}",
        node=binding.var.name,
        op=op,
    )


def _conv_attrs(spec) -> dict:
    attrs = spec.conv_attrs
    if attrs.get("groups", 1) != 1:
        raise UnsupportedModelError(
            f"layer {spec.name}: grouped conv2d (groups={attrs['groups']}) is not supported by "
            "the fpga target",
            node=spec.name,
            op="relax.nn.conv2d",
        )
    _, c, h, w = spec.x_shape
    pad = [int(p) for p in attrs["padding"]]
    pt, pl, pb, pr = pad * 2 if len(pad) == 2 else pad
    return {
        "kernel": tuple(int(s) for s in spec.weight.shape[2:]),
        "stride": tuple(attrs["strides"]),
        "dilation": tuple(attrs["dilation"]),
        "pad": (int(pt), int(pl)),
        "padded": (h + pt + pb, w + pl + pr),
    }


_SOFTMAX = {"relax.nn.softmax": "softmax", "relax.nn.log_softmax": "log_softmax"}


def _softmax_axis(binding: relax.VarBinding, shape: tuple[int, ...]) -> None:
    """(Log-)softmax over each sample's values (a classifier's last op) only."""
    axis = int(binding.value.attrs.axis)
    if len(shape) != 1 or axis not in (-1, 1):
        raise _unsupported(binding, "only a (log-)softmax over the last axis of [batch, n]")


def _pool_attrs(binding: relax.VarBinding) -> dict:
    a = binding.value.attrs
    if str(a.layout) != "NCHW" or any(int(p) for p in a.padding) or bool(a.ceil_mode):
        raise _unsupported(binding, "only NCHW max_pool2d without padding or ceil_mode")
    if any(int(d) != 1 for d in a.dilation):
        raise _unsupported(binding, "dilated max_pool2d")
    return {"pool": tuple(int(p) for p in a.pool_size), "stride": tuple(int(s) for s in a.strides)}


def _per_sample(shape: tuple[int, ...] | None, batch: int, what: str) -> tuple[int, ...]:
    if shape is None or len(shape) < 2 or shape[0] != batch:
        raise UnsupportedModelError(f"{what}: expected a static [batch, ...] shape, got {shape}")
    return tuple(shape[1:])


def _boost_store(boost: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel boost factors when constant over each channel's plane, else per element."""
    if len(shape) == 3:
        per_c = boost.reshape(shape[0], -1)
        if np.all(per_c == per_c[:, :1]):
            return per_c[:, 0].astype(np.float32)
    return boost.astype(np.float32).ravel()


def _weighted_layer(spec: LayerSpec, batch: int, names: NameTable) -> HwLayer:
    """The stage of a conv2d / linear layer chain (its weight in ``attrs["weight2d"]`` until the
    engine is chosen)."""
    in_shape = _per_sample(spec.x_shape, batch, spec.name)
    out_shape = _per_sample(spec.out_shape, batch, spec.name)
    if spec.kind == LINEAR and len(in_shape) != 1:
        raise UnsupportedModelError(
            f"layer {spec.name}: linear over a {len(in_shape) + 1}-d input is not "
            "supported by the fpga target (flatten first)",
            node=spec.name,
            op="relax.matmul",
        )
    if spec.activation not in (None, "relu"):
        raise UnsupportedModelError(
            f"layer {spec.name}: the {spec.activation} activation is not supported by "
            "the fpga target (relu only)",
            node=spec.name,
            op=spec.activation,
        )
    attrs = _conv_attrs(spec) if spec.kind == CONV2D else {}
    attrs["weight2d"] = spec.weight_2d.astype(np.float32)
    bias = spec.bias if spec.bias is not None else np.zeros(spec.weight.shape[0])
    return HwLayer(
        0,
        names.add(spec.name),
        spec.name,
        spec.kind,
        "",
        in_shape,
        out_shape,
        attrs,
        bias=np.asarray(bias, np.float32),
        relu=spec.activation == "relu",
        weight_density=float(np.count_nonzero(spec.weight)) / spec.weight.size,
    )


Stream = tuple[int, int]  # (producer index, output port); -1: the model's input


def _residual_add(
    b: relax.VarBinding,
    cur: relax.Var,
    src: Stream,
    shape: tuple[int, ...],
    last_name: str,
    arrived: dict[relax.Var, list],
    users: dict[relax.Var, list[relax.VarBinding]],
    names: NameTable,
    add: Callable[[HwLayer, list[Stream]], Stream],
) -> tuple[Stream, relax.Var, str] | None:
    """One branch reaches the add ``b`` with value ``cur`` on stream ``src``.

    The first branch to arrive waits (None); the second makes the add stage (its inputs in the
    add's argument order, a sole ReLU user fused) and returns (its stream, the value the walk
    goes on from, its name).
    """
    args = list(b.value.args)
    if not all(isinstance(a, relax.Var) for a in args) or args[0].same_as(args[1]):
        raise _unsupported(b, "an add of two different tensors the model computes")
    if static_shape(args[0]) != static_shape(args[1]):
        raise _unsupported(b, "an add of two tensors of one shape, no broadcasting")
    pos = 0 if args[0].same_as(cur) else 1
    waiting = arrived.setdefault(b.var, [])
    waiting.append((pos, src, shape, last_name))
    if len(waiting) < 2:
        return None
    del arrived[b.var]
    waiting.sort(key=lambda w: w[0])
    source = f"{waiting[0][3]}_add"
    layer = HwLayer(0, names.add(source), source, "add", "add", shape, shape)
    out = b.var
    nxt = users.get(out, [])
    if len(nxt) == 1 and op_name(nxt[0].value) == "relax.nn.relu":
        layer.relu, out = True, nxt[0].var
    return add(layer, [w[1] for w in waiting]), out, source


def build_hw_model(
    mod: tvm.IRModule,
    target: FpgaTarget,
    variant: str = "sparse-sparse",
    weighted_names: list[tuple[str, str]] | None = None,
    name: str = "model",
) -> HwModel:
    """The hardware model of the canonical ``mod["main"]`` for ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {VARIANTS}")
    func = mod["main"]
    if len(func.params) != 1:
        raise UnsupportedModelError(
            f"the fpga target needs a model with one input, this one has {len(func.params)}"
        )
    param = func.params[0]
    in_full = static_shape(param)
    if in_full is None or len(in_full) < 2:
        raise UnsupportedModelError(f"input {param.name}: needs a static [batch, ...] shape")
    batch = in_full[0]
    bindings = binding_map(func)
    users: dict[relax.Var, list[relax.VarBinding]] = {}
    for b in iter_bindings(func):
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b)
    specs = find_layers(func)
    name_layers(specs, weighted_names or [])
    # find_layers lists one spec per anchor (conv / matmul) binding, in program order: key them
    # by the anchor, as two layers may read the same value (a downsample shortcut)
    anchors = [b.var for b in iter_bindings(func) if anchor_of(b.value) is not None]
    by_anchor = dict(zip(anchors, specs, strict=True))
    kwtas = {_through_reshapes(m.x, bindings): m for m in find_kwta(func, exact=True, local=True)}
    kwta_vars = {x: _computed_between(x, m.out_var, bindings) for x, m in kwtas.items()}

    def consumers_of(value: relax.Expr) -> list[relax.VarBinding]:
        """The ops that read ``value``; a k-WTA (several bindings) counts as one."""
        found = users.get(value, [])
        if value not in kwtas:
            return found
        mine = [b for b in found if b.var in kwta_vars[value]]
        return mine[:1] + [b for b in found if b.var not in kwta_vars[value]]

    names = NameTable()
    hw: list[HwLayer] = []

    def add(layer: HwLayer, src: Stream | list[Stream]) -> Stream:
        layer.index = len(hw)
        layer.inputs = list(src) if isinstance(src, list) else [src]
        hw.append(layer)
        return (layer.index, 0)

    result = func.body.body
    output: Stream | None = None
    out_shape: tuple[int, ...] = ()
    # a walk over the dataflow graph, one branch at a time: (value, its stream, its per-sample
    # shape, the last layer's name, the binding that consumes it (None: its only user))
    Branch = tuple[relax.Expr, Stream, tuple[int, ...], str, relax.VarBinding | None]
    todo: list[Branch] = [(param, (-1, 0), tuple(in_full[1:]), "input", None)]
    arrived: dict[
        relax.Var, list
    ] = {}  # residual add var -> [(argument position, stream, shape, name)]
    while todo:
        cur, src, shape, last_name, via = todo.pop()
        while True:
            if via is None and cur.same_as(result):
                output, out_shape = src, shape  # the shape after any final reshape
                break
            if via is None:
                consumers = consumers_of(cur)
                if len(consumers) == 2:
                    # a value with two consumers (a residual block's input): clone its stream
                    source = f"{last_name}_clone"
                    clone = HwLayer(0, names.add(source), source, "clone", "clone", shape, shape)
                    clone.n_outputs = 2
                    idx, _ = add(clone, src)
                    for port in (1, 0):  # port 0 walked first
                        todo.append((cur, (idx, port), shape, last_name, consumers[port]))
                    break
                if len(consumers) != 1:
                    where = f"value {getattr(cur, 'name', cur)}"
                    raise UnsupportedModelError(
                        f"{where} feeds {len(consumers)} ops: the fpga target compiles networks "
                        f"of {SUPPORTED_OPS} where a value feeds one op, or two (a residual block)"
                    )
                via = consumers[0]
            if cur in kwtas and via.var in kwta_vars[cur]:
                m = kwtas[cur]
                if m.local:
                    raise UnsupportedModelError(
                        f"k-WTA after {last_name} is local (k of the channels at each position): "
                        "the fpga target supports global (per sample) k-WTA only",
                        op="topk",
                    )
                if m.n != int(np.prod(shape)):
                    raise UnsupportedModelError(
                        f"k-WTA over {m.n} values of a {shape} tensor: only global (per sample) "
                        "k-WTA is supported by the fpga target",
                        op="topk",
                    )
                boost = None if m.boost is None else _boost_store(m.boost, shape)
                source = f"{last_name}_kwta"
                layer = HwLayer(0, names.add(source), source, "kwta", "kwta", shape, shape)
                layer.attrs["k"], layer.attrs["exact"], layer.boost = m.k, m.exact, boost
                src, cur, via = add(layer, src), m.out_var, None
                continue
            b, via = via, None
            op = op_name(b.value)
            if b.var in by_anchor:
                spec = by_anchor[b.var]
                layer = _weighted_layer(spec, batch, names)
                src, cur, shape, last_name = (
                    add(layer, src),
                    spec.tail_var,
                    layer.out_shape,
                    spec.name,
                )
                continue
            if op in _SHAPE_ONLY:
                cur, shape = b.var, _per_sample(static_shape(b.var), batch, b.var.name)
                continue
            if op == "relax.add":
                done = _residual_add(b, cur, src, shape, last_name, arrived, users, names, add)
                if done is None:
                    break  # the other branch has not arrived yet
                src, cur, last_name = done
                continue
            if op == "relax.nn.relu":
                source = f"{last_name}_relu"
                src = add(HwLayer(0, names.add(source), "relu", "relu", "relu", shape, shape), src)
            elif op in _SOFTMAX:
                _softmax_axis(b, shape)
                source = f"{last_name}_{_SOFTMAX[op]}"
                layer = HwLayer(0, names.add(source), source, "softmax", "softmax", shape, shape)
                layer.attrs["log"] = op == "relax.nn.log_softmax"
                src = add(layer, src)
            elif op == "relax.nn.max_pool2d":
                out = _per_sample(static_shape(b.var), batch, b.var.name)
                attrs = _pool_attrs(b)
                source = f"{last_name}_pool"
                layer = HwLayer(0, names.add(source), source, "maxpool2d", "maxpool", shape, out)
                layer.attrs = attrs
                src = add(layer, src)
                shape = out
            else:
                raise _unsupported(b)
            cur = b.var
    if arrived:
        waiting = ", ".join(v.name for v in arrived)
        raise UnsupportedModelError(
            f"add {waiting}: one of its inputs is not reached from the model's input through "
            f"ops the fpga target compiles ({SUPPORTED_OPS})",
            op="relax.add",
        )
    if not hw:
        raise UnsupportedModelError("the model has no layers the fpga target can compile")
    if output != (len(hw) - 1, 0):
        raise UnsupportedModelError("the model's output is not its last layer's result")
    model = HwModel(name, variant, target, hw, tuple(in_full[1:]), out_shape, batch, param.name)
    _choose_engines(model)
    _propagate_sparsity(model)
    assign_types(model)
    return model


def _choose_engines(model: HwModel) -> None:
    """Pick the engine (and so the weight store) of every weighted layer for the variant."""
    for layer in model.layers:
        if not layer.weighted:
            continue
        w2 = layer.attrs.pop("weight2d")
        sparse_in = model.variant == "sparse-sparse" and _sparse_source(model, layer.index)
        if model.variant == "dense":
            layer.engine = "dense"
        elif sparse_in:
            layer.engine = "sparse_sparse"
        elif layer.weight_density >= DENSE_FILL_THRESHOLD:
            # the CPU kernels' bar, for the same reason: a CSR index per weight would cost more
            # than the few zeros it skips
            layer.engine = "dense"
        else:
            layer.engine = "sparse_dense"
        if layer.engine == "dense":
            layer.weights = dense_store(w2)
        elif layer.engine == "sparse_dense":
            layer.weights = csr_store(w2, layer.attrs, layer.in_shape)
        else:
            layer.weights = packed_store(w2)


def _sparse_source(model: HwModel, index: int) -> bool:
    """True when layer ``index``'s input comes (through max-pools) from a k-WTA or a ReLU.

    A clone's or an add's stream is dense (neither engine takes or emits sparse streams).
    """
    prev = model.producers(model.layers[index])[0]
    while prev is not None and prev.op == "maxpool2d":
        prev = model.producers(prev)[0]
    if prev is None or prev.op in ("clone", "add"):
        return False
    return prev.op in ("kwta", "relu") or (prev.weighted and prev.relu)


def _propagate_sparsity(model: HwModel) -> None:
    """Mark sparse edges (consumers that skip zeros) and set expected densities."""
    for layer in model.layers:
        if layer.engine == "sparse_sparse":
            layer.in_sparse = True
            prev = model.producers(layer)[0]
            while prev is not None:
                prev.out_sparse = True
                if prev.op != "maxpool2d":
                    break
                prev.in_sparse = True
                prev = model.producers(prev)[0]
    for layer in model.layers:  # topological order: producers first
        prev = model.producers(layer)[0]
        density = 1.0 if prev is None else prev.out_density
        layer.in_density = density
        if layer.op == "kwta":
            density = layer.attrs["k"] / layer.n_in
        elif layer.op == "maxpool2d":
            density = pooled_density(density, int(np.prod(layer.attrs["pool"])))
        elif layer.op == "relu" or (layer.op in ("add", CONV2D, LINEAR) and layer.relu):
            density = ASSUMED_RELU_DENSITY
        elif layer.op != "clone":
            density = 1.0
        layer.out_density = density
