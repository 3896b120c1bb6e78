"""Keep activations transposed between consecutive batched sparse linears.

The batched sparse-linear (panel) kernel computes on xT and yT: it transposes x on the way in
and y on the way out. Where one such layer feeds the next and nothing else reads the activation
between them, the producer writes yT in the tile layout and the consumer reads it as its xT, so
each such pair skips two transposes and the producer's last pass over yT (2048x2048 at batch
64: 0.98 -> 0.94 ms for a layer with both sides chained; see ``sparse_panel_x86.panel_kernel``).
The third sparsify pass: it relays out the plan's kernels and says so in the report's reasons.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ..ir.layers import LayerSpec
from ..ir.relax_utils import use_counts
from ..schedules.kernel import KernelCall
from .layer_plan import LayerPlan
from .module_report import attach_report, read_report

log = logging.getLogger("tvm_sparse")

Plan = dict[relax.Var, tuple[LayerSpec, KernelCall]]

_LAYOUT_NOTES = {
    ("tiles", "rows"): "reads the previous layer's transposed output",
    ("rows", "tiles"): "output stays transposed for the next layer",
    ("tiles", "tiles"): "input and output stay transposed",
}


def _chainable(producer: KernelCall, consumer: KernelCall, rows: tuple[int, int]) -> bool:
    """Both kernels have the tile form, with the same tile, over the same rows."""
    if producer.relayout is None or consumer.relayout is None:
        return False
    return producer.info.get("m_tile") == consumer.info.get("m_tile") and rows[0] == rows[1]


def chain_tile_layouts(plan: Plan, func: relax.Function) -> Plan:
    """The plan with every (producer -> sole consumer) pair of tile-capable kernels relaid out
    (each kernel's ``info`` says its layouts)."""
    uses = use_counts(func)
    by_tail = {layer.tail_var: (layer, kernel) for layer, kernel in plan.values()}
    x_tiles: set[relax.Var] = set()
    y_tiles: set[relax.Var] = set()
    for tail, (layer, kernel) in plan.items():
        producer = by_tail.get(layer.x_var) if isinstance(layer.x_var, relax.Var) else None
        if producer is None or uses[layer.x_var] != 1:
            continue
        p_layer, p_kernel = producer
        if not _chainable(p_kernel, kernel, (p_layer.rows, layer.rows)):
            continue
        y_tiles.add(p_layer.tail_var)
        x_tiles.add(tail)
        log.info("%s -> %s: activations stay transposed (tile layout)", p_layer.name, layer.name)
    chained: Plan = {}
    for tail, (layer, kernel) in plan.items():
        if tail in x_tiles or tail in y_tiles:
            kernel = kernel.relayout(tail in x_tiles, tail in y_tiles)
        chained[tail] = (layer, kernel)
    return chained


@tvm.transform.module_pass(opt_level=0, name="tvm_sparse.ChainLayouts")
class ChainLayouts:
    """Relay out the chained kernels of ``plan`` and note each relayout in its layer's reason."""

    def __init__(self, plan: LayerPlan):
        self.plan = plan

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.plan.check(mod, "ChainLayouts")
        if self.plan.options.strict_nan:  # the NaN fix-up reads x and y as rows
            return mod
        self.plan.kernels = chain_tile_layouts(self.plan.kernels, mod["main"])
        report = read_report(mod)
        row_of = {layer.tail_var: row for layer, row in zip(self.plan.layers, report.layers)}
        for tail, (_layer, kernel) in self.plan.kernels.items():
            layout = (kernel.info.get("x_layout"), kernel.info.get("y_layout"))
            if "tiles" in layout:
                row_of[tail].reason += "; " + _LAYOUT_NOTES[layout]
        return attach_report(mod, report)
