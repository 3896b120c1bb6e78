"""C simulation of a generated project with g++: build, run, compare with the CPU module.

No vendor tool is needed: ``firmware/hls_compat`` stands in for ``hls_stream.h`` / ``ap_fixed.h``
and is searched last (``-idirafter``), so real headers win when they are found: ``$AP_TYPES`` or
``$TVM_SPARSE_AP_TYPES`` (the open-source github.com/Xilinx/HLS_arbitrary_Precision_Types),
``$XILINX_HLS/include``, or the ap_types copy inside an installed ``hls4ml`` package (the
``fpga`` extra: ``pip install "tvm-sparse[fpga]"``). The stand-in only approximates ap_fixed's
rounding and saturation, so a build that falls back to it says so once (a warning).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import TvmSparseError

# NNET_COUNT_CYCLES: the engines count the cycles of their pipelined loops (csim_cycles.log)
DEFAULT_FLAGS = ("-std=c++14", "-ffp-contract=off", "-DNNET_COUNT_CYCLES")
_log = logging.getLogger(__name__)
_warned_compat = False
COMPAT_WARNING = (
    "C simulation uses the 124-line ap_fixed.h stand-in (firmware/hls_compat): no real ap_types "
    "headers were found. Fixed-point results may differ from Vitis HLS. Install them with "
    '`pip install "tvm-sparse[fpga]"` (hls4ml ships the Apache-2.0 Xilinx ap_types) or point '
    "$AP_TYPES at a checkout of github.com/Xilinx/HLS_arbitrary_Precision_Types."
)


def _warn_compat_once() -> None:
    """Log the fallback to the stand-in headers once per process (every build would repeat it)."""
    global _warned_compat
    if not _warned_compat:
        _warned_compat = True
        _log.warning(COMPAT_WARNING)


@dataclass
class CsimResult:
    """Outcome of one C simulation against the golden outputs."""

    output: np.ndarray  # [samples, outputs] from csim
    golden: np.ndarray
    max_abs_error: float
    max_rel_error: float  # max |csim - golden| / max |golden|
    mismatches: int  # values beyond atol + rtol * |golden|
    top1_agreement: float  # fraction of samples whose argmax agrees
    rtol: float
    atol: float
    headers: str  # "compat" or the real headers' directory
    build_seconds: float
    run_seconds: float
    log: str
    sqnr_db: float = math.inf  # 10 log10(sum golden^2 / sum (csim - golden)^2), finite pairs
    # cycles per sample of every stage (0: AXI input, i: layer i, last: AXI output), counted by
    # the engines' NNET_COUNT_CYCLES mode; None when the log is absent
    stage_cycles: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def summary(self) -> str:
        return (
            f"csim ({self.headers} headers): {self.output.shape[0]} samples, "
            f"max |csim - cpu| = {self.max_abs_error:.3g} (relative to max |cpu|: "
            f"{self.max_rel_error:.3g}), {self.mismatches} values beyond "
            f"rtol={self.rtol:g}/atol={self.atol:.3g}, top-1 agreement "
            f"{self.top1_agreement:.1%}, SQNR {self.sqnr_db:.1f} dB"
        )

    def to_dict(self) -> dict:
        return {
            "samples": int(self.output.shape[0]),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "mismatches": self.mismatches,
            "top1_agreement": self.top1_agreement,
            "sqnr_db": self.sqnr_db,
            "rtol": self.rtol,
            "atol": self.atol,
            "headers": self.headers,
        }


def vendor_header_dir() -> str | None:
    """Directory of real ap_fixed.h / hls_stream.h headers, or None (use the compat ones)."""
    for env in ("AP_TYPES", "TVM_SPARSE_AP_TYPES"):
        path = os.environ.get(env)
        if path and (Path(path) / "ap_fixed.h").is_file():
            return path
    xilinx = os.environ.get("XILINX_HLS")
    if xilinx and (Path(xilinx) / "include" / "ap_fixed.h").is_file():
        return str(Path(xilinx) / "include")
    spec = importlib.util.find_spec("hls4ml")
    if spec and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            path = Path(root) / "templates" / "vivado" / "ap_types"
            if (path / "ap_fixed.h").is_file():
                return str(path)
    return None


def finite_scale(values: np.ndarray) -> float:
    """max |value| over the finite values (1.0 when there are none): what tolerances scale by."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def compare(
    output: np.ndarray, golden: np.ndarray, rtol: float, atol: float
) -> tuple[float, float, int, float]:
    """(max abs error, max error relative to max |golden|, mismatches, top-1 agreement).

    NaN matches NaN and an infinity the same infinity, and nothing else; errors and the scale
    are taken over the pairs where both values are finite.
    """
    if output.shape != golden.shape:
        raise TvmSparseError(f"csim produced {output.shape} values, golden has {golden.shape}")
    out64, gold64 = output.astype(np.float64), golden.astype(np.float64)
    finite = np.isfinite(out64) & np.isfinite(gold64)
    special = (np.isnan(out64) & np.isnan(gold64)) | (~finite & (out64 == gold64))
    with np.errstate(invalid="ignore"):  # inf - inf in the pairs the mask drops
        diff = np.where(finite, np.abs(out64 - gold64), 0.0)
    within = finite & (diff <= atol + rtol * np.abs(np.where(finite, gold64, 0.0)))
    bad = int(np.count_nonzero(~(within | special)))
    top1 = float(np.mean(np.argmax(output, axis=1) == np.argmax(golden, axis=1)))
    max_abs = float(diff.max(initial=0.0))
    return max_abs, max_abs / finite_scale(golden), bad, top1


def sqnr_db(output: np.ndarray, golden: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``golden`` in dB, over the pairs
    where both are finite: 10 log10(sum golden^2 / sum (output - golden)^2); inf when equal."""
    out64, gold64 = output.astype(np.float64), golden.astype(np.float64)
    finite = np.isfinite(out64) & np.isfinite(gold64)
    signal = float(np.sum(gold64[finite] ** 2))
    noise = float(np.sum((out64[finite] - gold64[finite]) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def read_dat(path: Path) -> np.ndarray:
    rows = [list(map(float, line.split())) for line in path.read_text().splitlines() if line]
    return np.asarray(rows, np.float32)


def read_cycles(path: Path, samples: int) -> np.ndarray | None:
    """Cycles per sample of each stage from the testbench's ``csim_cycles.log``."""
    if not path.is_file() or samples <= 0:
        return None
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    cycles = np.zeros(len(rows))
    for stage, total, _loops in rows:
        cycles[int(stage)] = int(total) / samples
    return cycles


def build(
    project_dir: str | os.PathLike,
    top: str,
    *,
    opt: str = "-O1",
    vendor_headers: bool | None = None,
    compiler: str | None = None,
) -> tuple[Path, str, float]:
    """Compile firmware + testbench with g++; (executable, headers used, seconds)."""
    cxx = compiler or os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise TvmSparseError("C simulation needs g++ (or $CXX); none found")
    root = Path(project_dir)
    exe = root / "csim.exe"
    real = vendor_header_dir() if vendor_headers in (None, True) else None
    if vendor_headers is True and real is None:
        raise TvmSparseError("vendor_headers=True but no ap_types / Vitis HLS headers were found")
    if real is None and vendor_headers is None:  # vendor_headers=False asks for the stand-in
        _warn_compat_once()
    cmd = [cxx, *DEFAULT_FLAGS, opt]
    if real:
        cmd += ["-I", real]
    cmd += ["-Ifirmware", "-idirafter", "firmware/hls_compat"]
    cmd += [f"firmware/{top}.cpp", f"{top}_test.cpp", "-o", str(exe.name)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        err = "\n".join(proc.stderr.strip().splitlines()[:30])
        raise TvmSparseError(f"g++ failed to build the C simulation in {root}:\n{err}")
    return exe, real or "compat", seconds


def run_csim(
    project_dir: str | os.PathLike,
    top: str,
    *,
    rtol: float = 1e-5,
    atol: float | None = None,
    check: bool = True,
    opt: str = "-O1",
    vendor_headers: bool | None = None,
) -> CsimResult:
    """Build and run the testbench; compare ``tb_data/csim_results.log`` with the golden file.

    ``atol`` defaults to ``rtol * max |golden|`` over the finite values (errors measured at the
    scale of the outputs).
    With ``check`` a mismatch raises ``TvmSparseError``.
    """
    root = Path(project_dir)
    exe, headers, build_s = build(root, top, opt=opt, vendor_headers=vendor_headers)
    start = time.perf_counter()
    proc = subprocess.run([f"./{exe.name}", "tb_data"], cwd=root, capture_output=True, text=True)
    run_s = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise TvmSparseError(
            f"C simulation crashed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    output = read_dat(root / "tb_data" / "csim_results.log")
    golden = read_dat(root / "tb_data" / "tb_output_predictions.dat")
    if atol is None:
        atol = rtol * finite_scale(golden)
    max_abs, max_rel, bad, top1 = compare(output, golden, rtol, atol)
    result = CsimResult(
        output,
        golden,
        max_abs,
        max_rel,
        bad,
        top1,
        rtol,
        atol,
        headers,
        build_s,
        run_s,
        proc.stdout + proc.stderr,
        sqnr_db(output, golden),
    )
    result.stage_cycles = read_cycles(root / "tb_data" / "csim_cycles.log", output.shape[0])
    if check and not result.ok:
        raise TvmSparseError(f"C simulation does not match the CPU module: {result.summary()}")
    return result
