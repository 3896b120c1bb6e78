"""The FPGA backend: a Vitis HLS C++ project for sparse-sparse networks, checked by C simulation.

``compile_fpga(model, "fpga")`` (in ``backend``) imports and canonicalizes the model, builds the
hardware model (``hw_model``, from Relax by ``from_relax``), folds it (``folding``, which counts
with ``estimator``), and returns an ``FpgaProject`` that writes the project (``writer``, one
config template per engine of ``engines``) and C-simulates it against the CPU module (``csim``).
"""

from .backend import (
    NUMENTA_U250,
    FpgaProject,
    VariantComparison,
    compile_fpga,
    golden_outputs,
)
from .csim import CsimResult
from .estimator import Estimate
from .target import FpgaTarget, is_fpga_target, parse_fpga_target

__all__ = [
    "NUMENTA_U250",
    "CsimResult",
    "Estimate",
    "FpgaProject",
    "FpgaTarget",
    "VariantComparison",
    "compile_fpga",
    "golden_outputs",
    "is_fpga_target",
    "parse_fpga_target",
]
