"""Where candidate kernels are compiled and timed: in the candidate worker, so nothing a
candidate does can take the compile down.

``run_isolated`` sends a layer's candidates to the worker process (``candidate_worker``), started
on first use and kept for the next layers and compiles (it exits by itself when idle). When the
worker dies (an LLVM abort, a segfault, a kill) or a step outlasts the timeout, the candidate it
was on is marked failed, with the signal and the last lines the worker wrote to stderr, and a
fresh worker carries on with the others. ``TVM_SPARSE_ISOLATE=0`` compiles and times in this
process instead (for debugging: an abort then ends the compile, as it used to).

``compile_check`` compiles one kernel there (once per distinct PrimFunc and target: the result
is cached), for kernels that reach the final build without being timed.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

import numpy as np
import tvm

from ..context import bound
from ..phases import record
from . import measure_cache
from .candidate_run import COMPILE, Outcome, run_candidates
from .candidate_worker import (
    ChannelClosed,
    ChannelTimeout,
    read_message,
    to_job,
    write_message,
)
from .kernel import KernelCall
from .weights_residency import DRAM

log = logging.getLogger("tvm_sparse")

ISOLATE_ENV = "TVM_SPARSE_ISOLATE"
TIMEOUT_ENV = "TVM_SPARSE_CANDIDATE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 120.0  # per compile or timed call: generous, LLVM is slow on big kernels
STARTUP_TIMEOUT_S = 120.0  # for a fresh worker to import TVM (seconds on a busy machine)
_STDERR_TAIL_BYTES = 8192
# the directory that holds the tvm_sparse package: the worker imports this very copy
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tvm_sparse.schedules.candidate_worker import main; sys.exit(main())"
)


class _StepClock:
    """Splits a request's wall time into candidate compiling and timing (the phase report)."""

    _NAMES = {COMPILE: "candidate builds", "worker start": "candidate worker start"}

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        if phase:
            record(f"Sparsify: {self._NAMES.get(phase, 'candidate timing')}", now - self.last)
        self.last = now


class WorkerUnavailable(Exception):
    """The worker could not be started (or died before doing anything, twice)."""


class _WorkerDied(Exception):
    def __init__(self, step: tuple[str, str] | None, why: str):
        super().__init__(why)
        self.step, self.why = step, why


def isolation_enabled() -> bool:
    """False when ``TVM_SPARSE_ISOLATE=0`` asks for the in-process path."""
    return os.environ.get(ISOLATE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def describe_exit(returncode: int | None) -> str:
    """``signal 6 SIGABRT`` or ``exit code 3``."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {-returncode} {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def stderr_gist(text: str, limit: int = 240) -> str:
    """The line of a dead worker's stderr that says why: LLVM's fatal error when there is one,
    else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no output"
    fatal = [ln for ln in lines if "LLVM ERROR" in ln or "Fatal" in ln or "Error" in ln]
    line = (fatal or lines)[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


class WorkerRunner:
    """The candidate worker process, started on first use and again after each death."""

    def __init__(self, timeout_s: float | None = None):
        self.timeout_s = timeout_s
        self.starts = 0  # how many workers were started (tests check restarts)
        self._proc: subprocess.Popen | None = None
        self._stderr = None
        self._env_key: tuple | None = None
        self._ready = False
        self._lock = threading.Lock()
        atexit.register(self.close)

    def run(self, calls: dict[str, KernelCall], target: tvm.target.Target,
            x: np.ndarray | None, rounds: int, weights_in: str = DRAM
            ) -> dict[str, Outcome]:  # fmt: skip
        """``run_candidates`` in the worker; a candidate that kills it gets a failed outcome."""
        jobs = {name: to_job(name, call) for name, call in calls.items()}
        outcomes: dict[str, Outcome] = {}
        silent_deaths = 0
        with self._lock:
            while jobs:
                try:
                    outcomes.update(
                        self._request(list(jobs.values()), target, x, rounds, weights_in)
                    )
                    break
                except _WorkerDied as died:
                    if died.step is None:  # before any candidate: an idle exit, or no start
                        silent_deaths += 1
                        if silent_deaths > 1:
                            raise WorkerUnavailable(died.why) from None
                        continue
                    name = died.step[0]
                    outcomes[name] = Outcome(error=died.why)
                    jobs.pop(name, None)
        return outcomes

    def _request(self, jobs: list, target, x, rounds, weights_in: str) -> dict[str, Outcome]:
        proc = self._ensure_started()
        offset = self._stderr.seek(0, os.SEEK_END)
        timeout = self.timeout_s or _timeout_s()
        step = None
        clock = _StepClock()
        try:
            write_message(proc.stdin.fileno(), {
                "kernels": jobs, "target": str(target), "x": x, "rounds": rounds,
                "weights_in": weights_in,
            })  # fmt: skip
            if not self._ready:
                read_message(proc.stdout.fileno(), max(timeout, STARTUP_TIMEOUT_S))  # ("ready",)
                self._ready = True
                clock.lap("worker start")
            while True:
                message = read_message(proc.stdout.fileno(), timeout)
                clock.lap(step[1] if step else "")
                if message[0] == "step":
                    step = (message[1], message[2])
                    continue
                return message[1]
        except ChannelTimeout:
            self._kill()
            what = "starting" if step is None else "compiling" if step[1] == COMPILE else "running"
            raise _WorkerDied(step, f"timed out after {timeout:.0f} s {what} it") from None
        except (ChannelClosed, OSError):
            raise _WorkerDied(step, self._death(step, offset)) from None
        except BaseException:
            self._kill()  # interrupted mid-request: the worker's state is unknown
            raise

    def _death(self, step: tuple[str, str] | None, offset: int) -> str:
        proc = self._proc
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill()
            code = proc.returncode
        self._stderr.seek(max(offset, self._stderr.seek(0, os.SEEK_END) - _STDERR_TAIL_BYTES))
        tail = self._stderr.read().decode(errors="replace")
        log.debug("candidate worker died (%s); its stderr ended:\n%s", describe_exit(code), tail)
        self._proc = None
        phase = None if step is None else step[1]
        what = {None: "stopped before any candidate", COMPILE: "crashed the compiler"}.get(
            phase, "crashed running"
        )
        return f"{what} ({describe_exit(code)}: {stderr_gist(tail)})"

    def start(self) -> None:
        """Start the worker unless it runs (it imports TVM meanwhile: nothing waits for it)."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen:
        env_key = (os.environ.get("TVM_NUM_THREADS"), sys.executable)
        if self._proc is not None and (self._proc.poll() is not None or env_key != self._env_key):
            self.close()
        if self._proc is None:
            self._start(env_key)
        return self._proc

    def _start(self, env_key: tuple) -> None:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(prefix="tvm-sparse-worker-")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,  # and this process's environment: TVM_NUM_THREADS too
            )
        except OSError as err:
            raise WorkerUnavailable(f"cannot start {sys.executable}: {err}") from err
        self._env_key, self._ready = env_key, False
        self.starts += 1

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the worker (it also stops by itself when idle, or when this process ends)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


_SHARED: WorkerRunner | None = None
_UNAVAILABLE: list[str] = []  # why the worker could not start, once that happened


def shared_worker() -> WorkerRunner:
    """The process-wide worker (started on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = WorkerRunner()
    return _SHARED


def prestart() -> None:
    """Start the worker now, without waiting: it imports TVM while this process builds the
    first candidates (the sparsify pass calls this before its first layer)."""
    if isolation_enabled() and not _UNAVAILABLE:
        try:
            shared_worker().start()
        except WorkerUnavailable:
            pass  # run_isolated says so, and falls back, when a candidate needs it


def run_isolated(calls: dict[str, KernelCall], target: tvm.target.Target,
                 x: np.ndarray | None, rounds: int, weights_in: str = DRAM
                 ) -> dict[str, Outcome]:  # fmt: skip
    """Compile ``calls`` and, with an input ``x``, time them in ``rounds`` turns with their
    weights in ``weights_in`` (``run_candidates``), in the worker (or here with
    ``TVM_SPARSE_ISOLATE=0``, or when the worker cannot start at all)."""
    if not calls:
        return {}
    if isolation_enabled() and not _UNAVAILABLE:
        try:
            return shared_worker().run(calls, target, x, rounds, weights_in)
        except WorkerUnavailable as err:
            _UNAVAILABLE.append(str(err))
            log.warning("the candidate worker is unavailable (%s): candidate kernels are "
                        "compiled in this process from now on", err)  # fmt: skip
    return run_candidates(calls, target, x, rounds, weights_in=weights_in)


# compile checks that failed in this process: compile key -> why (successes go to the cache)
_COMPILE_FAILURES: dict[str, str] = {}


def mark_compiled(kernel: KernelCall, target: tvm.target.Target) -> None:
    """Remember that ``kernel`` compiled (it was timed in the worker): no check needed."""
    measure_cache.put(measure_cache.compile_key(kernel, target), 0.0)


# Set while a compile whose final build runs in a forked child chooses its kernels
# (``final_build``): that build compiles every kernel anyway, so checking each one here first
# would compile it twice; if the child crashes, the compile runs again with the checks on.
_CHECKED_BY_FINAL_BUILD = contextvars.ContextVar("tvm_sparse_checked_by_final_build", default=False)


def checked_by_final_build(enabled: bool = True) -> AbstractContextManager[bool]:
    """Within: ``compile_check`` answers "compiles" at once (see ``_CHECKED_BY_FINAL_BUILD``)."""
    return bound(_CHECKED_BY_FINAL_BUILD, enabled)


def _known_check(key: str) -> tuple[bool, str | None]:
    """(whether the compile check of ``key`` is already answered, its answer); its callers
    answer ``_unchecked()`` cases before computing the key."""
    if key in _COMPILE_FAILURES:
        return True, _COMPILE_FAILURES[key]
    if _CHECKED_BY_FINAL_BUILD.get() or measure_cache.get(key) is not None:
        return True, None
    return False, None


def compile_check(name: str, kernel: KernelCall, target: tvm.target.Target) -> str | None:
    """None when ``kernel`` compiles (tried in the worker, once per distinct kernel), else why
    not: whoever swaps a chosen kernel for another (tuned knobs, a relayout) checks it here
    first. In-process (``TVM_SPARSE_ISOLATE=0``) there is nothing to protect: no check."""
    if _unchecked():
        return None
    key = measure_cache.compile_key(kernel, target)
    known, why = _known_check(key)
    if known:
        return why
    outcome = run_isolated({name: kernel}, target, None, 0)[name]
    if outcome.ok:
        measure_cache.put(key, 0.0)
        return None
    _COMPILE_FAILURES[key] = outcome.error
    return outcome.error


def compile_check_known(kernel: KernelCall, target: tvm.target.Target) -> bool:
    """Whether ``compile_check`` would answer at once (checked before, or no isolation)."""
    if _unchecked():
        return True
    return _known_check(measure_cache.compile_key(kernel, target))[0]


def _unchecked() -> bool:
    """No compile check here: in-process (nothing to protect), or the final build checks and
    no kernel has failed a check in this process (a known failure is still refused)."""
    if not isolation_enabled():
        return True
    return _CHECKED_BY_FINAL_BUILD.get() and not _COMPILE_FAILURES


_CHECKER: list[ThreadPoolExecutor] = []


def compile_check_later(name: str, kernel: KernelCall, target: tvm.target.Target) -> Future:
    """``compile_check`` on a background thread: the worker compiles while this process builds
    the next layers' kernels (its Future gives None, or why the kernel failed)."""
    if not _CHECKER:
        _CHECKER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvm-sparse-check"))
    # in this compile's context: its phase report counts the check's worker time too
    context = contextvars.copy_context()
    return _CHECKER[0].submit(context.run, compile_check, name, kernel, target)
