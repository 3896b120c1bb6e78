"""The candidate worker: a process that compiles and times candidate kernels for the choice.

LLVM reports some errors by aborting the process ("LLVM ERROR: ..."), and a wrong kernel can
segfault when timed: either would take the whole compile down if it happened in the compiling
process. The compiling process (``isolation.WorkerRunner``) starts this module as
``python -m tvm_sparse.schedules.candidate_worker`` (a fresh interpreter: forking a process that
has imported TVM is unsafe) and sends it requests on stdin; it answers on stdout.

Protocol: each message is an 8-byte big-endian length and a pickle. A request is a dict with
``kernels`` (``to_job`` of each), ``target`` (its JSON), ``x`` (the layer input, or None to
compile only) and ``rounds``. The worker says ``("ready",)`` once it has imported TVM, then
answers each request with ``("step", name, phase)`` before each compile and each timed call,
and ``("done", {name: Outcome})``. It exits at end of input, or after
``TVM_SPARSE_WORKER_IDLE_S`` seconds without a request.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys

IDLE_ENV = "TVM_SPARSE_WORKER_IDLE_S"
DEFAULT_IDLE_S = 60.0
_HEADER = struct.Struct(">Q")


class ChannelClosed(Exception):
    """The other end closed the pipe."""


class ChannelTimeout(Exception):
    """No message within the time allowed."""


def write_message(fd: int, message: object) -> None:
    """Send one framed pickle on ``fd``."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int, timeout_s: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if timeout_s is not None and not select.select([fd], [], [], timeout_s)[0]:
            raise ChannelTimeout(f"nothing within {timeout_s:.0f} s")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("end of input")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, timeout_s: float | None = None) -> object:
    """Receive one framed pickle from ``fd``; ``timeout_s`` bounds the wait for each chunk."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, timeout_s))
    return pickle.loads(_read_exact(fd, size, timeout_s))


def to_job(name: str, call) -> tuple:
    """A ``KernelCall`` as plain data: its PrimFunc as TVM JSON (round-trips with the same
    structural hash), its constants, its output."""
    import tvm

    return (name, tvm.ir.save_json(call.func), call.consts, call.out_shape, call.out_dtype)


def from_job(job: tuple):
    """The ``KernelCall`` ``to_job`` described."""
    import tvm

    from .kernel import KernelCall

    name, func_json, consts, out_shape, out_dtype = job
    func = tvm.ir.load_json(func_json)
    return KernelCall(func, name, tuple(consts), tuple(out_shape), out_dtype)


def serve(in_fd: int, out_fd: int, idle_s: float) -> int:
    """Answer requests until the input closes or stays idle for ``idle_s`` seconds."""
    import tvm

    from .candidate_run import COMPILE, Outcome, error_text, run_candidates
    from .vector_math import install_llvm_lowering

    # the builders install the vector exp / erf lowering in the compiling process when a kernel
    # needs it (GELU epilogues); the worker compiles those kernels too, so it needs it as well
    install_llvm_lowering()

    def step(name: str, phase: str) -> None:
        write_message(out_fd, ("step", name, phase))

    write_message(out_fd, ("ready",))
    while True:
        try:
            request = read_message(in_fd, idle_s)
        except (ChannelClosed, ChannelTimeout):
            return 0
        target = tvm.target.Target(request["target"])
        calls, failed = {}, {}
        for job in request["kernels"]:
            step(job[0], COMPILE)  # loading the PrimFunc is part of its compile
            try:
                calls[job[0]] = from_job(job)
            except Exception as err:  # noqa: BLE001 - reported as this candidate's failure
                failed[job[0]] = Outcome(error=f"failed to load: {error_text(err)}")
        outcomes = run_candidates(calls, target, request["x"], request["rounds"], on_step=step,
                                  weights_in=request["weights_in"])  # fmt: skip
        write_message(out_fd, ("done", {**outcomes, **failed}))
        del calls, request  # free the constants before waiting for the next request


def main() -> int:
    # stdout carries the protocol only: whatever TVM or LLVM print goes to stderr instead
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    idle_s = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    return serve(0, out_fd, idle_s)


if __name__ == "__main__":
    sys.exit(main())
