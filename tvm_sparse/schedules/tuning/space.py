"""A tuning task's search space and its kernel, both read from the kernel family registry.

The sparse kernels' schedules live in their builders' keyword knobs; each kernel family
(``schedules/kernels``) lists the settings worth trying (``knob_space``) and builds its kernel
with one of them **on the layer's real weights** (the real index and value arrays, so a
measurement sees the real sparsity structure). A task names its candidate, and the family is
found by that name for the layer's kind and target.
"""

from __future__ import annotations

import tvm

from ...ir.layers import LayerSpec
from ..kernel import KernelCall
from ..kernels import KernelFamily
from ..registry import find_family


def _family(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> KernelFamily:
    family = find_family(candidate, layer, target)
    if family is None:
        raise ValueError(
            f"no kernel family {candidate!r} for a {layer.kind} layer on {target.kind.name}"
        )
    return family


def knob_space(candidate: str, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
    """All knob settings of one candidate kernel; ``{}`` (the builder's defaults) comes first,
    no setting twice."""
    return _family(candidate, layer, target).knob_space(layer, target)


def build_candidate(
    candidate: str, layer: LayerSpec, target: tvm.target.Target, knobs: dict | None = None
) -> KernelCall:
    """Build one candidate kernel of ``layer`` with ``knobs`` (None / {}: the hand schedule)."""
    return _family(candidate, layer, target).build(layer, target, **(knobs or {}))
