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

from ...safe_text import comment_text
from .cycles import FLOAT_ADD_CYCLES, accumulate_ii, accumulator_copies, pool_ii, row_steps
from .hw_model import HwLayer, accumulator_pixel_banks, split
from .number_formats import boost_store_t

Values = dict[str, object]
_C_INT = {np.dtype(np.uint8): "uint8_t", np.dtype(np.uint16): "uint16_t"}


def _stage(layer: HwLayer) -> Values:
    """What every config has: its name, the comment line, the data types, sizes and lanes."""
    return {
        "name": layer.name,
        "source": comment_text(layer.source),
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
        "requantize": _requantize(layer),
    }


def _requantize(layer: HwLayer) -> str:
    """The body of the config's requantize(acc, o): int8 layers hold integer weights and
    multiply in their output channel's scale (an 18-bit ROM word); others only convert."""
    if layer.weight_scale is None:
        return "        return (out_t)acc;"
    values = [f"{v:.9g}f" for v in layer.weight_scale.astype(np.float32).tolist()]  # exact
    rows = [", ".join(values[i : i + 8]) for i in range(0, len(values), 8)]
    return (
        "        // integer weights: output channel o's real weights are w * scale[o]\n"
        f"        typedef {layer.scale_t} scale_t;\n"
        f"        static const scale_t scale[{len(values)}] = {{\n"
        + "".join(f"            {row},\n" for row in rows)
        + "        };\n"
        "        return (out_t)(acc * scale[o]);"
    )


def _hw(name: str, pair: tuple[int, int]) -> Values:
    """An (H, W) pair as the config structs name it: ``<name>_h``, ``<name>_w``."""
    return {f"{name}_h": pair[0], f"{name}_w": pair[1]}


def _planes(layer: HwLayer) -> Values:
    """[C, H, W] of the input and output, and the window's stride (conv and pooling)."""
    return {
        "in_c": layer.in_shape[0],
        "out_c": layer.out_shape[0],
        **_hw("in", layer.in_shape[1:]),
        **_hw("out", layer.out_shape[1:]),
        **_hw("stride", layer.attrs["stride"]),
    }


def _window(layer: HwLayer) -> Values:
    """Convolution: kernel, dilation and the zero-padded input buffer."""
    pad_top, pad_left = layer.attrs["pad"]
    pad_h, pad_w = layer.attrs["padded"]
    return {
        **_hw("kern", layer.kernel),
        **_hw("dil", layer.attrs["dilation"]),
        **_hw("pad", layer.attrs["padded"]),
        "pad_top": pad_top,
        "pad_left": pad_left,
        "n_padded": layer.in_shape[0] * pad_h * pad_w,
    }


def _pe_simd(layer: HwLayer) -> Values:
    """Dense and sparse-dense engines: PE outputs x SIMD weights of a row."""
    par = split(layer)
    return {
        "pe": par.pe,
        "simd": par.simd,
        "row_steps": row_steps(layer),
        "acc_ii": accumulate_ii(layer),
    }


def _packed(layer: HwLayer) -> Values:
    """Sparse-sparse engines: the packed columns, their owners and the scatter lanes."""
    owner = layer.weights.arrays["owner"]
    par = split(layer)
    return {
        "owner_t": _C_INT.get(owner.dtype, "uint32_t"),
        "groups": layer.weights.n_groups,
        "acc_pixel_banks": accumulator_pixel_banks(layer),
        "taps": par.taps,
        "slots": par.slots,
        "res_lanes": par.res_lanes,
        "acc_ii": accumulate_ii(layer),
        "acc_copies": accumulator_copies(layer),
    }


def _kwta(layer: HwLayer) -> Values:
    n_boost = layer.boost.size if layer.boost is not None else 1
    return {
        "rank_t": layer.rank_t,
        "boost_t": layer.boost_t,
        "boost_store_t": boost_store_t(layer),
        "k": layer.attrs["k"],
        "boosted": int(layer.boost is not None),
        "n_boost": n_boost,
        "boost_stride": max(1, layer.n_in // n_boost),
        "exact": int(bool(layer.attrs.get("exact"))),
    }


def _softmax(layer: HwLayer) -> Values:
    return {"log": "true" if layer.attrs["log"] else "false", "acc_ii": FLOAT_ADD_CYCLES}


def _pool(layer: HwLayer) -> Values:
    return {**_hw("pool", layer.attrs["pool"]), "pool_ii": pool_ii(layer)}


def _residual(layer: HwLayer) -> Values:
    """The residual add: the sum's format and the fused ReLU."""
    return {"accum_t": layer.accum_t, "relu": "true" if layer.relu else "false"}


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
    ("softmax", "softmax"): Engine("softmax", (_softmax,)),
    ("maxpool2d", "maxpool"): Engine("maxpool2d", (_planes, _pool)),
    ("relu", "relu"): Engine("relu"),
    ("clone", "clone"): Engine("clone_stream"),
    ("add", "add"): Engine("residual_add", (_residual,)),
}


def engine_of(layer: HwLayer) -> Engine:
    try:
        return ENGINES[(layer.op, layer.engine)]
    except KeyError:
        raise KeyError(f"no {layer.engine} engine for {layer.op} in engines.ENGINES") from None
