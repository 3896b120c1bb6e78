"""The FPGA backend's driver: an HLS C++ project for sparse-sparse networks, checked by csim.

``compile_fpga(model, "fpga")`` imports and canonicalizes the model, builds the hardware model
(``from_relax``), calibrates it on the testbench inputs (``calibration``), folds it
(``folding.auto_fold`` unless the target fixes the parallelism), and returns an
``FpgaProject``: ``.write(dir)`` emits the project (``writer``), ``.csim()`` builds it with g++
and compares with the CPU module (``csim``), ``.estimate()`` and ``.estimates_all_variants()``
give the analytical estimates (``estimator``).

The testbench data are random normal inputs (``tb_samples`` of them, fixed seed) and the outputs
of ``tvm_sparse.compile(model, "llvm")`` on them: the golden reference is the CPU module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...compile_tvm import compile_tvm
from ...errors import TvmSparseError
from ...frontend import import_model, require_static
from ...passes.canonicalize import canonicalize
from .calibration import calibrate
from .csim import CsimResult, finite_scale, run_csim
from .cycle_check import StageCycles, cycle_agreement
from .estimator import Estimate, comparison_table, estimate
from .folding import auto_fold
from .from_relax import build_hw_model
from .hw_model import VARIANTS, HwModel
from .target import FpgaTarget, parse_fpga_target
from .writer import write_project

# Numenta, "Sparsity enables 100x performance acceleration in deep learning networks" (2021):
# GSC sparse CNN on a Xilinx Alveo U250; (samples/s per device, copies per device).
NUMENTA_U250 = {
    "dense": (12_000.0, 4),
    "sparse-dense": (689_000.0, 24),
    "sparse-sparse": (1_300_000.0, 20),
}


@dataclass
class VariantComparison:
    """Estimates of the dense, sparse-dense and sparse-sparse builds of one network."""

    estimates: list[Estimate]
    reference: dict[str, tuple[float, int]] | None = None

    def by_variant(self, variant: str) -> Estimate:
        return next(e for e in self.estimates if e.variant == variant)

    def table(self) -> str:
        return comparison_table(self.estimates, self.reference)

    def to_dict(self) -> dict:
        return {
            "variants": {e.variant: e.to_dict() for e in self.estimates},
            "reference": self.reference,
        }


@dataclass
class FpgaProject:
    """A compiled network for the fpga target: its hardware model and testbench data."""

    hw: HwModel
    mod: Any  # the canonical Relax module (for the other variants)
    weighted_names: list[tuple[str, str]]
    tb_inputs: np.ndarray  # [samples, *input_shape]
    tb_golden: np.ndarray  # [samples, outputs] from the CPU module
    output_dir: Path | None = None
    calibration_inputs: np.ndarray | None = None  # None: calibrated on tb_inputs
    _estimate: Estimate | None = field(default=None, repr=False)
    _csim: CsimResult | None = field(default=None, repr=False)

    @property
    def target(self) -> FpgaTarget:
        return self.hw.target

    # -- files ------------------------------------------------------------------------------
    def write(self, out_dir: str | os.PathLike | None = None) -> Path:
        """Write the HLS project (and estimate.json) into ``out_dir``."""
        if out_dir is None and self.output_dir is None:
            raise TvmSparseError("FpgaProject.write needs a directory")
        out = Path(out_dir) if out_dir is not None else self.output_dir
        est = self.estimate()
        scale = finite_scale(self.tb_golden)
        write_project(
            self.hw,
            out,
            self.tb_inputs,
            self.tb_golden,
            copies=max(1, est.copies),
            atol=1e-5 * scale,
        )
        (out / "estimate.json").write_text(est.to_json())
        self.output_dir = out
        return out

    # -- checks -----------------------------------------------------------------------------
    @property
    def csim_result(self) -> CsimResult | None:
        """The last C simulation's result (None before one ran)."""
        return self._csim

    def csim(
        self, *, rtol: float = 1e-5, opt: str = "-O1", check: bool | None = None
    ) -> CsimResult:
        """Build with g++, run the testbench, compare with the CPU module's outputs.

        In float a mismatch beyond ``rtol`` (and ``atol = rtol * max |output|``) raises
        ``TvmSparseError``; with ``ap_fixed`` / int8 the error is measured and reported instead.
        """
        if self.output_dir is None:
            raise TvmSparseError("write the project before running csim (FpgaProject.write)")
        if check is None:
            check = self.hw.precision.is_float
        self._csim = run_csim(self.output_dir, self.target.top, rtol=rtol, check=check, opt=opt)
        return self._csim

    def cycle_agreement(self) -> list[StageCycles]:
        """The estimate's cycles per stage beside those the last C simulation counted."""
        if self._csim is None:
            raise TvmSparseError("run the C simulation first (FpgaProject.csim)")
        return cycle_agreement(self.estimate(), self._csim.stage_cycles)

    # -- estimates --------------------------------------------------------------------------
    def estimate(self) -> Estimate:
        if self._estimate is None:
            self._estimate = estimate(self.hw)
        return self._estimate

    def estimates_all_variants(
        self, reference: dict[str, tuple[float, int]] | None = None
    ) -> VariantComparison:
        """Dense, sparse-dense and sparse-sparse builds of the same network, each auto-folded
        (unless the target fixes the parallelism) at this project's target and precision."""
        ests = []
        for variant in VARIANTS:
            if variant == self.hw.variant:
                ests.append(self.estimate())
                continue
            hw = _prepare(self.mod, self.target, variant, self.weighted_names, self.hw.name)
            calib = self.tb_inputs if self.calibration_inputs is None else self.calibration_inputs
            calibrate(hw, calib)
            ests.append(_fold(hw))
        return VariantComparison(ests, reference)


def _prepare(mod, target: FpgaTarget, variant: str, names, name: str) -> HwModel:
    hw = build_hw_model(mod, target, variant, names, name=name)
    for layer in hw.layers:
        if layer.op in ("clone", "add"):  # as wide as their streams' pack, no lanes of their own
            layer.lanes_fixed = True
            continue
        lanes = target.lanes_for(layer.name, layer.source)
        if lanes is not None:
            layer.lanes, layer.lanes_fixed = lanes, True
    return hw


def _fold(hw: HwModel) -> Estimate:
    if all(layer.lanes_fixed for layer in hw.layers):
        return estimate(hw)
    return auto_fold(hw)


def _model_name(source: str) -> str:
    base = os.path.basename(source) if source and not source.startswith("<") else "model"
    return os.path.splitext(base)[0] or "model"


def golden_outputs(model: Any, inputs: np.ndarray, input_shapes=None) -> np.ndarray:
    """Outputs of the CPU module (``tvm_sparse.compile(model, "llvm")``), one batch at a time."""
    cpu = compile_tvm(model, "llvm", input_shapes=input_shapes)
    batch = cpu.inputs[0].shape[0]
    outs = []
    for start in range(0, inputs.shape[0], batch):
        chunk = inputs[start : start + batch]
        if chunk.shape[0] < batch:  # pad the last batch
            pad = np.zeros((batch - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        y = np.asarray(cpu.run(chunk.astype(np.float32)))
        outs.append(y.reshape(batch, -1))
    return np.concatenate(outs)[: inputs.shape[0]].astype(np.float32)


def compile_fpga(
    model: Any,
    target: str | dict = "fpga",
    *,
    input_shapes: str | dict | None = None,
    output_dir: str | os.PathLike | None = None,
    variant: str = "sparse-sparse",
    run_csim: bool = True,
    tb_samples: int = 4,
    seed: int = 0,
    tb_data: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_data: np.ndarray | None = None,
) -> FpgaProject:
    """Compile ``model`` (ONNX path / ModelProto / Relax IRModule) for the fpga target.

    With ``output_dir`` the project is written there and, with ``run_csim``, C-simulated against
    the CPU module (a float mismatch raises ``TvmSparseError``; the result is in
    ``project.csim_result``). Without ``output_dir`` nothing is written: call ``.write(dir)``.

    ``calibration_data`` (inputs, [S, *input shape]) sets int8's activation ranges and the
    estimate's densities; without it the testbench inputs do. Give samples like the ones the
    design will see, other than the testbench's, to measure int8 on data it was not fitted to.
    """
    tgt = parse_fpga_target(target)
    if variant not in VARIANTS:
        raise TvmSparseError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    imported = import_model(model, input_shapes)
    require_static(imported.inputs, imported.source, "an FPGA design has fixed buffer sizes")
    mod = canonicalize(imported.mod)
    name = _model_name(imported.source)
    hw = _prepare(mod, tgt, variant, imported.weighted_nodes, name)
    if tb_data is None:
        rng = np.random.default_rng(seed)
        inputs = rng.standard_normal((tb_samples, *hw.input_shape)).astype(np.float32)
        golden = golden_outputs(model, inputs, input_shapes)
    else:
        inputs = np.asarray(tb_data[0], np.float32).reshape(-1, *hw.input_shape)
        golden = np.asarray(tb_data[1], np.float32).reshape(inputs.shape[0], -1)
    calib = None
    if calibration_data is not None:
        calib = np.asarray(calibration_data, np.float32).reshape(-1, *hw.input_shape)
    calibrate(hw, inputs if calib is None else calib)
    project = FpgaProject(hw, mod, list(imported.weighted_nodes), inputs, golden)
    project.calibration_inputs = calib
    project._estimate = _fold(hw)
    if output_dir is not None:
        project.write(output_dir)
        if run_csim:
            project.csim()
    return project
