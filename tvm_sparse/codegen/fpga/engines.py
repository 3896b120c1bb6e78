"""The engines of ``nnet_sparse.h``, one table entry each, as hls4ml's Vivado backend has one
config template per layer kind.

An entry names the engine's C++ function and the groups of values its config struct needs; the
struct itself is ``templates/engines/<function>.h`` and declares only the fields that function
reads. Adding an engine = its C++ in ``nnet_sparse.h``, its config template, its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .hw_model import HwLayer, split

Values = dict[str, object]
_C_INT = {np.dtype(np.uint8): "uint8_t", np.dtype(np.uint16): "uint16_t"}


def _stage(layer: HwLayer) -> Values:
    """What every config has: its name, the comment line, the data types, sizes and lanes."""
    return {
        "name": layer.name,
        "source": layer.source,
        "op": layer.op,
        "engine": layer.engine,
        "in_shape": "x".join(map(str, layer.in_shape)),
        "out_shape": "x".join(map(str, layer.out_shape)),
        "in_t": layer.in_t,
        "out_t": layer.out_t,
        "n_in": layer.n_in,
        "n_out": layer.n_out,
        "lanes": layer.lanes,
    }


def _weighted(layer: HwLayer) -> Values:
    """Weighted engines: number formats of weights, bias and accumulator, the fused ReLU, the
    outputs (channels or rows) and the inputs each one reads."""
    return {
        "weight_t": layer.weight_t,
        "bias_t": layer.bias_t,
        "accum_t": layer.accum_t,
        "relu": "true" if layer.relu else "false",
        "out_c": layer.out_shape[0],
        "n_kin": layer.n_kin,
    }


def _planes(layer: HwLayer) -> Values:
    """[C, H, W] of the input and output, and the window's stride (conv and pooling)."""
    in_c, in_h, in_w = layer.in_shape
    _, out_h, out_w = layer.out_shape
    stride_h, stride_w = layer.attrs["stride"]
    return {
        "in_c": in_c,
        "in_h": in_h,
        "in_w": in_w,
        "out_h": out_h,
        "out_w": out_w,
        "out_c": layer.out_shape[0],
        "stride_h": stride_h,
        "stride_w": stride_w,
    }


def _window(layer: HwLayer) -> Values:
    """Convolution: kernel, dilation and the zero-padded input buffer."""
    kern_h, kern_w = layer.kernel
    dil_h, dil_w = layer.attrs["dilation"]
    pad_top, pad_left = layer.attrs["pad"]
    pad_h, pad_w = layer.attrs["padded"]
    return {
        "kern_h": kern_h,
        "kern_w": kern_w,
        "dil_h": dil_h,
        "dil_w": dil_w,
        "pad_top": pad_top,
        "pad_left": pad_left,
        "pad_h": pad_h,
        "pad_w": pad_w,
        "n_padded": layer.in_shape[0] * pad_h * pad_w,
    }


def _pe_simd(layer: HwLayer) -> Values:
    """Dense and sparse-dense engines: PE outputs x SIMD weights of a row."""
    par = split(layer)
    return {"pe": par.pe, "simd": par.simd}


def _packed(layer: HwLayer) -> Values:
    """Sparse-sparse engines: the packed columns, their owners and the scatter lanes."""
    owner = layer.weights.arrays["owner"]
    par = split(layer)
    return {
        "owner_t": _C_INT.get(owner.dtype, "uint32_t"),
        "groups": layer.weights.n_groups,
        "acc_banks": layer.out_shape[0] + 1,
        "taps": par.taps,
        "slots": par.slots,
        "res_lanes": par.res_lanes,
    }


def _kwta(layer: HwLayer) -> Values:
    n_boost = layer.boost.size if layer.boost is not None else 1
    return {
        "k": layer.attrs["k"],
        "boosted": int(layer.boost is not None),
        "n_boost": n_boost,
        "boost_stride": max(1, layer.n_in // n_boost),
    }


def _pool(layer: HwLayer) -> Values:
    pool_h, pool_w = layer.attrs["pool"]
    return {"pool_h": pool_h, "pool_w": pool_w}


@dataclass(frozen=True)
class Engine:
    """One engine of ``nnet_sparse.h``: ``nnet::<function><config_<layer>>`` runs the stage."""

    function: str
    groups: tuple[Callable[[HwLayer], Values], ...] = ()

    @property
    def config_template(self) -> str:
        """The config struct's template, relative to templates/."""
        return f"engines/{self.function}.h"

    def config_values(self, layer: HwLayer) -> Values:
        values = _stage(layer)
        for group in self.groups:
            values |= group(layer)
        return values


# (HwLayer.op, HwLayer.engine) -> the engine that runs it
ENGINES: dict[tuple[str, str], Engine] = {
    ("conv2d", "dense"): Engine("conv2d_dense", (_weighted, _planes, _window, _pe_simd)),
    ("conv2d", "sparse_dense"): Engine(
        "conv2d_sparse_dense", (_weighted, _planes, _window, _pe_simd)
    ),
    ("conv2d", "sparse_sparse"): Engine(
        "conv2d_sparse_sparse", (_weighted, _planes, _window, _packed)
    ),
    ("linear", "dense"): Engine("linear_dense", (_weighted, _pe_simd)),
    ("linear", "sparse_dense"): Engine("linear_sparse_dense", (_weighted, _pe_simd)),
    ("linear", "sparse_sparse"): Engine("linear_sparse_sparse", (_weighted, _packed)),
    ("kwta", "kwta"): Engine("kwta", (_kwta,)),
    ("maxpool2d", "maxpool"): Engine("maxpool2d", (_planes, _pool)),
    ("relu", "relu"): Engine("relu"),
}


def engine_of(layer: HwLayer) -> Engine:
    try:
        return ENGINES[(layer.op, layer.engine)]
    except KeyError:
        raise KeyError(f"no {layer.engine} engine for {layer.op} in engines.ENGINES") from None
