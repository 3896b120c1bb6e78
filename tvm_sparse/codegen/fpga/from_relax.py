"""The canonical Relax ``main`` -> an ``HwModel`` for one variant.

``build_hw_model`` walks ``main`` from its input to its output, turns each layer, k-WTA,
max-pool and ReLU into an ``HwLayer`` (reshape / flatten vanish), picks each weighted layer's
engine for the variant (and so its weight store), marks the sparse edges and sets the expected
densities and number formats.

Anything else in the graph raises ``UnsupportedModelError`` naming the op: the backend supports
sequential networks of these ops.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ...errors import UnsupportedModelError
from ...ir.layers import CONV2D, LINEAR, find_layers
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
SUPPORTED_OPS = "conv2d, linear (matmul/Gemm), k-WTA, max_pool2d, relu, reshape/flatten"


def _through_reshapes(expr: relax.Expr, bindings: dict) -> relax.Expr:
    while isinstance(expr, relax.Var) and op_name(bindings.get(expr)) == "relax.reshape":
        expr = bindings[expr].args[0]
    return expr


def _unsupported(binding: relax.VarBinding, why: str = "") -> UnsupportedModelError:
    op = op_name(binding.value) or type(binding.value).__name__
    extra = f" ({why})" if why else ""
    return UnsupportedModelError(
        f"the fpga target does not support op {op!r} (value {binding.var.name}){extra}; "
        f"it compiles sequential networks of {SUPPORTED_OPS}",
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
    users: dict = {}
    for b in iter_bindings(func):
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b)
    specs = find_layers(func)
    name_layers(specs, weighted_names or [])
    by_x = {spec.x_var: spec for spec in specs}
    kwtas = {_through_reshapes(m.x, bindings): m for m in find_kwta(func)}

    names = NameTable()
    hw: list[HwLayer] = []
    last_name = "input"

    def add(layer: HwLayer) -> None:
        layer.index = len(hw)
        hw.append(layer)

    cur: relax.Expr = param
    shape = tuple(in_full[1:])
    result = func.body.body
    while not cur.same_as(result):
        if cur in by_x:
            spec = by_x[cur]
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
            bias = spec.bias if spec.bias is not None else np.zeros(spec.weight.shape[0])
            add(
                HwLayer(
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
            )
            hw[-1].attrs["weight2d"] = spec.weight_2d.astype(np.float32)
            last_name, cur, shape = spec.name, spec.tail_var, out_shape
            continue
        if cur in kwtas:
            m = kwtas[cur]
            if m.n != int(np.prod(shape)):
                raise UnsupportedModelError(
                    f"k-WTA over {m.n} values of a {shape} tensor: only global (per sample) "
                    "k-WTA is supported by the fpga target",
                    op="topk",
                )
            boost = None if m.boost is None else _boost_store(m.boost, shape)
            add(
                HwLayer(
                    0,
                    names.add(f"{last_name}_kwta"),
                    f"{last_name}_kwta",
                    "kwta",
                    "kwta",
                    shape,
                    shape,
                    {"k": m.k},
                    boost=boost,
                )
            )
            cur = m.out_var
            continue
        consumers = users.get(cur, [])
        if len(consumers) != 1:
            where = f"value {getattr(cur, 'name', cur)}"
            raise UnsupportedModelError(
                f"{where} feeds {len(consumers)} ops: the fpga target compiles sequential "
                f"networks of {SUPPORTED_OPS}"
            )
        b = consumers[0]
        op = op_name(b.value)
        if op in _SHAPE_ONLY:
            cur, shape = b.var, _per_sample(static_shape(b.var), batch, b.var.name)
            continue
        if op == "relax.nn.relu":
            add(HwLayer(0, names.add(f"{last_name}_relu"), "relu", "relu", "relu", shape, shape))
        elif op == "relax.nn.max_pool2d":
            out = _per_sample(static_shape(b.var), batch, b.var.name)
            attrs = _pool_attrs(b)
            source = f"{last_name}_pool"
            add(HwLayer(0, names.add(source), source, "maxpool2d", "maxpool", shape, out, attrs))
            shape = out
        else:
            raise _unsupported(b)
        cur = b.var
    if not hw:
        raise UnsupportedModelError("the model has no layers the fpga target can compile")
    model = HwModel(name, variant, target, hw, tuple(in_full[1:]), shape, batch, param.name)
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
    """True when layer ``index``'s input comes (through max-pools) from a k-WTA or a ReLU."""
    for prev in reversed(model.layers[:index]):
        if prev.op == "maxpool2d":
            continue
        return prev.op in ("kwta", "relu") or (prev.weighted and prev.relu)
    return False


def _propagate_sparsity(model: HwModel) -> None:
    """Mark sparse edges (consumers that skip zeros) and set expected densities."""
    layers = model.layers
    for layer in layers:
        if layer.engine == "sparse_sparse":
            layer.in_sparse = True
            j = layer.index - 1
            while j >= 0:
                layers[j].out_sparse = True
                if layers[j].op != "maxpool2d":
                    break
                layers[j].in_sparse = True
                j -= 1
    density = 1.0
    for layer in layers:
        layer.in_density = density
        if layer.op == "kwta":
            density = layer.attrs["k"] / layer.n_in
        elif layer.op == "maxpool2d":
            density = pooled_density(density, int(np.prod(layer.attrs["pool"])))
        elif layer.op == "relu" or (layer.weighted and layer.relu):
            density = ASSUMED_RELU_DENSITY
        else:
            density = 1.0
        layer.out_density = density
