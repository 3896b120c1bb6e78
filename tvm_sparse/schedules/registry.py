"""Which kernels can implement a layer on a target, read from the one list of kernel families.

The per-layer choice (``choice``), the tuner's search spaces (``tuning.space``) and its lookup
all ask here, so a family registered in ``kernels/__init__.py`` is chosen, tuned and looked up
without any other edit. Dense is always a candidate and always first, so the choice can never
be forced onto a slower sparse kernel. A zero-skipping kernel is not offered where it has almost
nothing to skip (``worth_skipping``): building and timing it would only cost compile time.
"""

from __future__ import annotations

import numpy as np
import tvm

from ..ir.layers import LayerSpec
from .cost_model import DEFAULT_MACHINE, MachineModel
from .kernels import FAMILIES, Candidate, KernelFamily
from .kernels.base import skips_work

# On dense weights a zero-skipping kernel can skip only input zeros, and it pays a scatter for
# every non-zero input: it is offered only where at most this fraction of the inputs is non-zero
# (k-WTA). ReLU's assumed half is not enough: sparse-sparse over a dense 2048^2 weight and a
# 50%-dense input measured 2.5x slower than dense, and 5-20x slower on ResNet-50's conv shapes
# (64x64x3x3 at 56x56: 49.6 ms against 2.5 ms, Zen 4, 2 threads).
DENSE_WEIGHTS_MAX_INPUT_DENSITY = 0.25


def worth_skipping(layer: LayerSpec) -> bool:
    """Whether a zero-skipping kernel has enough zeros to skip on ``layer``: weights sparse
    enough to skip work (``skips_work``), or an input known to be mostly zeros."""
    weight = layer.weight
    if skips_work(int(np.count_nonzero(weight)), weight.size):
        return True
    density = layer.input_density
    return density is not None and density <= DENSE_WEIGHTS_MAX_INPUT_DENSITY


def families_for(
    layer: LayerSpec, target: tvm.target.Target, sparse: bool = True
) -> list[KernelFamily]:
    """The families that apply to ``layer`` on ``target`` (only dense ones when not ``sparse``,
    nor where there are too few zeros to skip)."""
    sparse = sparse and worth_skipping(layer)
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
        if (
            family.name == name
            and family.layer_kind == layer.kind
            and family.dynamic_rows == layer.dynamic_rows
            and family.targets(target)
        ):
            return family
    return None
