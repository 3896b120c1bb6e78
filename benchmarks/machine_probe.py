"""The machine's limits, measured: FP32 FMA peak and memory bandwidth of one core, and the vector
ISA every kernel of a compiled model really uses.

    python benchmarks/machine_probe.py            # prints CPU, ISA, peak GFLOP/s, GB/s

Benchmarks report each result as a fraction of these limits (``bench_models.py`` prints them
with its table), because a ratio to a peer says little on its own: the same MLP ran 0.41 ms on
an AVX2 Zen 3 and 0.86 ms on an AVX-512 Emerald Rapids.

- Peak: 12 independent ``llvm.fma`` chains of the widest vector the target has (12 zmm or
  ymm accumulators: more than the FMA latency times two pipes, fewer than AVX2's 16
  registers, so nothing spills), timed by TVM's
  ``time_evaluator``. The best of several repeats, on one thread.
- Bandwidth: one thread sums a 512 MiB float32 array (bigger than any L3) with 8 vector
  accumulators; bytes read / seconds. What one core can stream, which is what a one-thread
  sparse kernel that reads its weights once is bound by.
- ``kernel_isas``: ``objdump`` of the exported library; a kernel that touches a ``zmm``
  register is AVX-512, ``ymm`` AVX2, else SSE / scalar.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np
import tvm
from tvm.script import tirx as T

from tvm_sparse.machine import cpu_model
from tvm_sparse.target import cpu_isa, resolve_target

_CHAINS = 12  # independent accumulators: > latency x pipes (8), < the 16 ymm registers
_PEAK_STEPS = 2_000_000
_STREAM_BYTES = 512 << 20


def _compile(func: tvm.tirx.PrimFunc, target) -> tvm.runtime.Module:
    func = func.with_attr({"global_symbol": "main", "tirx.noalias": True})
    return tvm.tirx.build(func, target=target)


@functools.cache
def peak_gflops(target_spec: str = "llvm") -> float:
    """Measured FP32 FMA peak of one core, GFLOP/s (2 flops per lane per FMA)."""
    target = resolve_target(target_spec)
    lanes = cpu_isa(target).lanes
    steps, chains = _PEAK_STEPS, _CHAINS
    vec = f"float32x{lanes}"

    @T.prim_func
    def fma_chains(
        seed: T.Buffer((lanes,), "float32"), out: T.Buffer((chains * lanes,), "float32")
    ):
        acc = T.alloc_buffer((chains * lanes,), "float32", scope="local")
        for c in T.unroll(chains):
            acc[T.ramp(c * lanes, 1, lanes)] = seed[T.ramp(0, 1, lanes)] + T.float32(c)
        for _ in range(steps):
            for c in T.unroll(chains):
                acc[T.ramp(c * lanes, 1, lanes)] = T.call_llvm_pure_intrin(
                    vec,
                    "llvm.fma",
                    acc[T.ramp(c * lanes, 1, lanes)],
                    T.broadcast(T.float32(0.999999), lanes),
                    T.broadcast(T.float32(1e-7), lanes),
                )
        for c in T.unroll(chains):
            out[T.ramp(c * lanes, 1, lanes)] = acc[T.ramp(c * lanes, 1, lanes)]

    module = _compile(fma_chains, target)
    seed = tvm.runtime.tensor(np.ones(lanes, np.float32))
    out = tvm.runtime.tensor(np.zeros(chains * lanes, np.float32))
    best = min(_timer(module)(seed, out).results)
    return 2.0 * lanes * chains * steps / best / 1e9


@functools.cache
def bandwidth_gbs(target_spec: str = "llvm", nbytes: int = _STREAM_BYTES) -> float:
    """Measured read bandwidth of one core, GB/s (1e9 bytes), over an array of ``nbytes``: from
    memory at the default 512 MiB; from whichever cache holds it for a smaller footprint (the
    array is read again and again, as a model's weights are from one inference to the next)."""
    target = resolve_target(target_spec)
    lanes = cpu_isa(target).lanes
    step = 8 * lanes
    n = max(step, nbytes // 4 // step * step)

    @T.prim_func
    def stream(x: T.Buffer((n,), "float32"), out: T.Buffer((step,), "float32")):
        acc = T.alloc_buffer((step,), "float32", scope="local")
        for i in T.vectorized(step):
            acc[i] = T.float32(0)
        for j in range(n // step):
            for i in T.vectorized(step):
                acc[i] = acc[i] + x[j * step + i]
        for i in T.vectorized(step):
            out[i] = acc[i]

    module = _compile(stream, target)
    x = tvm.runtime.tensor(np.ones(n, np.float32))
    out = tvm.runtime.tensor(np.zeros(step, np.float32))
    number = max(1, _STREAM_BYTES // (4 * n))  # a small array: many reads per timing
    best = min(_timer(module, number)(x, out).results)
    return 4 * n / best / 1e9


def _timer(module: tvm.runtime.Module, number: int = 1):
    """``time_evaluator`` of a built function: the best of 5 repeats is what we keep."""
    return module.time_evaluator("main", tvm.cpu(0), number=number, repeat=5)


def csr_bytes(model) -> int:
    """Bytes of the model's weights (initializers of rank >= 2) as plain CSR: a float32 value
    and an int32 column index per non-zero, an int32 row pointer per row (+1)."""
    from onnx import numpy_helper

    total = 0
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            w = numpy_helper.to_array(init)
            total += 8 * int(np.count_nonzero(w)) + 4 * (w.shape[0] + 1)
    return total


_FUNC_HEADER = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")


def kernel_isas(module) -> dict[str, str]:
    """The vector ISA each kernel of a compiled tvm-sparse module uses: ``avx512`` (touches a zmm
    register), ``avx2`` (ymm), ``sse/scalar`` otherwise; from ``objdump`` of its exported
    library. Empty when objdump is missing."""
    with tempfile.TemporaryDirectory(prefix="tvm-sparse-probe-") as tmp:
        path = os.path.join(tmp, "model.so")
        module.export(path)
        try:
            text = subprocess.run(
                ["objdump", "-d", "--no-show-raw-insn", path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return {}
    # a kernel is its exported wrapper ``__tvm_ffi_<name>`` plus, where TVM split it, the body
    # ``<name>_compute_``; other functions (TVM's helpers, libgcc's) are not kernels
    registers: dict[str, set[str]] = {}
    name = None
    for line in text.splitlines():
        header = _FUNC_HEADER.match(line)
        if header:
            name = _kernel_name(header.group(1))
            if name is not None:
                registers.setdefault(name, set())
        elif name is not None:
            registers[name].update(re.findall(r"%([xyz])mm", line))
    return {k: _isa_of(v) for k, v in registers.items()}


def _kernel_name(symbol: str) -> str | None:
    if symbol.startswith("__tvm_ffi_") and not symbol.startswith("__tvm_ffi__"):
        return symbol[len("__tvm_ffi_") :]
    if symbol.endswith("_compute_"):
        return symbol[: -len("_compute_")]
    return None


def _isa_of(registers: set[str]) -> str:
    if "z" in registers:
        return "avx512"
    if "y" in registers:
        return "avx2"
    return "sse/scalar"


def isa_summary(isas: dict[str, str]) -> str:
    """``avx512 x12, avx2 x3 (attention_0, ...), sse/scalar x2 (...)`` for a table note."""
    counts = Counter(isas.values())
    parts = []
    for isa in ("avx512", "avx2", "sse/scalar"):
        if not counts.get(isa):
            continue
        names = sorted(k for k, v in isas.items() if v == isa)
        shown = (
            ""
            if isa == "avx512"
            else f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
        )
        parts.append(f"{isa} x{counts[isa]}{shown}")
    return ", ".join(parts) or "no kernels found"


def machine_line(target_spec: str = "llvm") -> str:
    """One line: CPU, ISA, measured peak and bandwidth of one core."""
    isa = cpu_isa(resolve_target(target_spec))
    return (
        f"machine: {cpu_model()}; ISA {isa.describe()}; one core: FP32 FMA peak "
        f"{peak_gflops(target_spec):.0f} GFLOP/s, memory read {bandwidth_gbs(target_spec):.1f} GB/s"
    )


def main() -> int:
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
