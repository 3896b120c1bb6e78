"""Which machine a measurement was taken on: the key that keeps tuning records to their CPU.

A kernel's best knobs on one CPU are not its best on another (an AVX2 Zen 3 and an AVX-512
Xeon differ in vector width, cache sizes and load ports), and LLVM's ``mcpu`` does not tell
machines apart: a KVM guest of a Sapphire Rapids host reports a model number LLVM calls
``rocketlake``. So records carry the CPU's own name and numbers from ``/proc/cpuinfo`` and the
vector ISA the kernels were built for.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .target import cpu_isa, is_cpu, resolve_target


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first value of every key of ``/proc/cpuinfo`` (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """``/proc/cpuinfo``'s model name, with family / model numbers where the name is vague."""
    info = cpuinfo()
    name = info.get("model name", "unknown CPU")
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def _built_for(tgt) -> str:
    """What kernels for ``tgt`` are built for: the CPU ISA, or the GPU kind and arch."""
    if is_cpu(tgt):
        return cpu_isa(tgt).describe()
    return f"{tgt.kind.name} {tgt.attrs.get('arch', '')}".strip()


def machine_id(target: Any) -> str:
    """This machine as a tuning record sees it: the CPU and the ISA ``target`` builds for (CPU
    targets), or the GPU the target names (``cuda -arch=sm_90``: its device may be remote)."""
    tgt = resolve_target(target)
    return f"{cpu_model()}; {_built_for(tgt)}" if is_cpu(tgt) else _built_for(tgt)


def rpc_machine_id(key: str, target: Any) -> str:
    """A device measured through an RPC tracker: its tracker key and the target built for it."""
    return f"rpc device {key!r}; {_built_for(resolve_target(target))}"


def cache_bytes(level: int) -> int | None:
    """The size of this CPU's level-``level`` data or unified cache (sysfs), None if unknown."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(base, entry, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return None
    return None
