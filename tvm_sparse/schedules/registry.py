"""Which kernels can implement a layer on a target, read from the one list of kernel families.

The per-layer choice (``choice``), the tuner's search spaces (``tuning.space``) and its lookup
all ask here, so a family registered in ``kernels/__init__.py`` is chosen, tuned and looked up
without any other edit. Dense is always a candidate and always first, so the choice can never
be forced onto a slower sparse kernel.
"""

from __future__ import annotations

import tvm

from ..ir.layers import LayerSpec
from .cost_model import DEFAULT_MACHINE, MachineModel
from .kernels import FAMILIES, Candidate, KernelFamily


def families_for(
    layer: LayerSpec, target: tvm.target.Target, sparse: bool = True
) -> list[KernelFamily]:
    """The families that apply to ``layer`` on ``target`` (only dense ones when not ``sparse``)."""
    return [f for f in FAMILIES if (sparse or not f.skips_zeros) and f.applies(layer, target)]


def candidates_for(
    layer: LayerSpec,
    target: tvm.target.Target,
    sparse: bool = True,
    machine: MachineModel = DEFAULT_MACHINE,
) -> list[Candidate]:
    """All kernels that can implement ``layer`` on ``target`` with their estimates (dense
    first); empty for a target no family covers."""
    return [f.candidate(layer, target, machine) for f in families_for(layer, target, sparse)]


def find_family(name: str, layer: LayerSpec, target: tvm.target.Target) -> KernelFamily | None:
    """The family called ``name`` for the layer's kind on ``target``, whether or not it suits
    this layer's weights (tuning records name a candidate; they are built as asked)."""
    for family in FAMILIES:
        if family.name == name and family.layer_kind == layer.kind and family.targets(target):
            return family
    return None
