"""The final build (TIR lowering + LLVM) of a CPU model in a forked child process.

Why: an LLVM fatal error aborts the process that runs LLVM. Checking every chosen kernel in the
candidate worker before the final build (``isolation.compile_check``) kept the user's process
safe, but compiled every kernel twice: on a dense GoogLeNet the checks cost as much as the final
build itself. Here the final build *is* the check: a forked child builds the module and writes
it as a shared library, and this process loads it. When the child dies by a signal, the caller
compiles again with every kernel checked first (the old path), so a kernel that LLVM cannot take
is dropped with a warning, not the user's process.

Only on POSIX (``os.fork``), for CPU targets, and unless ``TVM_SPARSE_ISOLATE=0``; elsewhere the
build runs in this process as ``tvm.compile`` does.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm

from .schedules.isolation import isolation_enabled
from .target import is_cpu

_ERROR_FILE = "error.txt"
_STDERR_FILE = "stderr.txt"  # the child's stderr: LLVM's "LLVM ERROR: ..." line lands there
_LIBRARY_FILE = "model.so"


class FinalBuildCrashed(Exception):
    """The child building the model died by a signal (an LLVM abort, a segfault)."""


class FinalBuildFailed(Exception):
    """The build raised an error (in the child or here); the message is TVM's."""


@dataclass
class Built:
    """What the final build gives: the module the VM runs, and the library file it was loaded
    from (None for an in-process build), kept alive by ``directory``."""

    module: Any
    library_path: str | None = None
    directory: tempfile.TemporaryDirectory | None = None


def forks(target: tvm.target.Target) -> bool:
    """Whether the final build for ``target`` runs in a forked child."""
    return hasattr(os, "fork") and is_cpu(target) and isolation_enabled()


def build(lowered: tvm.IRModule, target: tvm.target.Target) -> Built:
    """Build ``lowered`` (the output of the tvm-sparse pipeline) for ``target``."""
    if not forks(target):
        try:
            return Built(tvm.compile(lowered, target=target, relax_pipeline=None))
        except Exception as err:  # TVM raises its own error types
            raise FinalBuildFailed(last_line(err)) from err
    directory = tempfile.TemporaryDirectory(prefix="tvm-sparse-build-")
    library = os.path.join(directory.name, _LIBRARY_FILE)
    error_file = os.path.join(directory.name, _ERROR_FILE)
    status = _run_forked(lambda: _build_and_export(lowered, target, library), error_file)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        said = _stderr_line(os.path.join(directory.name, _STDERR_FILE))
        directory.cleanup()
        raise FinalBuildCrashed(
            f"the build process died by signal {sig} {name}" + (f": {said}" if said else "")
        )
    if os.WEXITSTATUS(status) != 0 or not os.path.exists(library):
        why = _read(error_file) or f"exit status {os.WEXITSTATUS(status)}"
        directory.cleanup()
        raise FinalBuildFailed(why)
    return Built(tvm.runtime.load_module(library), library, directory)


def _build_and_export(lowered: tvm.IRModule, target: tvm.target.Target, library: str) -> None:
    executable = tvm.compile(lowered, target=target, relax_pipeline=None)
    executable.export_library(library)  # emits the machine code: where LLVM would abort


def _run_forked(work: Callable[[], None], error_file: str) -> int:
    """Run ``work()`` in a forked child; its wait status. The child never returns here: it
    exits 0, or 3 after writing the error's last line to ``error_file``."""
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        # Python 3.12 warns that forking a multi-threaded process may deadlock the child; the
        # threads here (TVM's pool, the check thread) are idle, and the child only runs LLVM
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which ends with os._exit
        code = 0
        try:
            faulthandler.disable()  # a crash is reported by the parent, not as a Python dump
            with open(os.path.join(os.path.dirname(error_file), _STDERR_FILE), "wb") as err:
                os.dup2(err.fileno(), 2)
            work()
        except BaseException as err:  # noqa: BLE001 - reported to the parent through a file
            code = 3
            with contextlib.suppress(Exception), open(error_file, "w") as f:
                f.write(last_line(err))
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C: the child goes too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    return status


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
