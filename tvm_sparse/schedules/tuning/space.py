"""Knob spaces of the candidate kernels, and building a candidate with one knob setting.

The sparse kernels are block-free TIR whose loop extents come from the packed weight, so
MetaSchedule cannot transform them: their schedule lives in the builders' keyword knobs
(register tile, batch tile, column panel, output tile, packing budget, parallel).
:func:`knob_space` lists the settings worth trying for one candidate of one layer, and
:func:`build_candidate` builds the kernel with one of them **on the layer's real weights** (the
real index and value arrays, so a measurement sees the real sparsity structure).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import numpy as np
import tvm

from ...ir.layers import CONV2D, LINEAR, LayerSpec
from ...target import num_cores
from ..kernel import KernelCall


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _product(**axes: list) -> list[dict]:
    out: list[dict] = [{}]
    for name, values in axes.items():
        out = [{**o, name: v} for o in out for v in values]
    return out


def _dense_linear_space(layer: LayerSpec, cores: int) -> list[dict]:
    m, n = layer.rows, layer.weight.shape[0]
    mrs = [4, 5, 6] if m >= 4 else [m]
    col_cap = max(16, _round_up(n, 16))
    nbs = [nb for nb in (16, 32, 64, 128) if nb <= col_cap and (m < 4 or nb <= 32)]
    par = [True, False] if cores > 1 else [False]
    return [{"tiling": t} for t in _product(mr=mrs, nb=nbs, k_unroll=[1, 4], parallel=par)]


def _panel_space(m: int, cores: int, block_cols: int) -> list[dict]:
    """CSR / BSR: the row / block kernel (``min_batch = m + 1``; ``row_batch`` rows per decoded
    chunk) or the transposed batch-panel kernel (``min_batch = m``; batch tile, panel width)."""
    par = [True, False] if cores > 1 else [False]
    small = _product(min_batch=[m + 1], row_batch=[1, 2, 4] if m > 1 else [1], parallel=par)
    if m < 2:
        return small
    tiles = [t for t in (8, 16, 32, 64) if t <= _round_up(m, 8)]
    cols = [None] + [c for c in (64, 128, 256, 512, 1024, 2048) if c >= block_cols]
    panel = _product(min_batch=[m], m_tile=tiles, panel_cols=cols, row_block=[None, 64, 256])
    return small + [{**p, "parallel": q} for p in panel for q in par]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _sparse_conv_space(layer: LayerSpec, cores: int) -> list[dict]:
    oh, ow = layer.out_shape[2], layer.out_shape[3]
    tiles = [
        (th, tw)
        for th in _divisors(oh)
        for tw in _divisors(ow)
        if 8 <= th * tw <= 128 or (oh * ow < 8 and (th, tw) == (oh, ow))
    ]
    # prefer whole rows (contiguous vectors), then bigger tiles: a bounded, sensible subset
    tiles.sort(key=lambda t: (t[1] != ow, -t[0] * t[1]))
    par = [True, False] if cores > 1 else [False]
    return _product(tile=[list(t) for t in tiles[:12]], parallel=par)


def _dense_conv_space(layer: LayerSpec, cores: int) -> list[dict]:
    ow = layer.out_shape[3]
    mrs = [4, 5, 6] if ow >= 4 else [ow]
    par = [True, False] if cores > 1 else [False]
    return [{"tiling": t} for t in _product(mr=mrs, nb=[16, 32], parallel=par)]


def _sparse_sparse_space(layer: LayerSpec, cores: int) -> list[dict]:
    groups = [None, 1, 2, 4, 8, 16]
    par = [True, False] if cores > 1 and layer.rows > 1 else [None]
    space = _product(max_groups=groups, parallel=par)
    if layer.kind == CONV2D:
        space = [{**s, "vector": v} for s in space for v in (None, True, False)]
    return space


def knob_space(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
    """All knob settings of one candidate kernel; ``{}`` (the builder's defaults) comes first.

    Knobs the builder does not take are dropped (and the duplicates this makes), so a builder
    that loses a knob narrows the space instead of breaking the tuner.
    """
    cores = num_cores(target)
    if layer.kind == LINEAR and candidate == "dense":
        space = _dense_linear_space(layer, cores)
    elif layer.kind == LINEAR and candidate == "csr":
        space = _panel_space(layer.rows, cores, 1)
    elif layer.kind == LINEAR and candidate.startswith("bsr"):
        space = _panel_space(layer.rows, cores, int(candidate[3:].split("x")[1]))
    elif layer.kind == CONV2D and candidate == "dense":
        space = _dense_conv_space(layer, cores) if layer.conv_attrs.get("groups", 1) == 1 else []
    elif layer.kind == CONV2D and candidate == "sparse_conv":
        space = _sparse_conv_space(layer, cores)
    elif candidate == "sparse_sparse":
        space = _sparse_sparse_space(layer, cores)
    else:
        space = []
    builder = _builder(candidate, layer)
    params = set(inspect.signature(builder).parameters) if builder is not None else set()
    out, seen = [{}], {"{}"}
    for setting in space:
        setting = {k: v for k, v in setting.items() if k in params}
        key = json.dumps(setting, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(setting)
    return out


def _builder(candidate: str, layer: LayerSpec) -> Callable | None:
    from .. import dense_x86, sparse_x86

    if candidate == "dense":
        return dense_x86.dense_linear if layer.kind == LINEAR else dense_x86.dense_conv2d
    if candidate == "csr":
        return sparse_x86.csr_linear
    if candidate.startswith("bsr"):
        return sparse_x86.bsr_linear
    if candidate == "sparse_conv":
        return sparse_x86.sparse_conv2d
    if candidate == "sparse_sparse":
        from .. import sparse_sparse_x86

        name = "sparse_sparse_linear" if layer.kind == LINEAR else "sparse_sparse_conv2d"
        return getattr(sparse_sparse_x86, name, None)
    return None


def _builder_kwargs(knobs: dict) -> dict:
    """JSON knobs -> builder keyword arguments (GemmTiling objects, tuples)."""
    from ..dense_x86 import GemmTiling

    out = {}
    for name, value in knobs.items():
        if name == "tiling":
            out[name] = GemmTiling(**value)
        elif name == "tile":
            out[name] = tuple(value)
        else:
            out[name] = value
    return out


def build_candidate(
    candidate: str, layer: LayerSpec, target: tvm.target.Target, knobs: dict | None = None
) -> KernelCall:
    """Build one candidate kernel of ``layer`` with ``knobs`` (None / {}: the hand schedule)."""
    builder = _builder(candidate, layer)
    if builder is None:
        raise ValueError(f"no builder for candidate {candidate!r} of a {layer.kind} layer")
    kwargs = _builder_kwargs(knobs or {})
    if layer.kind == LINEAR:
        args: tuple = (layer.rows, layer.weight)
        if candidate.startswith("bsr"):
            r, c = (int(v) for v in candidate[3:].split("x"))
            args = (*args, (r, c))
        return builder(*args, layer.bias, layer.activation, target, **kwargs)
    attrs = layer.conv_attrs
    return builder(
        layer.x_shape,
        layer.weight,
        layer.bias,
        strides=attrs["strides"],
        padding=attrs["padding"],
        dilation=attrs["dilation"],
        groups=attrs["groups"],
        activation=layer.activation,
        target=target,
        **kwargs,
    )


def layer_input(layer: LayerSpec, seed: int = 0) -> np.ndarray:
    """The activation a layer is measured on: normal values, zeroed to the layer's expected
    input density (k-WTA / ReLU), so sparse-sparse kernels see realistic sparsity."""
    rng = np.random.default_rng(seed)
    shape = (layer.rows, layer.x_shape[-1]) if layer.kind == LINEAR else tuple(layer.x_shape)
    x = rng.standard_normal(shape).astype("float32")
    if layer.input_density is not None:
        x *= rng.random(shape) < layer.input_density
    return x
