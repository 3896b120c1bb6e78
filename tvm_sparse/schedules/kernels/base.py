"""The kernel family: what the per-layer choice, the tuner and the CUDA path ask of a kernel.

Modelled on TVM dlight's ``ScheduleRule``: one class per kernel family, a base class per target
kind, and a list of instances (``kernels/__init__.py``) in which the order is the order of the
candidates. A family answers four questions about a layer: does it apply, how long would it take
(an estimate, so listing candidates builds nothing), which knob settings are worth tuning, and
the kernel built with one of them. Families with parameters (BSR block shapes) are one instance
per parameter set, the parameters frozen dataclass fields, so nothing ever parses a name.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tvm

from ...ir.layers import CONV2D, LINEAR, LayerSpec
from ...target import is_cpu, is_cuda
from .._conv_dims import ConvAttrs
from ..cost_model import MachineModel
from ..kernel import KernelCall

# A weight-sparse kernel that stores this fraction of the dense weight skips (almost) no work, so
# it cannot beat the dense GEMM by design, and a per-layer timing that says otherwise is noise:
# such kernels are not offered at all.
DENSE_FILL_THRESHOLD = 0.9


def skips_work(stored: int, size: int) -> bool:
    """Whether a sparse kernel storing ``stored`` of ``size`` weights skips enough to compete."""
    return stored < DENSE_FILL_THRESHOLD * size


def index_bytes(extent: int) -> int:
    """Bytes of one stored column index into ``extent`` columns (the builders' index dtype)."""
    return 2 if extent < 2**15 else 4


@dataclass
class Candidate:
    """One family's offer for one layer: cheap to list (an estimate), built only when chosen or
    measured."""

    name: str
    estimate_s: float
    build: Callable[[], KernelCall]


class KernelFamily(ABC):
    """A family of kernels for one layer kind on one target kind.

    ``name`` is the candidate's name (in reports, tuning records and measure caches);
    ``skips_zeros`` is False only for the dense families, which are offered even when sparse
    kernels are turned off and always come first.
    """

    name: ClassVar[str]
    layer_kind: ClassVar[str] = LINEAR
    skips_zeros: ClassVar[bool] = True
    # built for a symbolic row count: the only families of a ``LayerSpec.dynamic_rows`` layer
    dynamic_rows: ClassVar[bool] = False

    @abstractmethod
    def targets(self, target: tvm.target.Target) -> bool:
        """Whether the family's kernels are for ``target``'s kind (one base class per kind)."""

    def fits(self, layer: LayerSpec) -> bool:
        """Whether the layer's weights and shapes suit the family (default: always)."""
        return True

    def applies(self, layer: LayerSpec, target: tvm.target.Target) -> bool:
        return (
            self.targets(target)
            and layer.kind == self.layer_kind
            and layer.dynamic_rows == self.dynamic_rows
            and self.fits(layer)
        )

    @abstractmethod
    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        """Seconds per call, from the cost model (no kernel is built)."""

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        """The knob settings worth tuning, ``{}`` (the builder's defaults) first."""
        return [{}]

    @abstractmethod
    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        """The kernel of ``layer`` on its real weights; ``knobs`` as JSON (tuning records)."""

    def candidate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                  ) -> Candidate:  # fmt: skip
        return Candidate(
            self.name, self.estimate(layer, target, machine), lambda: self.build(layer, target)
        )


class CpuKernel(KernelFamily):
    """A family of x86 (llvm target) kernels."""

    def targets(self, target: tvm.target.Target) -> bool:
        return is_cpu(target)


class CudaKernel(KernelFamily):
    """A family of CUDA kernels; estimated on the GPU model (``gpu_cost_model``), not the CPU's."""

    def targets(self, target: tvm.target.Target) -> bool:
        return is_cuda(target)


def build_linear(
    builder: Callable[..., KernelCall],
    layer: LayerSpec,
    target: tvm.target.Target,
    knobs: dict,
    *layout,
) -> KernelCall:
    """Call a linear builder of any target: they all take ``(m, weight, *layout, bias,
    activation, target, **knobs)``, ``layout`` being what the format needs (a BSR block)."""
    return builder(layer.rows, layer.weight, *layout, layer.bias, layer.activation, target, **knobs)


def conv_io_bytes(layer: LayerSpec) -> int:
    """Bytes of the input and output activations a convolution streams."""
    return 4 * (int(np.prod(layer.x_shape)) + int(np.prod(layer.out_shape)))


# A grouped conv's block-diagonal weight (``block_diagonal``) may hold at most this many floats:
# it is a compile-time array (the sparse kernels store only its non-zeros), 16 MiB at most.
MAX_BLOCK_DIAGONAL = 1 << 22


def block_diagonal(layer: LayerSpec) -> LayerSpec:
    """A grouped conv (groups > 1, more than one input channel a group) as the groups=1 conv
    with the same output: the OIHW weight widened to all input channels, zero outside its
    group's. A kernel that skips zeros computes the same MACs on this view as on the groups,
    so the groups=1 sparse conv kernels take grouped convs through it. Any other layer (a
    depthwise conv, a view too large) comes back unchanged."""
    groups = layer.conv_attrs.get("groups", 1) if layer.kind == CONV2D else 1
    co, ci_g, kh, kw = layer.weight.shape if layer.kind == CONV2D else (0, 0, 0, 0)
    if groups == 1 or ci_g == 1 or co * ci_g * groups * kh * kw > MAX_BLOCK_DIAGONAL:
        return layer
    cached = _VIEWS.get(id(layer))
    if cached is not None and cached[0] is layer:
        return cached[1]
    co_g = co // groups
    wide = np.zeros((groups, co_g, groups, ci_g, kh, kw), dtype=layer.weight.dtype)
    grouped = layer.weight.reshape(groups, co_g, ci_g, kh, kw)
    for g in range(groups):
        wide[g, :, g] = grouped[g]
    view = dataclasses.replace(
        layer,
        weight=wide.reshape(co, groups * ci_g, kh, kw),
        conv_attrs={**layer.conv_attrs, "groups": 1},
    )
    _VIEWS.clear()  # one layer's view at a time: the families ask about one layer in turn
    _VIEWS[id(layer)] = (layer, view)
    return view


_VIEWS: dict[int, tuple[LayerSpec, LayerSpec]] = {}


def _on_block_diagonal(method):
    @functools.wraps(method)
    def wrapped(self, layer, *args, **kwargs):
        return method(self, block_diagonal(layer), *args, **kwargs)

    return wrapped


class TakesGroupedConvs:
    """Mixin of a groups=1 conv family whose kernels skip zeros: every ``fits``, ``estimate``,
    ``knob_space`` and ``build`` it or a subclass defines sees a grouped conv as its
    ``block_diagonal`` view (and a groups=1 conv as itself)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("fits", "estimate", "knob_space", "build"):
            if name in cls.__dict__:
                setattr(cls, name, _on_block_diagonal(cls.__dict__[name]))


def build_conv(
    builder: Callable[..., KernelCall], layer: LayerSpec, target: tvm.target.Target, knobs: dict
) -> KernelCall:
    """Call a conv2d builder: they all take ``(x_shape, weight, bias, conv, activation, target,
    **knobs)``, ``conv`` the layer's geometry as a ``ConvAttrs``."""
    return builder(
        layer.x_shape,
        layer.weight,
        layer.bias,
        conv=ConvAttrs.of(layer.conv_attrs),
        activation=layer.activation,
        target=target,
        **knobs,
    )


__all__ = [
    "block_diagonal",
    "TakesGroupedConvs",
    "DENSE_FILL_THRESHOLD",
    "build_conv",
    "build_linear",
    "Candidate",
    "conv_io_bytes",
    "CpuKernel",
    "CudaKernel",
    "KernelFamily",
    "index_bytes",
    "skips_work",
]
