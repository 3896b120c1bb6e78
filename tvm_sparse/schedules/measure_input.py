"""The activation a layer's kernels are timed on, by the per-layer choice and by the tuner."""

from __future__ import annotations

import numpy as np

from ..ir.layers import LINEAR, LayerSpec


def layer_input(layer: LayerSpec, seed: int = 0) -> np.ndarray:
    """Normal values, zeroed to the layer's expected input density (k-WTA / ReLU), so
    sparse-sparse kernels see the sparsity they will see in the model."""
    rng = np.random.default_rng(seed)
    shape = (layer.rows, layer.x_shape[-1]) if layer.kind == LINEAR else tuple(layer.x_shape)
    x = rng.standard_normal(shape).astype("float32")
    if layer.input_density is not None:
        x *= rng.random(shape) < layer.input_density
    return x
