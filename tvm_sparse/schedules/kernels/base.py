"""The kernel family: what the per-layer choice, the tuner and the CUDA path ask of a kernel.

Modelled on TVM dlight's ``ScheduleRule``: one class per kernel family, a base class per target
kind, and a list of instances (``kernels/__init__.py``) in which the order is the order of the
candidates. A family answers four questions about a layer: does it apply, how long would it take
(an estimate, so listing candidates builds nothing), which knob settings are worth tuning, and
the kernel built with one of them. Families with parameters (BSR block shapes) are one instance
per parameter set, the parameters frozen dataclass fields, so nothing ever parses a name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tvm

from ...ir.layers import LINEAR, LayerSpec
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
