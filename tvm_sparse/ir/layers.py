"""Find the weighted layers of a canonical Relax function.

Canonical form (what ``canonicalize`` leaves): ``matmul(x, W_kn)`` or ``nn.conv2d(x, W_oihw)``
with a constant weight, optionally followed by ``add(., bias)`` with a per-output-channel
constant, then optionally by ``nn.relu``, ``nn.gelu``, ``nn.silu``, ``sigmoid``, ReLU6
(``clip(., 0, 6)``) or a hard-sigmoid / hard-swish (``ir.hard_activations``). A layer is
that whole chain; its tail var is what the rest of the graph reads, so a rewrite replaces the
tail and dead-code elimination drops the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from .arrays import transposed
from .hard_activations import clip_bounds, find_hard_activations
from .relax_utils import (
    const_array,
    dtype_of,
    iter_bindings,
    op_name,
    representative_shape,
    static_shape,
    use_counts,
)

LINEAR = "linear"
CONV2D = "conv2d"
# Epilogue activations every kernel builder fuses (``gelu`` is the exact erf form, ``gelu_tanh``
# the tanh approximation, both from ``passes.fuse_gelu``; ``silu`` is x * sigmoid(x),
# ``passes.fuse_silu``; ``sigmoid`` is a squeeze-excitation gate's).
_ACTIVATIONS = {
    "relax.nn.relu": "relu",
    "relax.nn.gelu": "gelu",
    "relax.nn.gelu_tanh": "gelu_tanh",
    "relax.nn.silu": "silu",
    "relax.sigmoid": "sigmoid",
}


def is_relu6(value: relax.Expr) -> bool:
    """Whether ``value`` is ``clip(x, 0, 6)`` (``passes.fuse_relu6`` writes ONNX's ReLU6 so)."""
    return clip_bounds(value) == (0.0, 6.0)


@dataclass
class LayerSpec:
    """One weighted layer: its weight, epilogue and where it sits in the Relax function."""

    index: int
    kind: str
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray  # linear: [N, K] (out, in); conv2d: OIHW
    bias: np.ndarray | None
    activation: str | None
    x_var: relax.Expr
    tail_var: relax.Var
    conv_attrs: dict = field(default_factory=dict)
    name: str = ""
    # expected non-zero fraction of x (k-WTA: k/n, pooled; ReLU: assumed); None = dense input
    input_density: float | None = None
    # a linear whose leading dims are symbolic (dynamic batch / sequence): x_shape and out_shape
    # hold them as 1, and only the kernels built for any row count apply
    dynamic_rows: bool = False

    @property
    def rows(self) -> int:
        """Rows of the linear kernel: every leading dim of x flattened (batch*seq)."""
        return int(np.prod(self.x_shape[:-1])) if self.kind == LINEAR else self.x_shape[0]

    @property
    def macs_dense(self) -> int:
        if self.kind == LINEAR:
            n, k = self.weight.shape
            return self.rows * n * k
        o, c, kh, kw = self.weight.shape
        groups = self.conv_attrs.get("groups", 1)
        return int(np.prod(self.out_shape)) * (c * kh * kw) if groups else 0

    @property
    def key(self) -> tuple:
        """``layer_key`` of this layer: matches the ONNX node it came from."""
        if self.kind == LINEAR:
            return layer_key(LINEAR, self.weight.shape)
        attrs = self.conv_attrs
        return layer_key("conv2d", self.weight.shape, attrs.get("strides", (1, 1)),
                         attrs.get("groups", 1))  # fmt: skip

    @property
    def weight_2d(self) -> np.ndarray:
        """The weight as [outputs, inputs] (conv filters flattened to C*KH*KW)."""
        return self.weight.reshape(self.weight.shape[0], -1)


def layer_key(kind: str, weight_shape, strides=(1, 1), groups: int = 1) -> tuple:
    """What tells a weighted layer from its neighbours without its name: a conv's weight shape,
    strides and groups; a linear's weight dims in either orientation."""
    if kind == "conv2d":
        return ("conv2d", tuple(int(d) for d in weight_shape), tuple(int(s) for s in strides),
                int(groups))  # fmt: skip
    return ("linear", tuple(sorted(int(d) for d in weight_shape)))


def per_channel(value: np.ndarray, channels: int, kind: str) -> np.ndarray | None:
    """A constant that broadcasts along the output channel only, as a [channels] vector."""
    shape = value.shape
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if kind == LINEAR:
        ok = shape[-1] == channels and all(s == 1 for s in shape[:-1])
    else:
        ok = (
            len(shape) in (3, 4)
            and shape[-3] == channels
            and all(s == 1 for s in shape[-2:])
            and all(s == 1 for s in shape[:-3])
        )
    return value.reshape(channels) if ok else None


def anchor_of(value: relax.Expr) -> tuple[str, np.ndarray, dict] | None:
    """(kind, weight, conv attrs) when ``value`` is a constant-weight matmul or conv2d; the
    weight as ``[out, in]`` (a linear's ``[K, N]`` matmul weight, transposed) or OIHW."""
    found = stored_anchor(value)
    if found is None:
        return None
    kind, weight, conv = found
    return kind, transposed(weight) if kind == LINEAR else weight, conv


def stored_anchor(value: relax.Expr) -> tuple[str, np.ndarray, dict] | None:
    """``anchor_of`` with the weight as the op stores it (a read-only view, no copy): a
    linear's ``[K, N]``, whose output channels are its last axis."""
    name = op_name(value)
    if name == "relax.matmul":
        x, w = value.args
        weight = const_array(w)
        x_shape = representative_shape(x)
        if weight is None or weight.ndim != 2 or x_shape is None or len(x_shape) < 2:
            return None
        if dtype_of(x) != "float32" or weight.dtype != np.float32:
            return None
        return LINEAR, weight, {}
    if name == "relax.nn.conv2d":
        x, w = value.args
        weight = const_array(w)
        attrs = value.attrs
        if weight is None or static_shape(x) is None or dtype_of(x) != "float32":
            return None
        if attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return None
        if attrs.out_layout not in ("NCHW", "") or weight.dtype != np.float32:
            return None
        conv = {
            "strides": tuple(int(s) for s in attrs.strides),
            "padding": tuple(int(p) for p in attrs.padding),
            "dilation": tuple(int(d) for d in attrs.dilation),
            "groups": int(attrs.groups),
        }
        return CONV2D, weight, conv
    return None


def find_layers(func: relax.Function) -> list[LayerSpec]:
    """Every canonical layer chain in ``func``, in program order."""
    counts = use_counts(func)
    users: dict[relax.Var, relax.VarBinding] = {}
    for b in iter_bindings(func):
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, b)

    def single_user(var: relax.Var) -> relax.VarBinding | None:
        return users.get(var) if counts[var] == 1 else None

    # hard-sigmoid / hard-swish of a var: several bindings, the swish reading x twice
    hard = {h.x: h for h in find_hard_activations(relax.analysis.get_var2val(func), counts)}

    layers: list[LayerSpec] = []
    for binding in iter_bindings(func):
        found = anchor_of(binding.value)
        if found is None:
            continue
        kind, weight, conv = found
        x = binding.value.args[0]
        tail = binding.var
        bias = None
        activation = None
        nxt = single_user(tail)
        if nxt is not None and op_name(nxt.value) == "relax.add":
            a, b = nxt.value.args
            other = b if a.same_as(tail) else a
            c = const_array(other)
            vec = None if c is None else per_channel(c, weight.shape[0], kind)
            if vec is not None and representative_shape(nxt.var) == representative_shape(tail):
                bias, tail = vec.astype(np.float32), nxt.var
                nxt = single_user(tail)
        found_hard = hard.get(tail)
        if found_hard is not None and counts[tail] == (2 if found_hard.kind == "hardswish" else 1):
            activation, tail = found_hard.kind, found_hard.tail
        elif nxt is not None and op_name(nxt.value) in _ACTIVATIONS:
            activation, tail = _ACTIVATIONS[op_name(nxt.value)], nxt.var
        elif nxt is not None and is_relu6(nxt.value):
            activation, tail = "relu6", nxt.var
        layers.append(
            LayerSpec(
                index=len(layers),
                kind=kind,
                x_shape=representative_shape(x),
                out_shape=representative_shape(tail),
                weight=weight,
                bias=bias,
                activation=activation,
                x_var=x,
                tail_var=tail,
                conv_attrs=conv,
                dynamic_rows=static_shape(x) is None,
            )
        )
    return layers
