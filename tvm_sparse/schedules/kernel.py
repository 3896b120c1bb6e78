"""The contract between kernel builders and the rewrite passes.

A kernel builder turns one operator (static shapes, the constant weight) into a scheduled TIR
PrimFunc plus the constant arrays it reads (packed weights, indices, bias). The rewrite pass
emits ``call_tir(func, [activation, *consts], out_sinfo)``; nothing else couples the two sides,
so a kernel can be built, run and tested without Relax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm

from ..ir import fp_mode
from ..ir.parallel_loops import serial_on_one_core
from ..target import num_cores

# relax OpPatternKind kOpaque: FuseOps leaves the call alone, and AnnotateTIROpPattern does not
# analyze it (its reshape check asserts block-based TIR on two-argument functions)
OPAQUE_PATTERN = 8


def finish(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Mark a hand-scheduled kernel: dlight leaves it alone, and its buffers do not alias."""
    return func.with_attr({"tirx.is_scheduled": True, "tirx.noalias": True})


def without_params(func: tvm.tirx.PrimFunc, names: set[str]) -> tvm.tirx.PrimFunc:
    """``func`` without the parameters ``names``, which its body must not read. Why:
    TVMScript has no optional parameters, so a kernel whose bias, residual or output is
    optional is written once with all of them and the unused ones dropped."""
    if not names:
        return func
    params = [p for p in func.params if p.name not in names]
    return tvm.tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


def finish_opaque(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``finish``, and opaque to FuseOps: fusing an elementwise op into a hand-scheduled kernel
    breaks FuseTIR ("Inconsistent buffers"), and block-free TIR cannot be pattern-analyzed."""
    return finish(func).with_attr("op_pattern", OPAQUE_PATTERN)


def as_weight(weight: np.ndarray, ndim: int) -> np.ndarray:
    """The weight as a contiguous float32 array of ``ndim`` dimensions (else a clear error)."""
    weight = np.asarray(weight)
    if weight.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D weight, got shape {weight.shape}")
    return np.ascontiguousarray(weight, dtype=np.float32)


def linear_info(kind: str, m: int, n: int, k: int, nnz: int, stored: int, weight_bytes: int,
                extra: dict) -> dict:  # fmt: skip
    """The ``info`` every linear kernel reports: sizes, MACs done vs dense, bytes moved."""
    return {
        "kernel": kind,
        "m": m,
        "n": n,
        "k": k,
        "nnz": int(nnz),
        "stored": int(stored),
        "density": nnz / (n * k) if n * k else 0.0,
        "macs_sparse": int(stored) * m,
        "macs_dense": n * k * m,
        "bytes": int(weight_bytes + 4 * m * (n + k)),
        "weight_bytes": int(weight_bytes),
        **extra,
    }


@dataclass(frozen=True)
class KernelCall:
    """A scheduled kernel and the constants it is called with.

    ``func`` takes ``(activation, *consts, out)`` in that order (destination-passing style).
    ``relayout(x_tiles, y_tiles)``, where a kernel has it, builds the same kernel reading x
    and/or writing y in the transposed tile layout ``info["m_tile"]`` defines (see
    ``sparse_x86.tiles_shape``), so two such kernels in a row skip a transpose each.
    """

    func: tvm.tirx.PrimFunc
    name: str
    consts: tuple[np.ndarray, ...]
    out_shape: tuple[int, ...]
    out_dtype: str = "float32"
    info: dict = field(default_factory=dict)
    relayout: Callable[[bool, bool], KernelCall] | None = field(default=None, compare=False)

    @property
    def const_bytes(self) -> int:
        """Bytes of constant data the kernel reads (what moves at batch 1)."""
        return int(sum(c.nbytes for c in self.consts))


def build_kernel(
    call: KernelCall, target: tvm.target.Target, flush_denormals: bool = True
) -> tvm.runtime.Module:
    """Compile a kernel alone (for tests, measurement and the per-layer choice), rewritten as
    the model's build rewrites it (one core: serial loops; x86: denormals flushed, the
    default ``compile`` option), so a candidate is timed on the machine code the model runs.

    Returns the loaded runtime module (``Executable.jit()``): it has ``time_evaluator``.
    """
    func = serial_on_one_core(call.func, target)
    if flush_denormals and fp_mode.applies(target):
        func = fp_mode.flush_denormals_in(func, num_cores(target))
    func = func.with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=target).jit()


def kernel_device(target: tvm.target.Target) -> tvm.runtime.Device:
    """Where a kernel built for ``target`` runs: the CPU, or device 0 of a GPU target."""
    return tvm.cpu() if str(target.kind.name) == "llvm" else tvm.device(str(target.kind.name), 0)


def run_kernel(
    call: KernelCall, target: tvm.target.Target, x: np.ndarray, module=None
) -> np.ndarray:
    """Run a kernel once on CPU and return its output (the reference path in tests)."""
    module = module or build_kernel(call, target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=call.out_dtype), dev)
    module["main"](*args, out)
    return out.numpy()


COLD_WEIGHTS_PREPROC = "tvm_sparse.flush_weights"
EVICT_PRIVATE_PREPROC = "tvm_sparse.evict_private_caches"


def cold_weights_preproc() -> str:
    """Register (once) and name the pre-call hook of a cold-weights timing: TVM's
    ``cache_flush_cpu_non_first_arg`` over the weights only (the arguments between the input
    and the output). The output stays cached, as a model's reused activation memory is (this
    machine's L3 holds every activation of a ResNet-50). With the output flushed to DRAM too
    (TVM's hook as it is), a kernel that stores to many rows at once (the tap-plane sparse conv:
    256 channels x 64 positions a tile) paid a DRAM read per line it wrote: ResNet-50's 64->256
    1x1 at 90% timed 920 us against 273 warm and lost its layer to dense (644), while in the
    model it runs in 287 against dense's 636."""
    import tvm_ffi

    if tvm_ffi.get_global_func(COLD_WEIGHTS_PREPROC, allow_missing=True) is None:
        flush = tvm_ffi.get_global_func("cache_flush_cpu_non_first_arg")

        def flush_weights(*args) -> None:
            if len(args) > 2:
                flush(*args[:-1])  # the first (the input) is not flushed; the last is the output

        tvm_ffi.register_global_func(COLD_WEIGHTS_PREPROC, flush_weights, override=True)
    return COLD_WEIGHTS_PREPROC


def evict_private_caches_preproc() -> str:
    """Register (once) and name a pre-call hook that reads a buffer twice the L2's size: the
    kernel's weights leave L1 and L2 but stay in the L3 (``weights_residency``'s "l3")."""
    import tvm_ffi

    from ..machine import cache_bytes

    if tvm_ffi.get_global_func(EVICT_PRIVATE_PREPROC, allow_missing=True) is None:
        size = cache_bytes(2) or 2 * 1024 * 1024
        buf = np.ones(2 * size // 4, dtype=np.float32)

        def evict(*_args) -> None:
            np.add.reduce(buf[::16])  # one read of every cache line

        tvm_ffi.register_global_func(EVICT_PRIVATE_PREPROC, evict, override=True)
    return EVICT_PRIVATE_PREPROC


def weights_preproc(weights_in: str) -> str:
    """The pre-call hook that puts a timed kernel's weights where a model finds them: "hot"
    (none: left in L1/L2 by the last call), "l3" (L1 and L2 evicted) or "dram" (flushed)."""
    if weights_in == "hot":
        return ""
    if weights_in == "l3":
        return evict_private_caches_preproc()
    if weights_in == "dram":
        return cold_weights_preproc()
    raise ValueError(f"weights_in must be hot, l3 or dram, got {weights_in!r}")


def kernel_timer(
    call: KernelCall,
    target: tvm.target.Target,
    x: np.ndarray,
    module=None,
    number: int = 10,
    repeat: int = 5,
    min_repeat_ms: int = 50,
    weights_in: str = "hot",
) -> Callable[[], float]:
    """Build once, then ``timer()`` -> median seconds per call (TVM's time_evaluator).

    A timer can be called again and again, so several kernels can be timed in turns.
    ``weights_in`` ("hot", "l3", "dram"; see ``weights_preproc``) moves the weights before each
    timed repeat to where a model finds them: there, a layer's weights were last read a whole
    inference ago, while its input was just written and its output's memory was used by an
    earlier layer. Use "l3" / "dram" with ``number=1``, or only the first call of a repeat is
    cold. Only CPU targets move them; a GPU kernel is timed hot.
    """
    module = module or build_kernel(call, target)
    dev = kernel_device(target)
    preproc = weights_preproc(weights_in) if str(target.kind.name) == "llvm" else ""
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in call.consts]
    out = tvm.runtime.tensor(np.zeros(call.out_shape, dtype=call.out_dtype), dev)
    evaluator = module.time_evaluator(
        "main",
        dev,
        number=number,
        repeat=repeat,
        min_repeat_ms=min_repeat_ms,
        f_preproc=preproc,
    )
    return lambda: float(np.median(evaluator(*args, out).results))
