"""Denormal floats flushed to zero (FTZ + DAZ) while the model's kernels run, on x86 CPUs.

Why: a subnormal float (below 1.2e-38) costs ~100 cycles per instruction on x86 instead of one.
Real models make them: EfficientNet's squeeze-excitation gate (a sigmoid of a very negative
logit) times an activation, and every conv or depthwise conv that reads those products. On
EfficientNet-B0 they made our module 2.1x slower (32.6 ms against 15.2 ms with FTZ/DAZ set);
onnxruntime's MLAS avoids them by clamping its logistic's input. Setting FTZ/DAZ is what
TensorFlow does around its CPU ops: results change only where a value is below 1.2e-38.

How: every PrimFunc saves the calling thread's MXCSR, sets FTZ (bit 15) and DAZ (bit 6), runs,
and restores it; so does the body of every parallel loop, which runs on TVM's pool threads. The
caller's mode is restored around each parallel loop itself, because pool threads created on its
first launch inherit the launching thread's mode, and must not inherit ours. Nothing outside
the module's own kernels sees the mode: numpy, onnxruntime and other TVM modules in the same
process keep IEEE subnormals. ``compile(..., flush_denormals=False)`` leaves kernels as they are.

The transform lives here, below ``schedules``, so that ``schedules.kernel.build_kernel`` times
a candidate kernel on the machine code the model runs: the mode switches (and the cut of each
parallel loop into tasks) change how LLVM allocates registers, and a kernel timed without them
once chose a dense conv that spilled its accumulators only in the model.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from ..target import has_cpu_features, is_cpu
from .parallel_loops import map_parallel_loops, with_body

FTZ_DAZ = 0x8040  # MXCSR bits: flush-to-zero (15) and denormals-are-zero (6)
# a PrimFunc attribute: leave the caller's mode alone. For kernels that may fail a run-time
# check: a failed assert returns before the mode is restored, and left the calling thread (and
# numpy after it) flushing subnormals
KEEP_FP_MODE = "tvm_sparse.keep_fp_mode"
_SAVE = "llvm.x86.sse.stmxcsr"
_LOAD = "llvm.x86.sse.ldmxcsr"


def applies(target: tvm.target.Target) -> bool:
    """Whether kernels for ``target`` can set MXCSR: x86 CPUs (SSE is x86's)."""
    return is_cpu(target) and has_cpu_features(target, "sse2")


def _mxcsr_call(intrinsic: str, buffer: tirx.Buffer, index: int) -> tirx.Stmt:
    address = tirx.address_of(tirx.BufferLoad(buffer, [tirx.IntImm("int32", index)]))
    return tirx.Evaluate(tirx.call_llvm_intrin("void", intrinsic, address))


def _mode_buffer(name: str) -> tirx.Buffer:
    """Two words: [0] the thread's own MXCSR, [1] it with FTZ/DAZ set."""
    return tirx.decl_buffer((2,), "int32", name=name, scope="local")


def _flushing(body: tirx.Stmt, mode: tirx.Buffer) -> tirx.Stmt:
    """``body`` run with FTZ/DAZ set on the thread that runs it, its mode restored after."""
    saved = tirx.BufferLoad(mode, [tirx.IntImm("int32", 0)])
    flushing = tirx.bitwise_or(saved, tirx.IntImm("int32", FTZ_DAZ))
    return tirx.SeqStmt([
        tirx.AllocBuffer(mode),
        _mxcsr_call(_SAVE, mode, 0),
        tirx.BufferStore(mode, flushing, [tirx.IntImm("int32", 1)]),
        _mxcsr_call(_LOAD, mode, 1),
        body,
        _mxcsr_call(_LOAD, mode, 0),
    ])  # fmt: skip


def flush_denormals_in(func: tirx.PrimFunc, tasks: int = 1) -> tirx.PrimFunc:
    """``func`` with FTZ/DAZ set while it runs, on its own thread and in every parallel task
    (``tasks``: how many a parallel loop is cut into, the target's cores); unchanged when it
    carries ``KEEP_FP_MODE``."""
    if func.attrs is not None and KEEP_FP_MODE in func.attrs:
        return func
    caller = _mode_buffer("mxcsr")
    body = _launches_flushing(func.body, caller, max(tasks, 1))
    return func.with_body(_flushing(body, caller))


def _launches_flushing(stmt: tirx.Stmt, caller: tirx.Buffer, tasks: int) -> tirx.Stmt:
    """``stmt`` with each parallel loop's tasks flushing and the launch in the caller's mode
    (a pool thread that a launch creates inherits the launching thread's mode: it must not
    inherit ours)."""

    def launch(loop: tirx.For) -> tirx.Stmt:
        return tirx.SeqStmt([_mxcsr_call(_LOAD, caller, 0), _flushing_tasks(loop, tasks),
                             _mxcsr_call(_LOAD, caller, 1)])  # fmt: skip

    try:
        return map_parallel_loops(stmt, launch)
    except TypeError as err:
        raise TypeError(f"FlushDenormals: {err}") from err


def _flushing_tasks(loop: tirx.For, tasks: int) -> tirx.For:
    """The parallel ``loop`` as ``tasks`` parallel chunks of serial iterations, each chunk
    flushing: MXCSR is set and restored once a chunk, not once an iteration (four MXCSR
    instructions cost ~30 cycles; a depthwise row is a few hundred). The chunks are the ones
    TVM's pool cuts (contiguous, ``ceil(extent / tasks)`` each). Each chunk's loop starts at 0
    and binds the original loop var with a let (``var = min + first + i``), so the body needs
    no substitution, and no loop starts at a symbolic offset: TVM 0.27 miscompiles a loop nested
    in one that does when the inner loop's bounds read the outer var (``for oc in range(lo,
    n): for j in range(ptr[oc], ...)`` ran every ``oc`` with ``ptr[oc - lo]``)."""
    extent = loop.extent
    stepped = loop.step is not None and not _is_one(loop.step)
    if stepped or (isinstance(extent, tirx.IntImm) and extent.value <= tasks):
        # a stepped loop, or one already no longer than the tasks: each iteration flushes
        return with_body(loop, _flushing(loop.body, _mode_buffer("mxcsr_task")))
    dtype = str(loop.loop_var.ty)
    one = tirx.const(1, dtype)
    chunk = tirx.max(tirx.floordiv(extent + (tasks - 1), tirx.const(tasks, dtype)), one)
    task = tirx.Var(f"{loop.loop_var.name}_task", dtype)
    step = tirx.Var(f"{loop.loop_var.name}_step", dtype)
    first = task * chunk
    body = tirx.SeqStmt([tirx.Bind(loop.loop_var, loop.min + first + step), loop.body])
    serial = tirx.For(step, tirx.const(0, dtype), tirx.min(chunk, extent - first),
                      tirx.ForKind.SERIAL, body, None, loop.annotations)  # fmt: skip
    chunks = tirx.floordiv(extent + chunk - one, chunk)  # tasks, fewer for a short loop, 0
    return tirx.For(task, tirx.const(0, dtype), chunks, tirx.ForKind.PARALLEL,
                    _flushing(serial, _mode_buffer("mxcsr_task")))  # fmt: skip


def _is_one(value: tirx.PrimExpr) -> bool:
    return isinstance(value, tirx.IntImm) and value.value == 1
