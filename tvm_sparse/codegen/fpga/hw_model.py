"""The model of the hardware: the one data structure the writer, the estimator and csim read.

An ``HwModel`` is a sequence of ``HwLayer`` stages (one dataflow process each), built from the
canonical Relax ``main`` by ``from_relax.build_hw_model``:

* ``conv2d`` / ``linear`` with the weight stored for its engine (``WeightStore``, filled by
  ``weight_stores``): ``dense`` (every weight, [O, K]), ``sparse_dense`` (CSR of the non-zeros
  with precomputed input offsets: zero weights are never stored nor multiplied) or
  ``sparse_sparse`` (complementary packed columns + residual: for each *active* input, its
  packed column is scatter-added by owner);
* ``kwta`` (global per sample, ties >= the k-th win, optional boost: rank on x * boost, keep x);
* ``maxpool2d`` and ``relu``; reshape / flatten vanish (the stream order is the flat NCHW order);
* residual networks: ``clone`` (one dense stream in, two identical dense streams out: a value
  with two consumers) and ``add`` (two dense streams in, their elementwise sum, optional fused
  ReLU: ResNet's ``relu(conv_bn(x) + shortcut)``).

The stages are listed in a topological order; ``HwLayer.inputs`` names the stream each input
comes from (producer index, output port; -1 is the model's input), so the model is a DAG.

Edges between stages are dense streams (beats of ``pack`` consecutive values) or sparse streams
(one ``(index, value)`` per non-zero, then an end marker). A sparse-sparse engine needs a sparse
input, so its producer chain (max-pool, then the k-WTA or ReLU before it) emits sparse streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...ir.layers import CONV2D, LINEAR
from .target import FpgaTarget, Precision

VARIANTS = ("dense", "sparse-dense", "sparse-sparse")


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
    op: str  # conv2d | linear | kwta | maxpool2d | relu | clone | add
    engine: str  # dense | sparse_dense | sparse_sparse | kwta | maxpool | relu | clone | add
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
    # measured by calibrate on sample inputs: "in_freq" (how often each input position is
    # non-zero) and "out_masks" ([samples, n_out] non-zero masks); the cycle counts of the
    # data-dependent loops are expectations over them
    activity: dict | None = None
    # number formats (C type names), filled by assign_types
    in_t: str = "float"
    out_t: str = "float"
    weight_t: str = "float"
    bias_t: str = "float"
    accum_t: str = "float"
    # (producer index, output port) of each input stream; -1 is the model's input. Empty: the
    # stage before it in the list (a sequential model written by hand).
    inputs: list[tuple[int, int]] = field(default_factory=list)
    n_outputs: int = 1  # output streams (a clone has two)
    # int8: integer weights with one scale per output channel, multiplied in at the output
    # (``scale_t``, values ``weight_scale``); k-WTA ranks x * boost as ``rank_t``
    scale_t: str = "float"
    weight_scale: np.ndarray | None = None
    rank_t: str = "float"
    boost_t: str = "float"

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


def layer_cached(layer: HwLayer, key: str, fn):
    """``fn()``, computed once per layer and ``key``: what the fold search asks of a layer's
    weights or geometry at every lane count it tries."""
    cache = layer.attrs.setdefault("_estimator", {})
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def _tap_pixels(layer: HwLayer, taps: int) -> np.ndarray:
    """[positions, tap groups, taps]: the output pixel each tap of a group puts an input
    position on (``-1``: that tap's window misses it), as the sparse-sparse conv computes it."""
    _, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    kh_n, kw_n = layer.kernel
    (sh, sw), (dh, dw) = layer.attrs["stride"], layer.attrs["dilation"]
    pad_top, pad_left = layer.attrs["pad"]
    groups = -(-kh_n * kw_n // taps)
    tap = np.arange(groups * taps)
    kh, kw = tap // kw_n, tap % kw_n
    y = np.arange(h)[:, None, None] + pad_top - kh * dh  # [h, 1, taps]
    x = np.arange(w)[None, :, None] + pad_left - kw * dw  # [1, w, taps]
    oy, ox = y // sh, x // sw
    ok_y = (y >= 0) & (y % sh == 0) & (oy < oh)
    ok_x = (x >= 0) & (x % sw == 0) & (ox < ow)
    ok = ok_y & ok_x & (tap < kh_n * kw_n)
    pixels = np.where(ok, oy * ow + ox, -1)
    return pixels.reshape(h * w, groups, taps)


def accumulator_pixel_banks(layer: HwLayer, lanes: int | None = None) -> int:
    """Banks (cyclic, ``pixel mod B``) of each output channel's accumulator plane in the
    sparse-sparse conv: the fewest with which the taps one step scatters to never meet in a
    bank, for any input position (so each bank takes one read-modify-write a cycle). 1 when a
    step takes one tap; at most the plane's pixels (distinct taps of one input always put it
    on distinct pixels)."""
    taps = split(layer, lanes).taps
    if taps == 1:
        return 1
    return layer_cached(layer, f"pixel_banks_{taps}", lambda: _fewest_pixel_banks(layer, taps))


def _fewest_pixel_banks(layer: HwLayer, taps: int) -> int:
    pixels = _tap_pixels(layer, taps)
    valid = pixels >= 0
    n = layer.out_pixels
    for banks in range(min(taps, n), n):
        bank = np.where(valid, pixels % banks, -1 - np.arange(taps))  # misses never clash
        ordered = np.sort(bank, axis=2)
        if not (ordered[..., 1:] == ordered[..., :-1]).any():
            return banks
    return n  # every pixel its own bank


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
    # cost of a unit of each resource when a memory picks LUTRAM / BRAM / URAM (None: by supply)
    memory_prices: dict[str, float] | None = None

    @property
    def precision(self) -> Precision:
        return self.target.precision

    def layer(self, name: str) -> HwLayer:
        for layer in self.layers:
            if layer.name == name or layer.source == name:
                return layer
        raise KeyError(name)

    def sources(self, layer: HwLayer) -> list[tuple[int, int]]:
        """(producer index, port) of each input stream of ``layer``; -1 is the model's input."""
        return list(layer.inputs) if layer.inputs else [(layer.index - 1, 0)]

    def producers(self, layer: HwLayer) -> list[HwLayer | None]:
        """The stage behind each input stream of ``layer`` (None: the model's input)."""
        return [self.layers[i] if i >= 0 else None for i, _ in self.sources(layer)]

    def consumers(self, layer: HwLayer) -> list[tuple[HwLayer, int]]:
        """(consumer, port of ``layer`` it reads), in list order."""
        return [(x, port) for x in self.layers for i, port in self.sources(x) if i == layer.index]

    def pack_in(self, layer: HwLayer) -> int:
        prev = self.producers(layer)[0]
        return self.input_pack if prev is None else prev.pack_out

    def fifo_depth(self, layer: HwLayer, port: int) -> int:
        """Depth (beats) of the stream leaving ``layer`` on ``port``.

        A clone's outputs meet again at an add. Each stage between them holds one sample in
        flight under DATAFLOW (it reads its whole input before it writes), so the branch with
        fewer stages buffers one sample per stage the longer branch has beyond it: then the
        clone never waits on it and the block runs at its slowest stage's II. Less than one
        sample deadlocks an identity shortcut (the clone blocks on the full skip FIFO before
        conv1 has read its sample); one sample where two are due runs, at about half the rate.
        A beat-level model of the pipeline checks both (tests/codegen/dataflow_sim.py). The
        longer branch's stream, like every other stream, is 2 beats deep.
        """
        if layer.op != "clone":
            return 2
        lengths = {p: _stages_to_add(self, x) for x, p in self.consumers(layer)}
        behind = max(lengths.values()) - lengths[port]
        return 2 if behind == 0 else -(-layer.n_out // layer.pack_out) * behind


def _stages_to_add(model: HwModel, layer: HwLayer) -> int:
    """Stages from ``layer`` (inclusive) up to the next add (exclusive), along first consumers."""
    n = 0
    while layer.op != "add":
        n += 1
        nxt = model.consumers(layer)
        if not nxt:
            break
        layer = nxt[0][0]
    return n
