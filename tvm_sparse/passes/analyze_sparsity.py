"""Sparsity analysis: per weighted layer, its shapes, MACs, weight patterns and input activation.

``AnalyzeLayers`` is the first of the four sparsify passes: it finds the layers of ``main`` for
the plan and starts the report on the module (one row per layer, no kernel chosen yet).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..formats.patterns import detect_patterns
from ..formats.weight_map import weight_map
from ..ir.layers import LayerSpec, find_layers
from ..ir.relax_utils import binding_map
from ..report import LayerReport, Report
from .activation_sparsity import ActivationInfo, producer_of
from .layer_plan import LayerPlan
from .module_report import attach_report


def name_layers(layers: list[LayerSpec], names: list[tuple[str, str]]) -> None:
    """Give layers the model's node names, else ``linear3``-style names.

    Names that carry a ``key`` (``frontend.WeightedNode``) go to the layers by key, in order
    within a key, so a model whose nodes TVM reorders is still named right; otherwise, or when
    a key finds no layer, by position when the counts and conv/non-conv kinds line up."""
    by_key = _names_by_key(layers, names)
    if by_key is not None:
        for layer, name in zip(layers, by_key):
            layer.name = name
        return
    usable = len(names) == len(layers) and all(
        (op == "Conv") == (layer.kind == "conv2d") for layer, (_, op) in zip(layers, names)
    )
    for i, layer in enumerate(layers):
        layer.name = names[i][0] if usable else f"{layer.kind}{i}"


def _names_by_key(layers: list[LayerSpec], names: list[tuple[str, str]]) -> list[str] | None:
    """Each layer's name by its key, or None where any name has no key or any layer no name."""
    keys = [getattr(n, "key", None) for n in names]
    if len(names) != len(layers) or None in keys:
        return None
    free = list(range(len(names)))
    out = []
    for layer in layers:
        match = next((i for i in free if keys[i] == layer.key), None)
        if match is None:
            return None
        free.remove(match)
        out.append(names[match][0])
    return out


# ReLU density is data dependent; half the values of a trained network's pre-activations are
# negative to a first approximation. Used for estimates only; measure=True samples real inputs.
ASSUMED_RELU_DENSITY = 0.5


def analyze_function(
    func: relax.Function, names: list[tuple[str, str]] | None = None
) -> list[tuple[LayerSpec, ActivationInfo]]:
    """Layers of ``func`` (canonical form) with the activation that feeds each."""
    layers = find_layers(func)
    name_layers(layers, names or [])
    bindings = binding_map(func)
    relu_tails = {layer.tail_var for layer in layers if layer.activation in ("relu", "relu6")}
    rows = []
    for layer in layers:
        act = producer_of(layer.x_var, bindings, relu_tails)
        if act.kind == "kwta":
            layer.input_density = act.density
        elif act.kind == "relu":
            layer.input_density = ASSUMED_RELU_DENSITY
        rows.append((layer, act))
    return rows


def layer_report(layer: LayerSpec, act: ActivationInfo) -> LayerReport:
    """The report row of one layer (before a kernel is chosen)."""
    w2d = layer.weight_2d
    nnz = int(np.count_nonzero(w2d))
    patterns = detect_patterns(w2d).to_dict()
    epilogue = (["bias"] if layer.bias is not None else []) + (
        [layer.activation] if layer.activation else []
    )
    return LayerReport(
        name=layer.name,
        op=layer.kind,
        input_shape=list(layer.x_shape),
        weight_shape=list(layer.weight.shape),
        output_shape=list(layer.out_shape),
        macs_dense=int(layer.macs_dense),
        weight_density=nnz / max(w2d.size, 1),
        weight_nnz=nnz,
        patterns=patterns,
        activation=act.to_dict(),
        epilogue=epilogue,
        weight_map=weight_map(w2d),
    )


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.AnalyzeLayers")
class AnalyzeLayers:
    """Find the layers of ``main`` (canonical form) for ``plan`` and attach their report rows."""

    def __init__(self, plan: LayerPlan, target: tvm.target.Target):
        self.plan = plan
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        analyzed = analyze_function(mod["main"], self.plan.options.layer_names)
        self.plan.start(mod["main"], [layer for layer, _act in analyzed])
        rows = [layer_report(layer, act) for layer, act in analyzed]
        return attach_report(mod, Report("", str(self.target.kind.name), rows))
