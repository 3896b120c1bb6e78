"""The "fpga" target: which part, which clock, which number format, how much parallelism.

Accepted forms (what ``compile_fpga`` and the CLI take)::

    "fpga"                                   U250 at 300 MHz, float, parallelism chosen by the
                                             estimator (the folding with the most samples/s)
    "fpga:u280"                              a part alias after the colon
    '{"kind": "fpga", "part": "xcu250-figd2104-2L-e", "clock_mhz": 250}'   (JSON string)
    {"kind": "fpga", "part": "u55c", "precision": "int8", "parallelism": {"cnn2": 512}}

``precision``: ``"float"`` (default, bit-exact against the CPU module up to summation order),
``"ap_fixed<W,I>"`` (one format for weights and activations, like hls4ml's default
``ap_fixed<16,6>``) or ``"int8"`` (int8 weights with a scale per output channel, activations
``ap_fixed<8,I>`` with I calibrated per tensor: see ``number_formats``).
``parallelism``: an int (MAC lanes for every layer) or ``{layer name: lanes}``; layers left out
are folded automatically.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ...errors import TargetError
from ...target import FPGA_KIND

DEFAULT_CLOCK_MHZ = 300.0


@dataclass(frozen=True)
class Part:
    """Resources of one FPGA part (whole device; the estimator keeps headroom for the shell)."""

    name: str
    board: str
    platform: str  # the Vitis platform v++ links against
    lut: int
    ff: int
    dsp: int
    bram36: int
    uram: int
    ddr_gbps: float  # off-chip bandwidth the kernels share (GB/s)
    slrs: int = 1  # super logic regions: a kernel copy is placed inside one
    # fraction of each SLR's resources the platform's static shell takes (PCIe, XDMA, management,
    # the memory controllers it instantiates), from the floorplans of AMD UG1120
    shell: tuple[float, ...] = (0.0,)

    def per_slr(self) -> list[dict[str, float]]:
        """Resources of each SLR left to the kernels (device / slrs, less the shell's share)."""
        whole = {"dsp": self.dsp, "lut": self.lut, "ff": self.ff}
        whole |= {"bram36": self.bram36, "uram": self.uram}
        return [{k: v / self.slrs * (1 - cut) for k, v in whole.items()} for cut in self.shell]


# Numbers from the AMD Alveo data sheets (DS962). The U280 and the U55C have the same fabric and
# HBM2 bandwidth, so they share one set of resources. Shell shares: the U250's static region
# (PCIe, XDMA, card management) sits in SLR1, a DDR4 controller in each SLR. The shares follow
# the per-SLR availability Vitis reports for an XDMA platform of the same family (UG1393,
# "Resource Availability": the static SLR keeps ~45% of its LUTs and BRAMs, the others ~90%);
# the HBM parts are taken to keep their shell in SLR0 likewise. Estimates, not platforminfo.
_U250_RESOURCES = dict(
    lut=1_728_000,
    ff=3_456_000,
    dsp=12_288,
    bram36=2_688,
    uram=1_280,
    ddr_gbps=77.0,  # 4x DDR4-2400
    slrs=4,
    shell=(0.10, 0.55, 0.10, 0.10),
)
_HBM_RESOURCES = dict(
    lut=1_304_000,
    ff=2_607_000,
    dsp=9_024,
    bram36=2_016,
    uram=960,
    ddr_gbps=460.0,  # HBM2
    slrs=3,
    shell=(0.55, 0.10, 0.10),
)
PARTS: dict[str, Part] = {
    part.name: part
    for part in (
        Part(
            "xcu250-figd2104-2L-e",
            "u250",
            "xilinx_u250_gen3x16_xdma_4_1_202210_1",
            **_U250_RESOURCES,
        ),
        Part(
            "xcu280-fsvh2892-2L-e",
            "u280",
            "xilinx_u280_gen3x16_xdma_1_202211_1",
            **_HBM_RESOURCES,
        ),
        Part(
            "xcu55c-fsvh2892-2L-e",
            "u55c",
            "xilinx_u55c_gen3x16_xdma_3_202210_1",
            **_HBM_RESOURCES,
        ),
    )
}
_ALIASES = {p.board: p.name for p in PARTS.values()} | {
    f"alveo-{p.board}": p.name for p in PARTS.values()
}


@dataclass(frozen=True)
class Precision:
    """The number format of the generated code.

    ``kind`` is "float", "fixed" (one ``ap_fixed<width, integer>`` everywhere) or "int8"
    (integer weights scaled per output channel, ``ap_fixed<8, I>`` activations with I per tensor).
    """

    kind: str = "float"
    width: int = 32
    integer: int = 0

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def bits(self) -> int:
        """Bits of a weight or activation word."""
        return 32 if self.is_float else self.width

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"ap_fixed<{self.width},{self.integer}>"
        return self.kind


def parse_precision(spec: str | Precision | None) -> Precision:
    if spec is None:
        return Precision()
    if isinstance(spec, Precision):
        return spec
    text = str(spec).replace(" ", "").lower()
    if text in ("float", "float32", "fp32"):
        return Precision()
    if text in ("int8", "ap_fixed<8>"):
        return Precision("int8", 8, 0)
    m = re.fullmatch(r"ap_fixed<(\d+),(-?\d+)>", text)
    if m:
        width, integer = int(m.group(1)), int(m.group(2))
        if not 2 <= width <= 24 or not 1 <= integer <= width:
            raise TargetError(f"precision {spec!r}: need 2 <= W <= 24 and 1 <= I <= W")
        return Precision("fixed", width, integer)
    raise TargetError(f"unknown precision {spec!r}: use 'float', 'int8' or 'ap_fixed<W,I>'")


@dataclass(frozen=True)
class FpgaTarget:
    """A parsed fpga target."""

    part: Part
    clock_mhz: float = DEFAULT_CLOCK_MHZ
    precision: Precision = field(default_factory=Precision)
    parallelism: int | dict[str, int] | None = None  # None: chosen by the estimator
    top: str = "myproject"  # the kernel's name (hls4ml's default project name)

    def lanes_for(self, layer_name: str, source_name: str = "") -> int | None:
        """The user's parallelism for a layer (by sanitized or model name), else None."""
        if isinstance(self.parallelism, int):
            return self.parallelism
        if isinstance(self.parallelism, dict):
            for key in (layer_name, source_name):
                if key in self.parallelism:
                    return int(self.parallelism[key])
        return None

    def to_dict(self) -> dict:
        return {
            "kind": FPGA_KIND,
            "part": self.part.name,
            "board": self.part.board,
            "clock_mhz": self.clock_mhz,
            "precision": str(self.precision),
            "parallelism": self.parallelism,
        }


_KEYS = {"kind", "part", "clock_mhz", "precision", "parallelism", "top"}


def find_part(name: str) -> Part:
    key = name.strip().lower()
    full = _ALIASES.get(key, key)
    for part in PARTS.values():
        if part.name.lower() == full.lower():
            return part
    known = ", ".join(sorted(_ALIASES) + sorted(PARTS))
    raise TargetError(f"unknown FPGA part {name!r}; known: {known}")


def parse_fpga_target(target: Any = "fpga") -> FpgaTarget:
    """Parse "fpga", "fpga:<part>", a JSON string or a dict into an ``FpgaTarget``."""
    if isinstance(target, FpgaTarget):
        return target
    if isinstance(target, str):
        text = target.strip()
        if text.startswith("{"):
            try:
                return parse_fpga_target(json.loads(text))
            except json.JSONDecodeError as err:
                raise TargetError(f"fpga target {text!r} is not valid JSON: {err}") from err
        kind, _, part = text.partition(":")
        if kind != FPGA_KIND:
            raise TargetError(f"not an fpga target: {target!r}")
        return parse_fpga_target({"kind": FPGA_KIND, **({"part": part} if part else {})})
    if not isinstance(target, dict):
        raise TargetError(f"fpga target must be a string or dict, got {type(target).__name__}")
    unknown = set(target) - _KEYS
    if unknown:
        raise TargetError(f"unknown fpga target key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    if target.get("kind", FPGA_KIND) != FPGA_KIND:
        raise TargetError(f"not an fpga target: kind {target.get('kind')!r}")
    clock = float(target.get("clock_mhz", DEFAULT_CLOCK_MHZ))
    if not 10.0 <= clock <= 1000.0:
        raise TargetError(f"clock_mhz {clock} is outside 10..1000 MHz")
    par = target.get("parallelism")
    if par is not None and not isinstance(par, (int, dict)):
        raise TargetError("parallelism must be an int or a {layer: lanes} dict")
    lanes = [par] if isinstance(par, int) else list((par or {}).values())
    if any(not isinstance(v, int) or v < 1 for v in lanes):
        raise TargetError(f"parallelism values must be integers >= 1, got {par!r}")
    top = str(target.get("top", "myproject"))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", top):
        raise TargetError(f"top {top!r} is not a valid C identifier")
    return FpgaTarget(
        part=find_part(str(target.get("part", "u250"))),
        clock_mhz=clock,
        precision=parse_precision(target.get("precision")),
        parallelism=par,
        top=top,
    )


def is_fpga_target(target: Any) -> bool:
    """True for the target forms this package compiles with the HLS backend."""
    if isinstance(target, FpgaTarget):
        return True
    if isinstance(target, dict):
        return target.get("kind") == FPGA_KIND
    if isinstance(target, str):
        text = target.strip()
        if text.startswith("{"):
            try:
                return json.loads(text).get("kind") == FPGA_KIND
            except (json.JSONDecodeError, AttributeError):
                return False
        return text == FPGA_KIND or text.startswith(f"{FPGA_KIND}:")
    return False
