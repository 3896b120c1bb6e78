"""The model of the hardware: the one data structure the writer, the estimator and csim read.

``build_hw_model`` walks the canonical Relax ``main`` from its input to its output and turns it
into a sequence of ``HwLayer`` stages (one dataflow process each):

* ``conv2d`` / ``linear`` with the weight stored for its engine (``WeightStore``):
  ``dense`` (every weight, [O, K]), ``sparse_dense`` (CSR of the non-zeros with precomputed input
  offsets: zero weights are never stored nor multiplied) or ``sparse_sparse`` (complementary
  packed columns + residual: for each *active* input, its packed column is scatter-added by owner);
* ``kwta`` (global per sample, ties >= the k-th win, optional boost: rank on x * boost, keep x);
* ``maxpool2d`` and ``relu``; reshape / flatten vanish (the stream order is the flat NCHW order).

Edges between stages are dense streams (beats of ``pack`` consecutive values) or sparse streams
(one ``(index, value)`` per non-zero, then an end marker). A sparse-sparse engine needs a sparse
input, so its producer chain (max-pool, then the k-WTA or ReLU before it) emits sparse streams.

Anything else in the graph raises ``UnsupportedModelError`` naming the op: the backend supports
sequential networks of these ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ...errors import UnsupportedModelError
from ...formats.complementary import ComplementaryPacked
from ...ir.layers import CONV2D, LINEAR, find_layers
from ...ir.relax_utils import binding_map, iter_bindings, op_name, static_shape
from ...passes.activation_sparsity import find_kwta, pooled_density
from ...passes.analyze_sparsity import ASSUMED_RELU_DENSITY, name_layers
from .names import NameTable
from .target import FpgaTarget, Precision

VARIANTS = ("dense", "sparse-dense", "sparse-sparse")
# A weight at least this dense is stored dense in the sparse-dense variant (a CSR index per
# weight would cost more memory than the zeros it skips).
DENSE_WEIGHT_THRESHOLD = 0.9
_SHAPE_ONLY = ("relax.reshape", "relax.flatten", "relax.expand_dims", "relax.squeeze")
SUPPORTED_OPS = "conv2d, linear (matmul/Gemm), k-WTA, max_pool2d, relu, reshape/flatten"


@dataclass
class WeightStore:
    """The arrays of one weighted layer exactly as they go into its header, in argument order.

    ``fmt``: "dense" (``w`` [O*K]), "csr" (``val``, ``off`` input offsets, ``ptr`` [O+1]) or
    "packed" (``val`` / ``owner`` [K*G] input-major, residual ``rptr`` [K+1], ``ridx``, ``rval``).
    Empty arrays are padded to one element (C has no zero-length arrays); ``padding`` counts them.
    """

    fmt: str
    arrays: dict[str, np.ndarray]
    nnz: int  # non-zero weights of the layer
    n_groups: int = 0
    padding: int = 0

    @property
    def value_words(self) -> int:
        """Weight values stored (what becomes ROM words and multiplier operands)."""
        keys = {"dense": ("w",), "csr": ("val",), "packed": ("val", "rval")}[self.fmt]
        return int(sum(self.arrays[k].size for k in keys))

    @property
    def index_words(self) -> int:
        return int(sum(a.size for k, a in self.arrays.items() if k not in ("w", "val", "rval")))


@dataclass
class HwLayer:
    """One dataflow stage."""

    index: int
    name: str  # C identifier
    source: str  # the model's name for it
    op: str  # conv2d | linear | kwta | maxpool2d | relu
    engine: str  # dense | sparse_dense | sparse_sparse | kwta | maxpool | relu
    in_shape: tuple[int, ...]  # per sample (C, H, W) or (N,)
    out_shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
    weights: WeightStore | None = None
    bias: np.ndarray | None = None
    boost: np.ndarray | None = None  # kwta: per channel [C] or per element [n]
    relu: bool = False  # fused ReLU epilogue
    in_sparse: bool = False
    out_sparse: bool = False
    in_density: float = 1.0  # expected non-zero fraction of the input (estimates)
    out_density: float = 1.0
    weight_density: float = 1.0
    lanes: int = 1  # parallel MAC / compare lanes (the folding)
    lanes_fixed: bool = False  # set by the user: the auto folding leaves it alone
    pack_out: int = 1  # values per beat of the dense output stream
    # number formats (C type names), filled by assign_types
    in_t: str = "float"
    out_t: str = "float"
    weight_t: str = "float"
    bias_t: str = "float"
    accum_t: str = "float"

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def weighted(self) -> bool:
        return self.op in (CONV2D, LINEAR)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.attrs.get("kernel", (1, 1)))

    @property
    def n_kin(self) -> int:
        """Inputs per output unit (conv: C*KH*KW, linear: K)."""
        kh, kw = self.kernel
        return self.in_shape[0] * kh * kw if self.op == CONV2D else self.n_in

    @property
    def out_pixels(self) -> int:
        return self.out_shape[1] * self.out_shape[2] if self.op == CONV2D else 1

    @property
    def dense_macs(self) -> int:
        return self.out_shape[0] * self.out_pixels * self.n_kin if self.weighted else 0


@dataclass(frozen=True)
class Split:
    """How a stage's lanes are used by its loops (the writer's unroll factors, the estimator's
    cycle counts): ``pe`` outputs (pixels or rows) x ``simd`` weights of a row for dense and
    sparse-dense engines; ``taps`` kernel positions x ``slots`` packed slots (+ ``res_lanes``
    residual lanes) per active input for sparse-sparse engines."""

    pe: int = 1
    simd: int = 1
    taps: int = 1
    slots: int = 1
    res_lanes: int = 1


def max_row_nnz(layer: HwLayer) -> int:
    """Longest CSR row of a sparse-dense layer (its SIMD cannot usefully exceed it)."""
    return max(1, int(np.diff(layer.weights.arrays["ptr"].astype(np.int64)).max(initial=1)))


def max_column_residual(layer: HwLayer) -> int:
    return int(np.diff(layer.weights.arrays["rptr"].astype(np.int64)).max(initial=0))


def split(layer: HwLayer, lanes: int | None = None) -> Split:
    """The loop parallelism of ``layer`` with ``lanes`` lanes (default: its own)."""
    lanes = layer.lanes if lanes is None else lanes
    if layer.engine in ("dense", "sparse_dense"):
        row = layer.n_kin if layer.engine == "dense" else max_row_nnz(layer)
        simd = min(lanes, row)
        return Split(pe=max(1, lanes // simd), simd=simd)
    if layer.engine == "sparse_sparse":
        g = layer.weights.n_groups
        taps_total = layer.kernel[0] * layer.kernel[1]
        res_lanes = max(1, -(-max_column_residual(layer) // 2))
        if lanes >= g:
            return Split(taps=min(taps_total, max(1, lanes // g)), slots=g, res_lanes=res_lanes)
        return Split(taps=1, slots=lanes, res_lanes=res_lanes)
    return Split(pe=lanes)


@dataclass
class HwModel:
    """The whole network for one variant, target and precision."""

    name: str
    variant: str
    target: FpgaTarget
    layers: list[HwLayer]
    input_shape: tuple[int, ...]  # per sample
    output_shape: tuple[int, ...]
    batch: int  # samples per run of the source model
    input_name: str = "input"
    input_t: str = "float"
    input_pack: int = 1
    calibrated: bool = False  # densities / ranges measured on data (see calibrate)

    @property
    def precision(self) -> Precision:
        return self.target.precision

    def layer(self, name: str) -> HwLayer:
        for layer in self.layers:
            if layer.name == name or layer.source == name:
                return layer
        raise KeyError(name)

    def pack_in(self, layer: HwLayer) -> int:
        return self.input_pack if layer.index == 0 else self.layers[layer.index - 1].pack_out


# ---------------------------------------------------------------------------------------------
# Weight stores
# ---------------------------------------------------------------------------------------------
def _one(a: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """``a`` as ``dtype``, padded to one element if empty."""
    a = np.asarray(a).astype(dtype).ravel()
    return (a, 0) if a.size else (np.zeros(1, dtype), 1)


def _input_offsets(layer_attrs: dict, in_shape: tuple[int, ...], k_idx: np.ndarray) -> np.ndarray:
    """Offset in the padded input buffer of im2col position k = (c*KH + kh)*KW + kw."""
    if "kernel" not in layer_attrs:
        return k_idx
    kh_n, kw_n = layer_attrs["kernel"]
    hp, wp = layer_attrs["padded"]
    dh, dw = layer_attrs["dilation"]
    c, rem = np.divmod(k_idx, kh_n * kw_n)
    kh, kw = np.divmod(rem, kw_n)
    return c * hp * wp + kh * dh * wp + kw * dw


def dense_store(w2: np.ndarray) -> WeightStore:
    return WeightStore("dense", {"w": w2.astype(np.float32).ravel()}, int(np.count_nonzero(w2)))


def csr_store(w2: np.ndarray, attrs: dict, in_shape: tuple[int, ...]) -> WeightStore:
    """Row-major CSR of the non-zeros, column index replaced by the input offset to read."""
    rows, cols = np.nonzero(w2)
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w2.shape[0]))])
    val, p1 = _one(w2[rows, cols], np.float32)
    off, p2 = _one(_input_offsets(attrs, in_shape, cols), np.uint32)
    arrays = {"val": val, "off": off, "ptr": ptr.astype(np.uint32)}
    return WeightStore("csr", arrays, int(rows.size), padding=p1 + p2)


def packed_store(w2: np.ndarray) -> WeightStore:
    """Complementary packing, input-major: column k is G consecutive (value, owner) slots."""
    packed = ComplementaryPacked.from_dense(w2.astype(np.float32))
    view = packed.by_input()
    g = packed.n_groups
    n_out = w2.shape[0]
    if g == 0:  # all-zero weight: one empty group keeps the arrays non-empty
        val, owner = np.zeros(w2.shape[1], np.float32), np.full(w2.shape[1], n_out)
        g = 1
    else:
        val, owner = view.values.ravel(), view.owner.ravel()
    owner_t = np.uint16 if n_out < 65535 else np.uint32
    rval, p1 = _one(view.residual_values, np.float32)
    ridx, p2 = _one(view.residual_indices, owner_t)
    arrays = {
        "val": val.astype(np.float32),
        "owner": owner.astype(owner_t),
        "rptr": view.residual_indptr.astype(np.uint32),
        "ridx": ridx,
        "rval": rval,
    }
    return WeightStore("packed", arrays, packed.nnz, n_groups=g, padding=p1 + p2)


# ---------------------------------------------------------------------------------------------
# Walking the Relax function
# ---------------------------------------------------------------------------------------------
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
        elif layer.weight_density >= DENSE_WEIGHT_THRESHOLD:
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


# ---------------------------------------------------------------------------------------------
# Number formats
# ---------------------------------------------------------------------------------------------
def _int_bits(max_abs: float) -> int:
    """Integer bits (sign included) that hold +-max_abs."""
    return max(-4, int(math.floor(math.log2(max_abs))) + 2) if max_abs > 0 else 1


def _fixed(width: int, integer: int) -> str:
    return f"ap_fixed<{width},{integer},AP_RND,AP_SAT>"


def assign_types(model: HwModel, ranges: dict[str, float] | None = None) -> None:
    """Set every layer's C types from the precision (int8 uses ``ranges``: max |output|)."""
    prec = model.precision
    if prec.is_float:
        return
    ranges = ranges or {}
    if prec.kind == "fixed":
        data = _fixed(prec.width, prec.integer)
        acc = _fixed(min(2 * prec.width + 8, 56), 2 * prec.integer + 8)
        model.input_t = data
        for layer in model.layers:
            layer.in_t = layer.out_t = layer.weight_t = data
            layer.bias_t = layer.accum_t = acc
        return
    # int8: ap_fixed<8, I> per tensor; accumulate exactly (products have Fw + Fx fraction bits)
    in_i = _int_bits(ranges.get("input", 4.0))
    model.input_t = _fixed(8, in_i)
    cur_t, cur_i = model.input_t, in_i
    for layer in model.layers:
        layer.in_t = cur_t
        if layer.weighted:
            wmax = float(np.max(np.abs(_weight_values(layer)), initial=0.0))
            w_i = _int_bits(wmax)
            out_i = _int_bits(ranges.get(layer.name, 8.0))
            frac = (8 - w_i) + (8 - cur_i)
            acc_i = max(w_i + cur_i + 8, out_i + 2)
            layer.weight_t = _fixed(8, w_i)
            layer.accum_t = layer.bias_t = _fixed(min(frac + acc_i, 56), acc_i)
            layer.out_t = _fixed(8, out_i)
            cur_t, cur_i = layer.out_t, out_i
        else:
            layer.out_t = cur_t
    model.calibrated = bool(ranges)


def _weight_values(layer: HwLayer) -> np.ndarray:
    w = layer.weights
    if w is None:
        return np.zeros(1)
    keys = {"dense": ("w",), "csr": ("val",), "packed": ("val", "rval")}[w.fmt]
    return np.concatenate([w.arrays[k] for k in keys])


# ---------------------------------------------------------------------------------------------
# A numpy executor of the hardware model (calibration: ranges for int8, measured densities)
# ---------------------------------------------------------------------------------------------
def _conv_forward(layer: HwLayer, x: np.ndarray, w2: np.ndarray) -> np.ndarray:
    c, h, w = layer.in_shape
    o, oh, ow = layer.out_shape
    kh, kw = layer.kernel
    sh, sw = layer.attrs["stride"]
    dh, dw = layer.attrs["dilation"]
    ph, pw = layer.attrs["pad"]
    hp, wp = layer.attrs["padded"]
    xp = np.zeros((x.shape[0], c, hp, wp), np.float32)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    cols = np.empty((x.shape[0], c, kh, kw, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[
                :, :, i * dh : i * dh + sh * oh : sh, j * dw : j * dw + sw * ow : sw
            ][:, :, :oh, :ow]
    y = np.einsum("ok,bkp->bop", w2, cols.reshape(x.shape[0], c * kh * kw, oh * ow))
    return y.reshape(x.shape[0], o, oh, ow)


def dense_weight(layer: HwLayer) -> np.ndarray:
    """The layer's weight as [O, K] float32, rebuilt from its store (checks the store too)."""
    w = layer.weights
    o, k = layer.out_shape[0], layer.n_kin
    if w.fmt == "dense":
        return w.arrays["w"].reshape(o, k)
    if w.fmt == "packed":
        g = w.n_groups
        out = np.zeros((o + 1, k), np.float32)
        owner = w.arrays["owner"].reshape(k, g).astype(np.int64)
        out[owner, np.arange(k)[:, None]] = w.arrays["val"].reshape(k, g)
        rptr = w.arrays["rptr"].astype(np.int64)
        cols = np.repeat(np.arange(k), np.diff(rptr))
        out[w.arrays["ridx"][: rptr[-1]].astype(np.int64), cols] = w.arrays["rval"][: rptr[-1]]
        return out[:o]
    ptr = w.arrays["ptr"].astype(np.int64)
    rows = np.repeat(np.arange(o), np.diff(ptr))
    off = w.arrays["off"][: ptr[-1]].astype(np.int64)
    if layer.op == CONV2D:  # invert the offset encoding
        kh_n, kw_n = layer.kernel
        hp, wp = layer.attrs["padded"]
        dh, dw = layer.attrs["dilation"]
        c, rem = np.divmod(off, hp * wp)
        kh, kw = rem // wp // dh, rem % wp // dw
        off = (c * kh_n + kh) * kw_n + kw
    out = np.zeros((o, k), np.float32)
    out[rows, off] = w.arrays["val"][: ptr[-1]]
    return out


def forward(model: HwModel, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``x`` [S, *input_shape] through the layers in float32; (output, every layer's output)."""
    acts: dict[str, np.ndarray] = {}
    y = np.asarray(x, np.float32).reshape(x.shape[0], *model.input_shape)
    for layer in model.layers:
        y = y.reshape(y.shape[0], *layer.in_shape)
        if layer.weighted:
            w2 = dense_weight(layer)
            if layer.op == CONV2D:
                y = _conv_forward(layer, y, w2)
            else:
                y = y @ w2.T
            shape = (1, -1, 1, 1) if layer.op == CONV2D else (1, -1)
            y = (y + layer.bias.reshape(shape)).astype(np.float32)
            if layer.relu:
                y = np.maximum(y, 0)
        elif layer.op == "kwta":
            flat = y.reshape(y.shape[0], -1)
            ranked = flat
            if layer.boost is not None:
                b = layer.boost
                if b.size != flat.shape[1]:
                    b = np.repeat(b, flat.shape[1] // b.size)
                ranked = flat * b
            k = layer.attrs["k"]
            kth = -np.partition(-ranked, k - 1, axis=1)[:, k - 1 : k]
            y = np.where(ranked >= kth, flat, 0).astype(np.float32)
        elif layer.op == "maxpool2d":
            y = _maxpool(layer, y)
        elif layer.op == "relu":
            y = np.maximum(y, 0)
        y = y.reshape(y.shape[0], *layer.out_shape)
        acts[layer.name] = y
    return y.reshape(y.shape[0], -1), acts


def _maxpool(layer: HwLayer, x: np.ndarray) -> np.ndarray:
    (ph, pw), (sh, sw) = layer.attrs["pool"], layer.attrs["stride"]
    _, oh, ow = layer.out_shape
    out = np.full((x.shape[0], layer.out_shape[0], oh, ow), -np.inf, np.float32)
    for i in range(ph):
        for j in range(pw):
            out = np.maximum(out, x[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw])
    return out


def calibrate(model: HwModel, x: np.ndarray) -> None:
    """Measure per-layer output ranges and input densities on samples ``x``.

    Densities replace the analytical ones (k/n, pooled k/n, 0.5 for ReLU) in the estimate; ranges
    give int8 its per-tensor formats.
    """
    _, acts = forward(model, x)
    ranges = {"input": float(np.max(np.abs(x)))}
    density = float(np.count_nonzero(x)) / x.size
    for layer in model.layers:
        a = acts[layer.name]
        ranges[layer.name] = float(np.max(np.abs(a), initial=0.0))
        if layer.in_sparse:
            layer.in_density = density
        density = float(np.count_nonzero(a)) / a.size
        if layer.out_sparse:
            layer.out_density = density
    if not model.precision.is_float:
        assign_types(model, ranges)
    model.calibrated = True
