"""The final build (TIR lowering + LLVM) of a CPU model, in forked child processes.

Why: an LLVM fatal error aborts the process that runs LLVM. Checking every chosen kernel in the
candidate worker before the final build (``isolation.compile_check``) kept the user's process
safe, but compiled every kernel twice: on a dense GoogLeNet the checks cost as much as the final
build itself. Here the final build *is* the check. This process generates the VM bytecode (no
LLVM); forked children compile the kernels (the model's PrimFuncs) in chunks, as many at a
time as there are CPUs, each chunk into an object file; this process links them into one shared
library, loads it, and links it to the bytecode. The model's weights stay in this process: they
are never written into a library just to be read back (on AlexNet that cost 4 s of 12). When a
child dies by a signal, the caller compiles again with every kernel checked first (the old
path), so a kernel that LLVM cannot take is dropped with a warning, not the user's process.

Only on POSIX (``os.fork``), for CPU targets, and unless ``TVM_SPARSE_ISOLATE=0``; elsewhere the
build runs in this process as ``tvm.compile`` does.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import logging
import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax
from tvm.relax import vm_build
from tvm.support import cc

from .schedules.isolation import isolation_enabled
from .target import host_num_cores, is_cpu

log = logging.getLogger(__name__)

_MAX_CHILDREN = 8
_CHUNKS_PER_CPU = 2
_MIN_KERNELS_PER_CHUNK = 4  # a chunk costs a fork and ~40 ms of LLVM set-up: a small model is one


class FinalBuildCrashed(Exception):
    """A child building the model died by a signal (an LLVM abort, a segfault)."""


class FinalBuildFailed(Exception):
    """The build raised an error (in a child or here); the message is TVM's."""


@dataclass
class Built:
    """What the final build gives: the executable the VM runs; ``export(path)`` writes it as
    a shared library (from the kernels' object files, when the build kept them), and
    ``directory`` keeps those files alive."""

    module: Any
    export: Callable[[str], None] | None = None
    directory: tempfile.TemporaryDirectory | None = None


def forks(target: tvm.target.Target) -> bool:
    """Whether the final build for ``target`` runs in forked children."""
    return hasattr(os, "fork") and is_cpu(target) and isolation_enabled()


def build(lowered: tvm.IRModule, target: tvm.target.Target) -> Built:
    """Build ``lowered`` (the output of the tvm-sparse pipeline) for ``target``."""
    if not forks(target):
        try:
            executable = tvm.compile(lowered, target=target, relax_pipeline=None)
        except Exception as err:  # TVM raises its own error types
            raise FinalBuildFailed(last_line(err)) from err
        return Built(executable, executable.export_library)
    directory = tempfile.TemporaryDirectory(prefix="tvm-sparse-build-")
    try:
        return _build_forked(lowered, target, directory)
    except BaseException:
        directory.cleanup()
        raise


def _build_forked(
    lowered: tvm.IRModule, target: tvm.target.Target, directory: tempfile.TemporaryDirectory
) -> Built:
    try:
        builder, kernels = _bytecode(lowered, target)
    except Exception as err:
        raise FinalBuildFailed(last_line(err)) from err
    objects = _compile_kernels(kernels, target, directory.name)
    library = None
    if objects:
        path = os.path.join(directory.name, "kernels.so")
        try:
            cc.create_shared(path, objects)
        except Exception as err:
            raise FinalBuildFailed(last_line(err)) from err
        library = tvm.runtime.load_module(path)
    executable = _link(builder, lowered, target, library)

    def export(path: str) -> None:
        # the bytecode again (cheap), linked with the kernels' object files: no LLVM rerun
        builder, _ = _bytecode(lowered, target)
        _link(builder, lowered, target, None).export_library(path, addons=list(objects))

    return Built(executable, export, directory)


def _bytecode(lowered: tvm.IRModule, target: tvm.target.Target):
    """The VM bytecode (in a fresh ExecBuilder) and the kernels left to compile, as
    ``tvm.relax.build`` makes them."""
    builder = relax.ExecBuilder()
    leftover = vm_build._vmcodegen(builder, lowered)
    kernels = vm_build._filter_tir(leftover)
    if kernels is not None and kernels.functions:
        kernels = vm_build._auto_attach_system_lib_prefix(kernels, target, None)
    return builder, kernels


def _link(builder, lowered: tvm.IRModule, target, library) -> relax.VMExecutable:
    """The executable: bytecode, constants and the kernels' library (``relax.build``'s link)."""
    attrs = dict(lowered.attrs) if lowered.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    return relax.VMExecutable(vm_build._ffi_api.VMLink(builder, target, library, ext_libs, params))


def _compile_kernels(kernels: tvm.IRModule | None, target, workdir: str) -> list[str]:
    """Compile ``kernels`` into object files in forked children; their paths.

    The kernels are dealt into ``_CHUNKS_PER_CPU`` chunks per CPU and a CPU that finishes its
    chunk takes the next one: LLVM's time per kernel varies tenfold and cannot be told from
    the TIR, so equal static halves leave one CPU idle (a chunk also costs ~40 ms of LLVM set-up,
    hence chunks, not single kernels)."""
    if kernels is None or not kernels.functions:
        return []
    functions = sorted(kernels.functions.items(), key=lambda kv: kv[0].name_hint)
    cpus = max(1, min(_MAX_CHILDREN, host_num_cores()))
    most = cpus * _CHUNKS_PER_CPU if cpus > 1 else 1
    count = min(-(-len(functions) // _MIN_KERNELS_PER_CHUNK), most)
    chunks = [tvm.IRModule(dict(functions[i::count]), attrs=kernels.attrs) for i in range(count)]
    objects = [os.path.join(workdir, f"kernels{index}.o") for index in range(count)]
    start = time.perf_counter()
    pending = list(range(count))
    running: dict[int, int] = {}  # pid -> chunk index
    try:
        while pending or running:
            while pending and len(running) < cpus:
                index = pending.pop(0)
                work = functools.partial(_build_kernels, chunks[index], target, objects[index])
                running[_fork(work, workdir, index)] = index
            for pid, index in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    del running[pid]
                    _raise_for(status, objects[index], workdir, index)
            if running:
                time.sleep(0.005)
    finally:  # a failed chunk or Ctrl-C: the other children go too
        for pid in running:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    log.debug("kernels compiled in %d chunks on %d CPUs in %.1f s", count, cpus,
              time.perf_counter() - start)  # fmt: skip
    return objects


def _build_kernels(kernels: tvm.IRModule, target, object_path: str) -> None:
    """In a child: TIR lowering and LLVM for ``kernels``, written as one object file."""
    tvm.tirx.build(kernels, target=target).write_to_file(object_path)


def _raise_for(status: int, obj: str, workdir: str, index: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        said = _stderr_line(_stderr_file(workdir, index))
        raise FinalBuildCrashed(
            f"the build process died by signal {sig} {name}" + (f": {said}" if said else "")
        )
    if os.WEXITSTATUS(status) != 0 or not os.path.exists(obj):
        why = _read(_error_file(workdir, index)) or f"exit status {os.WEXITSTATUS(status)}"
        raise FinalBuildFailed(why)


def _fork(work: Callable[[], None], workdir: str, index: int) -> int:
    """Start ``work()`` in a forked child; its pid. The child never returns here: it exits 0,
    or 3 after writing the error's last line to its error file."""
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python 3.12 warns that forking a multi-threaded process may deadlock the child; the
        # threads here (TVM's pool, the check thread) are idle, and the child only runs LLVM
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 0  # pragma: no cover - the rest runs in the child, which ends with os._exit
    try:
        faulthandler.disable()  # a crash is reported by the parent, not as a Python dump
        with open(_stderr_file(workdir, index), "wb") as err:
            os.dup2(err.fileno(), 2)
        work()
    except BaseException as err:  # noqa: BLE001 - reported to the parent through a file
        code = 3
        with contextlib.suppress(Exception), open(_error_file(workdir, index), "w") as f:
            f.write(last_line(err))
    finally:
        os._exit(code)


def _stderr_file(workdir: str, index: int) -> str:
    # the child's stderr: LLVM's "LLVM ERROR: ..." line lands there
    return os.path.join(workdir, f"stderr{index}.txt")


def _error_file(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"error{index}.txt")


def last_line(err: BaseException) -> str:
    """The useful line of a TVM error (its last)."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _stderr_line(path: str) -> str:
    """The line of the child's stderr that names the crash (LLVM's ``LLVM ERROR: ...``), else
    its last non-empty line, trimmed."""
    lines = [ln.strip() for ln in _read(path).splitlines() if ln.strip()]
    named = [ln for ln in lines if "ERROR" in ln or "error" in ln]
    line = (named or lines or [""])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
