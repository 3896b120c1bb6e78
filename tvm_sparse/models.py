"""Reference models, generated in code as ONNX: pruned MLPs and Numenta's GSC sparse CNN.

Why generate instead of download: the tests, tutorials and benchmarks need sparse models whose
sparsity is known exactly (weight densities, k-WTA k), with no network and no torch. Every model
is deterministic for a given seed, opset 17, static shapes, with one input named "input" and one
output named "output".

k-WTA (nupic.torch ``KWinners`` / ``KWinners2d`` with ``local=False``) is written the way a
PyTorch export of it reads, so the compiler's detector sees the real pattern::

    x_flat = Reshape(x, [B, -1])                     # only for 4-d x
    values, _ = TopK(ranked_flat, k, axis=-1, largest=1, sorted=1)
    kth = Gather(values, k - 1, axis=1)               # [B]
    threshold = Unsqueeze(kth, axes=[1])              # [B, 1]
    mask = GreaterOrEqual(ranked_flat, threshold)     # ties: every value >= the k-th wins
    y = Reshape(Where(mask, x_flat, 0), shape(x))

``ranked`` is x itself, or with boosting ``x * exp(-b * duty)`` (a constant per channel),
while the values kept are the unboosted x, as in nupic.torch's ``boost_activations``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the newest IR that onnx 1.12-1.14 read: keeps the models loadable by DeepSparse 1.8.
IR_VERSION = 8
BOOST_STRENGTH = 1.5
BN_EPSILON = 1e-5

__all__ = [
    "GSC",
    "GSC_SUPER",
    "GSC_TINY",
    "SparseCNNConfig",
    "gsc_dense_twin",
    "gsc_sparse_cnn",
    "kwta_model",
    "kwta_reference",
    "model_with_dynamic_batch",
    "model_with_unsupported_op",
    "pruned_mlp",
    "resnet_block",
    "save",
    "sparse_cnn",
    "tiny_sparse_cnn",
]


# --------------------------------------------------------------------------------------------
# Graph building
# --------------------------------------------------------------------------------------------
class _Graph:
    """Collects nodes and initializers with unique names; one instance builds one model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._names:
            candidate, i = f"{name}_{i}", i + 1
        self._names.add(candidate)
        return candidate

    def const(self, name: str, value: np.ndarray) -> str:
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1, **attrs
    ) -> list[str]:
        """Add one node named `name`; its outputs are `name`, `name:1`, ..."""
        name = self._unique(name)
        outputs = [name] + [f"{name}:{i}" for i in range(1, n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    def model(
        self, name: str, input_shape: Sequence, output: str, output_shape: Sequence
    ) -> onnx.ModelProto:
        """Rename the last value to "output" and wrap everything in a checked ModelProto."""
        last = self.nodes[-1]
        last.output[list(last.output).index(output)] = "output"
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output_shape))],
            self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tvm_sparse"
        )
        model.ir_version = IR_VERSION
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def _i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def _per_unit_mask(rng: np.random.Generator, out_units: int, fan_in: int, density: float):
    """Random mask with exactly round(density * fan_in) non-zeros in every output unit.

    This is nupic.torch's SparseWeights / SparseWeights2d rule (each unit gets the same number
    of randomly placed inputs), so per-row densities are exact, not just the average.
    """
    nnz = int(round(density * fan_in))
    if not 0 < nnz <= fan_in:
        raise ValueError(f"density {density} leaves {nnz} of {fan_in} weights per unit")
    keys = rng.random((out_units, fan_in))
    keep = np.argpartition(keys, nnz - 1, axis=1)[:, :nnz]
    mask = np.zeros((out_units, fan_in), dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    return mask


def _magnitude_mask(w: np.ndarray, density: float) -> np.ndarray:
    """Keep the round(density * size) largest |w| of the whole tensor (unstructured pruning)."""
    keep = int(round(density * w.size))
    if not 0 <= keep <= w.size:
        raise ValueError(f"density {density} keeps {keep} of {w.size} weights")
    if keep == 0:
        return np.zeros(w.shape, dtype=bool)
    flat = np.abs(w).ravel()
    idx = np.argpartition(-flat, keep - 1)[:keep]
    mask = np.zeros(w.size, dtype=bool)
    mask[idx] = True
    return mask.reshape(w.shape)


def _block_mask(w: np.ndarray, density: float, block: tuple[int, int]) -> np.ndarray:
    """Keep the round(density * blocks) (r x c) blocks of largest L1 norm; the rest is zero."""
    r, c = block
    rows, cols = w.shape
    if rows % r or cols % c:
        raise ValueError(f"block {block} does not tile a {w.shape} weight")
    norms = np.abs(w).reshape(rows // r, r, cols // c, c).sum(axis=(1, 3))
    kept = _magnitude_mask(norms, density)
    return np.repeat(np.repeat(kept, r, axis=0), c, axis=1)


def _nm_mask(w: np.ndarray, nm: tuple[int, int]) -> np.ndarray:
    """Keep the n largest |w| of every m consecutive inputs of each row (N:M, e.g. 2:4)."""
    n, m = nm
    rows, cols = w.shape
    if cols % m or not 0 < n <= m:
        raise ValueError(f"N:M {nm} does not fit a weight with {cols} inputs")
    groups = np.abs(w).reshape(rows, cols // m, m)
    idx = np.argsort(-groups, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=2)
    return mask.reshape(rows, cols)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
def _gemm(g: _Graph, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
    """Linear layer as PyTorch exports it: Gemm(x, W[out, in], bias, transB=1)."""
    wn, bn = g.const(f"{name}.weight", _f32(w)), g.const(f"{name}.bias", _f32(b))
    return g.op("Gemm", [x, wn, bn], name, transB=1)[0]


def _conv(g: _Graph, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
    wn, bn = g.const(f"{name}.weight", _f32(w)), g.const(f"{name}.bias", _f32(b))
    return g.op("Conv", [x, wn, bn], name, kernel_shape=list(w.shape[2:]))[0]


def _batchnorm(g: _Graph, rng: np.random.Generator, x: str, channels: int, name: str) -> str:
    """BatchNorm(affine=False) in eval mode: scale 1, shift 0, random positive running stats."""
    scale = g.const(f"{name}.scale", np.ones(channels, np.float32))
    shift = g.const(f"{name}.bias", np.zeros(channels, np.float32))
    mean = g.const(f"{name}.running_mean", _f32(rng.uniform(0.0, 0.1, channels)))
    var = g.const(f"{name}.running_var", _f32(rng.uniform(0.5, 1.5, channels)))
    return g.op("BatchNormalization", [x, scale, shift, mean, var], name, epsilon=BN_EPSILON)[0]


def _kwta(g: _Graph, x: str, shape: Sequence[int], k: int, name: str, boost=None) -> str:
    """Global k-winners-take-all per sample, in the op pattern of a PyTorch export.

    `shape` is the static shape of x ([B, C, H, W] or [B, N]); `boost` is the boost factor
    exp(-b * duty) broadcastable to x ([1, C, 1, 1] or [1, N]) or None for no boosting.
    """
    batch = shape[0]
    four_d = len(shape) == 4
    flat_shape = g.const(f"{name}.flat_shape", _i64([batch, -1])) if four_d else None

    def flatten(value: str, tag: str) -> str:
        return g.op("Reshape", [value, flat_shape], f"{name}/{tag}")[0] if four_d else value

    x_flat = flatten(x, "flatten")
    if boost is None:
        ranked = x_flat
    else:
        boosted = g.op("Mul", [x, g.const(f"{name}.boost_factor", _f32(boost))], f"{name}/boost")
        ranked = flatten(boosted[0], "flatten_boosted")
    values, _ = g.op(
        "TopK",
        [ranked, g.const(f"{name}.k", _i64([k]))],
        f"{name}/topk",
        n_out=2,
        axis=-1,
        largest=1,
        sorted=1,
    )
    kth = g.op("Gather", [values, g.const(f"{name}.kth_index", _i64(k - 1))], f"{name}/kth", axis=1)
    threshold = g.op("Unsqueeze", [kth[0], g.const(f"{name}.axes", _i64([1]))], f"{name}/thr")
    mask = g.op("GreaterOrEqual", [ranked, threshold[0]], f"{name}/mask")
    zero = g.const(f"{name}.zero", np.float32(0.0))
    kept = g.op("Where", [mask[0], x_flat, zero], f"{name}/where")[0]
    if not four_d:
        return kept
    return g.op("Reshape", [kept, g.const(f"{name}.shape", _i64(shape))], f"{name}/unflatten")[0]


def _boost_factor(rng: np.random.Generator, shape: Sequence[int], percent_on: float):
    """exp(-b * duty) for random duty cycles around the target density, as nupic.torch uses."""
    duty = rng.uniform(0.0, 2.0 * percent_on, shape)
    return np.exp(-BOOST_STRENGTH * duty).astype(np.float32)


def _uniform(rng: np.random.Generator, shape, fan: int) -> np.ndarray:
    """nupic.torch's init for sparse layers: U(-1/sqrt(fan), 1/sqrt(fan)), fan = non-zero inputs."""
    bound = 1.0 / np.sqrt(max(fan, 1))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Pruned MLP
# --------------------------------------------------------------------------------------------
def pruned_mlp(
    layers: int = 4,
    hidden: int = 2048,
    in_features: int | None = None,
    out_features: int | None = None,
    density: float = 0.1,
    batch: int = 1,
    seed: int = 0,
    pattern: str = "unstructured",
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
) -> onnx.ModelProto:
    """A magnitude-pruned MLP: (Gemm(transB=1) + bias -> Relu) x (layers - 1) -> Gemm.

    pattern "unstructured" keeps the largest |w| of each weight to `density`; "block" keeps the
    (block[0] x block[1]) blocks of largest L1 norm to `density`; "nm" keeps the nm[0] largest of
    every nm[1] consecutive inputs (its density is nm[0] / nm[1]; `density` is then unused).
    Weights start as He-normal scaled by 1/sqrt(density), so activations keep their size.
    """
    if layers < 1:
        raise ValueError("layers must be >= 1")
    if pattern not in ("unstructured", "block", "nm"):
        raise ValueError(f"unknown pattern {pattern!r}: use unstructured, block or nm")
    rng = np.random.default_rng(seed)
    in_features = hidden if in_features is None else in_features
    out_features = hidden if out_features is None else out_features
    widths = [in_features] + [hidden] * (layers - 1) + [out_features]
    keep = nm[0] / nm[1] if pattern == "nm" else density

    g = _Graph()
    x = "input"
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        # He init for the kept fan-in; density 0 (an all-zero layer) is allowed
        w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / (fan_in * max(keep, 1e-6)))
        if pattern == "unstructured":
            mask = _magnitude_mask(w, density)
        elif pattern == "block":
            mask = _block_mask(w, density, block)
        else:
            mask = _nm_mask(w, nm)
        bias = rng.uniform(-0.1, 0.1, fan_out)
        x = _gemm(g, x, w * mask, bias, f"fc{i}")
        if i < layers - 1:
            x = g.op("Relu", [x], f"relu{i}")[0]
    return g.model(f"pruned_mlp_{pattern}", [batch, in_features], x, [batch, out_features])


# --------------------------------------------------------------------------------------------
# GSC sparse CNN
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SparseCNNConfig:
    """The GSCSparseCNN family (nupic.torch), as sizes and densities.

    Layout: conv5x5 -> BN -> k-WTA -> maxpool2 (twice) -> flatten -> sparse linear -> BN (1-d)
    -> k-WTA -> dense linear to `classes`. Input is [B, 1, 32, 32].
    """

    channels: tuple[int, int] = (64, 64)
    conv_density: tuple[float, float] = (0.5, 0.2)
    conv_percent_on: tuple[float, float] = (0.095, 0.125)
    linear_units: int = 1000
    linear_density: float = 0.1
    linear_percent_on: float = 0.1
    classes: int = 12
    image: int = 32
    kernel: int = 5

    def conv_out(self, layer: int) -> int:
        """Spatial size after conv `layer` (0 or 1): 28 and 10 for a 32x32 input."""
        size = self.image - self.kernel + 1
        return size if layer == 0 else size // 2 - self.kernel + 1

    @property
    def flat_features(self) -> int:
        """Features after the second maxpool: 64 * 5 * 5 = 1600 for GSC."""
        return self.channels[1] * (self.conv_out(1) // 2) ** 2

    @property
    def kwta_sizes(self) -> tuple[int, int, int]:
        """Units each k-WTA ranks over: C*H*W per sample for the convs, units for the linear."""
        c0, c1 = self.channels
        return (c0 * self.conv_out(0) ** 2, c1 * self.conv_out(1) ** 2, self.linear_units)

    @property
    def kwta_ks(self) -> tuple[int, int, int]:
        """k of each k-WTA: round(percent_on * units), as nupic.torch's KWinners computes it."""
        pct = (*self.conv_percent_on, self.linear_percent_on)
        return tuple(int(round(p * n)) for p, n in zip(pct, self.kwta_sizes, strict=True))


GSC = SparseCNNConfig()
GSC_SUPER = SparseCNNConfig(linear_units=1500, linear_density=0.05, linear_percent_on=0.067)
GSC_TINY = SparseCNNConfig(channels=(8, 8), linear_units=100)


def sparse_cnn(
    config: SparseCNNConfig,
    batch: int = 1,
    seed: int = 0,
    boosting: bool = False,
    kwta: bool = True,
) -> onnx.ModelProto:
    """Build a GSCSparseCNN-family model from `config` (see gsc_sparse_cnn).

    kwta=False puts a ReLU where each k-WTA is (the dense twin's activation).
    """
    if boosting and not kwta:
        raise ValueError("boosting needs the k-WTA activations")
    rng = np.random.default_rng(seed)
    g = _Graph()
    x, in_ch = "input", 1
    for layer in range(2):
        ch, k_size = config.channels[layer], config.kernel
        fan_in = in_ch * k_size * k_size
        mask = _per_unit_mask(rng, ch, fan_in, config.conv_density[layer])
        w = _uniform(rng, (ch, fan_in), int(mask[0].sum())) * mask
        bias = _uniform(rng, ch, int(mask[0].sum()))
        name = f"cnn{layer + 1}"
        x = _conv(g, x, w.reshape(ch, in_ch, k_size, k_size), bias, name)
        x = _batchnorm(g, rng, x, ch, f"{name}_batchnorm")
        size = config.conv_out(layer)
        pct = config.conv_percent_on[layer]
        boost = _boost_factor(rng, (1, ch, 1, 1), pct) if boosting else None
        shape = [batch, ch, size, size]
        if kwta:
            x = _kwta(g, x, shape, config.kwta_ks[layer], f"{name}_kwinner", boost)
        else:
            x = g.op("Relu", [x], f"{name}_relu")[0]
        x = g.op("MaxPool", [x], f"{name}_maxpool", kernel_shape=[2, 2], strides=[2, 2])[0]
        in_ch = ch

    x = g.op("Flatten", [x], "flatten", axis=1)[0]
    units, flat = config.linear_units, config.flat_features
    mask = _per_unit_mask(rng, units, flat, config.linear_density)
    nnz = int(mask[0].sum())
    x = _gemm(g, x, _uniform(rng, (units, flat), nnz) * mask, _uniform(rng, units, nnz), "linear")
    x = _batchnorm(g, rng, x, units, "linear_bn")
    boost = _boost_factor(rng, (1, units), config.linear_percent_on) if boosting else None
    if kwta:
        x = _kwta(g, x, [batch, units], config.kwta_ks[2], "linear_kwinner", boost)
    else:
        x = g.op("Relu", [x], "linear_relu")[0]
    w_out = _uniform(rng, (config.classes, units), units)
    x = _gemm(g, x, w_out, _uniform(rng, config.classes, units), "output_linear")
    input_shape = [batch, 1, config.image, config.image]
    return g.model("gsc_sparse_cnn", input_shape, x, [batch, config.classes])


def gsc_sparse_cnn(
    super_sparse: bool = False,
    batch: int = 1,
    seed: int = 0,
    boosting: bool = False,
    small: bool = False,
) -> onnx.ModelProto:
    """Numenta's GSCSparseCNN (or GSCSuperSparseCNN) for Google Speech Commands, random weights.

    [B,1,32,32] -> conv5x5 1->64 (50% weights) -> BN -> k-WTA 9.5% of 64x28x28 -> maxpool2 ->
    conv5x5 64->64 (20%) -> BN -> k-WTA 12.5% of 64x10x10 -> maxpool2 -> flatten 1600 ->
    linear 1600->1000 at 10% -> BN -> k-WTA 10% -> linear 1000->12 (dense). super_sparse:
    linear 1600->1500 at 5%, k-WTA 6.7%. small: 8/8 channels, linear 200->100 (GSC_TINY), for fast
    tests. BN is affine=False (scale 1, shift 0). The final LogSoftmax is left out: it does
    not change the ranking and is not what this compiler is about.
    """
    if small and super_sparse:
        raise ValueError("small and super_sparse are exclusive")
    config = GSC_TINY if small else (GSC_SUPER if super_sparse else GSC)
    return sparse_cnn(config, batch=batch, seed=seed, boosting=boosting)


def gsc_dense_twin(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """The super-sparse GSC network's dense twin: same topology and sizes (conv5x5 1->64,
    conv5x5 64->64, linear 1600->1500, linear 1500->12), every weight kept and ReLU where the
    sparse network has k-WTA. What "10x faster than dense" (#22) is measured against."""
    config = dataclasses.replace(GSC_SUPER, conv_density=(1.0, 1.0), linear_density=1.0)
    return sparse_cnn(config, batch=batch, seed=seed, kwta=False)


def tiny_sparse_cnn(batch: int = 1, seed: int = 0, boosting: bool = False) -> onnx.ModelProto:
    """The GSC network with 8/8 channels and a 200->100 linear: same ops, fast to compile."""
    return sparse_cnn(GSC_TINY, batch=batch, seed=seed, boosting=boosting)


def kwta_model(
    shape: Sequence[int], k: int, seed: int = 0, boosting: bool = False
) -> onnx.ModelProto:
    """A model that is one global k-WTA over `shape` ([B, C, H, W] or [B, N]), for unit tests.

    With boosting the boost factor is per channel (dim 1); read it back from the initializer
    named "kwinner.boost_factor".
    """
    shape = [int(s) for s in shape]
    if len(shape) not in (2, 4):
        raise ValueError(f"k-WTA input must be [B, N] or [B, C, H, W], got {shape}")
    rng = np.random.default_rng(seed)
    boost = None
    if boosting:
        per_channel = [1, shape[1]] + [1] * (len(shape) - 2)
        boost = _boost_factor(rng, per_channel, k / int(np.prod(shape[1:])))
    g = _Graph()
    y = _kwta(g, "input", shape, k, "kwinner", boost)
    return g.model("kwta", shape, y, shape)


def kwta_reference(x: np.ndarray, k: int, boost: np.ndarray | None = None) -> np.ndarray:
    """Numpy k-WTA, global per sample: keep x where (boosted) x >= its k-th largest, else 0.

    Ties with the k-th value all win, so more than k units can stay on.
    """
    x = np.asarray(x)
    ranked = x if boost is None else x * boost
    flat = ranked.reshape(x.shape[0], -1)
    kth = -np.partition(-flat, k - 1, axis=1)[:, k - 1 : k]
    return np.where(flat >= kth, x.reshape(x.shape[0], -1), 0).astype(x.dtype).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# ResNet basic block
# --------------------------------------------------------------------------------------------
def _conv_bn(
    g: _Graph,
    rng: np.random.Generator,
    x: str,
    shape: tuple[int, int, int],
    density: float,
    stride: int,
    name: str,
) -> str:
    """Conv (no bias, "same" padding, stride) -> BatchNorm, as torchvision writes ``conv_bn``;
    the weight keeps round(density * fan_in) random inputs per filter (nupic.torch's rule)."""
    out_c, in_c, k = shape
    fan_in = in_c * k * k
    mask = _per_unit_mask(rng, out_c, fan_in, density)
    w = (_uniform(rng, (out_c, fan_in), int(mask[0].sum())) * mask).reshape(out_c, in_c, k, k)
    wn = g.const(f"{name}.weight", _f32(w))
    pad = k // 2
    y = g.op("Conv", [x, wn], name, kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4)[0]
    scale = g.const(f"{name}_bn.weight", _f32(rng.uniform(0.5, 1.5, out_c)))
    shift = g.const(f"{name}_bn.bias", _f32(rng.uniform(-0.1, 0.1, out_c)))
    mean = g.const(f"{name}_bn.running_mean", _f32(rng.uniform(-0.1, 0.1, out_c)))
    var = g.const(f"{name}_bn.running_var", _f32(rng.uniform(0.5, 1.5, out_c)))
    return g.op(
        "BatchNormalization", [y, scale, shift, mean, var], f"{name}_bn", epsilon=BN_EPSILON
    )[0]


def resnet_block(
    in_channels: int = 16,
    out_channels: int = 16,
    size: int = 8,
    stride: int = 1,
    density: float = 0.1,
    batch: int = 1,
    seed: int = 0,
) -> onnx.ModelProto:
    """One ResNet basic block (torchvision's ``BasicBlock``), pruned, random weights:
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, conv 3x3, ``conv1`` with ``stride``.

    The shortcut is the identity when the shape is kept (stride 1, in == out channels), else the
    downsample ``bn(conv1x1 stride s)``. Every conv keeps ``density`` of its weights per filter.
    The FPGA backend's residual tests and cycle counts use it: one clone, two branches, one add.
    """
    if stride < 1 or size % stride:
        raise ValueError(f"stride {stride} does not divide the {size}x{size} input")
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = "input"
    y = _conv_bn(g, rng, x, (out_channels, in_channels, 3), density, stride, "conv1")
    y = g.op("Relu", [y], "relu1")[0]
    y = _conv_bn(g, rng, y, (out_channels, out_channels, 3), density, 1, "conv2")
    skip = x
    if stride != 1 or in_channels != out_channels:
        skip = _conv_bn(g, rng, x, (out_channels, in_channels, 1), density, stride, "downsample")
    y = g.op("Add", [y, skip], "add")[0]
    y = g.op("Relu", [y], "relu2")[0]
    out = size // stride
    return g.model(
        "resnet_block",
        [batch, in_channels, size, size],
        y,
        [batch, out_channels, out, out],
    )


# --------------------------------------------------------------------------------------------
# Bad inputs (for the error-path tests)
# --------------------------------------------------------------------------------------------
def model_with_unsupported_op(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Gemm -> Reshape [B,4,4] -> Det (node "det0"): valid ONNX, runs in onnxruntime, but TVM
    0.27's ONNX frontend has no converter for Det."""
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = _gemm(g, "input", rng.standard_normal((16, 16)), np.zeros(16), "fc0")
    x = g.op("Reshape", [x, g.const("square", _i64([batch, 4, 4]))], "reshape0")[0]
    x = g.op("Det", [x], "det0")[0]
    return g.model("unsupported_op", [batch, 16], x, [batch])


def model_with_dynamic_batch(features: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A two-layer MLP whose batch dimension is the symbol "N" (not a static shape)."""
    model = pruned_mlp(layers=2, hidden=features, density=0.5, seed=seed)
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "N"
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike) -> str:
    """Write `model` to `path` (creating parent folders) and return the path as a string."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    onnx.save(model, path)
    return path
