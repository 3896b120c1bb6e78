"""What the four sparsify passes hand each other, and the options they share.

AnalyzeLayers -> ChooseKernels -> ChainLayouts -> RewriteLayers pass on Python objects that an
IRModule attribute cannot hold: the layers found (with their numpy weights and the Relax vars
they sit at) and the chosen kernels (``KernelCall``: a PrimFunc, numpy constants, a relayout
callable). ``pipeline.sparsify_passes`` builds one ``LayerPlan`` per compile and gives it to all
four. The report, plain data, travels on the module instead (``module_report``), so whoever
holds the module (the TVM plugin's caller too) can read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..errors import TvmSparseError
from ..ir.layers import LayerSpec
from ..schedules.kernel import KernelCall


@dataclass
class SparsifyOptions:
    """Knobs of the sparsify phase (``compile(**options)`` forwards them)."""

    sparse: bool = True  # False: dense kernels only (the dense baseline)
    # "auto": time dense + the best sparse candidates here; True: time all; False: estimates only
    measure: bool | str = "auto"
    # True: NaN / Inf activations give what dense math gives (a weight-sparse kernel skips
    # 0 * NaN): linear layers get ``nan_fixup``, other layers dense kernels
    strict_nan: bool = False
    # True: subnormal floats are flushed to zero while the kernels run (x86 FTZ/DAZ; a
    # subnormal costs ~100 cycles an instruction): ``flush_denormals`` says why
    flush_denormals: bool = True
    layer_names: list = field(default_factory=list)  # (name, op) from the frontend, for the report


@dataclass
class LayerPlan:
    """The layers of ``main`` and the kernel chosen for each (tail var -> (layer, kernel))."""

    options: SparsifyOptions = field(default_factory=SparsifyOptions)
    func: relax.Function | None = None  # the ``main`` analyzed: the plan's vars are its vars
    layers: list[LayerSpec] = field(default_factory=list)
    kernels: dict[relax.Var, tuple[LayerSpec, KernelCall]] = field(default_factory=dict)
    # tail vars whose weight-sparse kernel gets the strict-NaN fix-up after it
    nan_fixup: set = field(default_factory=set)

    def start(self, func: relax.Function, layers: list[LayerSpec]) -> None:
        """Begin the plan of ``func`` (AnalyzeLayers), forgetting any earlier one."""
        self.func, self.layers, self.kernels = func, layers, {}
        self.nan_fixup = set()

    def check(self, mod: tvm.IRModule, stage: str) -> None:
        """Fail loudly when ``mod`` is not the module the plan was made for: a pass that changed
        ``main`` in between would leave the plan pointing at vars that are gone."""
        if self.func is None or not mod["main"].same_as(self.func):
            raise TvmSparseError(
                f"{stage}: main is not the function AnalyzeLayers planned; run the sparsify "
                "passes together, as pipeline.sparsify_passes builds them"
            )
