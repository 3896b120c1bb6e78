"""Targets of each vector ISA, for testing every kernel variant on any CI machine.

A variant is always *built* (LLVM compiles for any x86 ``mcpu``) and its assembly checked for
the instructions that make it that variant; it is *run* against the reference only where this
machine can execute it (``host_runs``), so an AVX2 machine still catches an AVX-512 variant that
stops building or stops emitting 512-bit code, and an AVX-512 machine still runs the AVX2 forms.
"""

from __future__ import annotations

import re

import pytest
import tvm

from tvm_sparse.schedules.kernel import KernelCall, build_kernel
from tvm_sparse.target import cpu_isa, resolve_target

ISA_TARGETS = {
    "avx512": {"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 1},
    "avx2": {"kind": "llvm", "mcpu": "haswell", "num-cores": 1},
    "generic": {"kind": "llvm", "mcpu": "x86-64", "num-cores": 1},
}
HOST_ISA = cpu_isa("llvm")


def isa_target(name: str) -> tvm.target.Target:
    return resolve_target(ISA_TARGETS[name])


def host_runs(name: str) -> bool:
    """Whether this machine executes code built for ``ISA_TARGETS[name]``.

    The AVX-512 target is Sapphire Rapids (AMX, FP16...): its code runs here when the host has
    AVX-512, because the kernels use only AVX-512 F/BW/VL/DQ instructions (the asm checks
    below keep it so).
    """
    order = ("generic", "avx2", "avx512")
    return order.index(name) <= order.index(HOST_ISA.name)


def run_target(name: str) -> tvm.target.Target:
    """The target a variant is run with: its ISA's ``mcpu`` where the host is that exact ISA
    level or above (skips the test otherwise)."""
    if not host_runs(name):
        pytest.skip(f"this CPU ({HOST_ISA.describe()}) cannot run {name} code")
    if name == "avx512":  # this CPU's own mcpu: Sapphire Rapids code may use AMX / FP16
        return resolve_target("llvm")
    return isa_target(name)


def asm_of(call: KernelCall, target) -> str:
    return build_kernel(call, resolve_target(target)).inspect_source("asm")


def count(pattern: str, asm: str) -> int:
    return len(re.findall(pattern, asm))


ZMM = r"%zmm\d+"
