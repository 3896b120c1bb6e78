"""Target parsing: strings, dicts and Target objects become one ``tvm.target.Target``."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any

import tvm

from .errors import TargetError

FPGA_KIND = "fpga"


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (``znver3``, ``sapphirerapids``...)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


# The process's affinity as it started, read before TVM's thread pool exists: the pool pins the
# calling thread to one core when it starts (a module run, ``runtime.NumThreads``), after which
# ``sched_getaffinity(0)`` on that thread says 1, and a compile in the same process built
# serial kernels for a multi-core machine.
_STARTING_CORES = _affinity_cores()


def process_cores() -> int:
    """Cores this process may run on (its affinity mask at start), whatever TVM_NUM_THREADS
    says, and whatever TVM's thread pool did to the calling thread's mask since."""
    return _STARTING_CORES


def host_num_cores() -> int:
    """Cores this process may use (respects affinity and TVM_NUM_THREADS)."""
    env = os.environ.get("TVM_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return process_cores()


def resolve_target(target: Any = "llvm") -> tvm.target.Target:
    """Turn a user's target into a ``tvm.target.Target``.

    ``"llvm"`` means this host's CPU with its real ``mcpu`` and core count (TVM 0.27 ignores
    ``mcpu=native`` and would otherwise compile for a generic x86 without AVX).
    """
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        name = target.strip()
        if name in ("llvm", "cpu", "x86", "host"):
            return tvm.target.Target(
                {"kind": "llvm", "mcpu": host_cpu(), "num-cores": host_num_cores()}
            )
        if name == "cuda" or name.startswith("cuda "):
            return tvm.target.Target({"kind": "cuda", "arch": _cuda_arch(name)})
        if name.startswith("{"):
            import json

            return resolve_target(json.loads(name))
        raise TargetError(
            f"unknown target {target!r}: use 'llvm', 'cuda', 'fpga', a JSON dict or a tvm Target"
        )
    if isinstance(target, dict):
        spec = dict(target)
        if spec.get("kind") == FPGA_KIND:
            raise TargetError("the fpga target is compiled by tvm_sparse.codegen.fpga, not llvm")
        if spec.get("kind") == "llvm":
            if spec.get("mcpu") in (None, "native"):
                spec["mcpu"] = host_cpu()
            spec.setdefault("num-cores", host_num_cores())
        try:
            return tvm.target.Target(spec)
        except Exception as err:  # TVM raises several types for bad specs
            raise TargetError(f"invalid target {target!r}: {err}") from err
    raise TargetError(f"target must be a str, dict or tvm.target.Target, not {type(target)}")


_DEFAULT_CUDA_ARCH = "sm_90"  # what CUDA code is built for when neither a flag nor a GPU says


def _cuda_arch(text: str) -> str:
    """The ``sm_XY`` a ``cuda`` target string asks for: ``-arch=sm_80`` if given, else the GPU
    that is present, else Hopper (so code built on a GPU-less machine still compiles)."""
    flags = text.split()[1:]
    if not flags:
        return present_cuda_arch() or _DEFAULT_CUDA_ARCH
    match = re.fullmatch(r"-(?:arch|mcpu)=(sm_\d+a?)", flags[0]) if len(flags) == 1 else None
    if match is None:
        raise TargetError(
            f"unknown cuda target options in {text!r}: only -arch=sm_XY is understood"
        )
    return match.group(1)


def present_cuda_arch() -> str | None:
    """``sm_XY`` of GPU 0, or None without a GPU."""
    try:
        device = tvm.cuda(0)
        if not device.exist:
            return None
        return "sm_" + str(device.compute_version).replace(".", "")
    except Exception:  # no CUDA runtime in this TVM build
        return None


def num_cores(target: Any) -> int:
    """The cores a kernel may use on ``target`` (its ``num-cores``); 1 when unknown or None."""
    if target is None:
        return 1
    if not isinstance(target, tvm.target.Target):
        target = resolve_target(target)
    cores = target.attrs.get("num-cores", 1) if target.attrs is not None else 1
    return max(int(cores), 1)


def has_cpu_features(target: Any, *features: str) -> bool:
    """Whether LLVM says ``target`` (a spec or Target) has every one of ``features`` (e.g.
    ``"avx2"``); False for a target LLVM cannot parse."""
    try:
        return bool(tvm.target.codegen.target_has_features(list(features), resolve_target(target)))
    except Exception:  # a target LLVM cannot parse has none
        return False


def device_present(target: tvm.target.Target) -> bool:
    """Whether this machine can run code built for ``target`` (kernels can be timed on it)."""
    if is_cpu(target):
        return True
    try:
        return bool(tvm.device(str(target.kind.name), 0).exist)
    except Exception:  # a device kind this TVM build has no runtime for
        return False


def is_cpu(target: tvm.target.Target) -> bool:
    return str(target.kind.name) == "llvm"


def is_cuda(target: tvm.target.Target) -> bool:
    return str(target.kind.name) == "cuda"


@dataclass(frozen=True)
class CpuIsa:
    """What a CPU target's vector unit offers the kernels: the one place that knows the ISA.

    ``name`` is ``avx512`` (AVX-512 F + BW + VL + DQ: 16 lanes, mask registers, compress),
    ``avx2`` (AVX2 + FMA: 8 lanes) or ``generic`` (no intrinsic; 4 lanes, what SSE / NEON
    vectors hold). Kernels pick their variant from it (``compress``: ``vpcompressd`` compaction;
    ``bmi2``: ``pdep`` / ``pext`` compaction on 8 lanes; ``permps``: AVX2 lane permutes) and size
    register tiles from ``lanes``. ``vnni`` / ``amx`` / ``bf16`` are reported (no kernel here
    uses int8 or bf16 yet).
    """

    name: str
    lanes: int
    fma: bool = False
    bmi2: bool = False
    compress: bool = False
    vnni: bool = False
    amx: bool = False
    bf16: bool = False
    # 512-bit ops run as two 256-bit halves (AMD Zen 4): register tiles that trade FMAs per
    # load for fewer wasted lanes rank differently there (``pointwise_conv_x86``)
    zmm_split: bool = False

    @property
    def avx512(self) -> bool:
        return self.name == "avx512"

    @property
    def whole_zmm(self) -> bool:
        """AVX-512 with whole 512-bit units (Intel), where the kernels' Intel-measured 16-lane
        defaults apply; Zen 4 (``zmm_split``) and AVX2 keep the ones measured there."""
        return self.lanes >= 16 and not self.zmm_split

    @property
    def avx2(self) -> bool:
        """AVX2 instructions are there (true on every AVX-512 CPU too)."""
        return self.name in ("avx2", "avx512")

    def describe(self) -> str:
        """One line for reports: ``avx512 (16 lanes, compress, vnni)``."""
        extras = [f"{self.lanes} lanes"]
        extras += [f for f in ("compress", "vnni", "amx", "bf16") if getattr(self, f)]
        return f"{self.name} ({', '.join(extras)})"


GENERIC_ISA = CpuIsa("generic", 4)
AVX2_ISA = CpuIsa("avx2", 8, fma=True, bmi2=True)


def cpu_isa(target: Any) -> CpuIsa:
    """The vector ISA of a CPU ``target`` (a spec or Target), from LLVM's feature list for its
    ``mcpu`` / ``mattr``; AVX2 for None (kernels built without a target keep their AVX2 form)."""
    if target is None:
        return AVX2_ISA
    return _cpu_isa_of(str(resolve_target(target)))


@functools.lru_cache(maxsize=64)
def _cpu_isa_of(target_text: str) -> CpuIsa:
    target = tvm.target.Target(target_text)
    if not is_cpu(target):
        return GENERIC_ISA

    def has(*features: str) -> bool:
        return has_cpu_features(target, *features)

    common = {
        "fma": has("fma"),
        "bmi2": has("bmi2"),
        "vnni": has("avx512vnni") or has("avxvnni"),
        "amx": has("amx-tile"),
        "bf16": has("avx512bf16") or has("amx-bf16"),
    }
    if has("avx512f", "avx512bw", "avx512vl", "avx512dq"):
        split = str(target.attrs.get("mcpu", "")) == "znver4"
        return CpuIsa("avx512", 16, compress=True, zmm_split=split, **common)
    if has("avx2", "fma"):
        return CpuIsa("avx2", 8, **common)
    return CpuIsa("generic", 4, **{**common, "bmi2": False})


def vector_lanes(target: Any) -> int:
    """float32 lanes of the widest vector the CPU target has: 16 with AVX-512, 8 with AVX2,
    4 otherwise (SSE / NEON). Kernels size register tiles from it instead of a constant."""
    return cpu_isa(target).lanes
