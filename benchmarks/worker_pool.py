"""Jobs run one at a time in spawned worker processes; a worker that dies or overruns is
replaced and its job reported as such. Shared by the conformance runner and the fuzz harness:
a crash (segfault, LLVM abort) in one job must not take the run down.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from typing import Any


def serve(conn, run: Callable[[Any], Any]) -> None:
    """A worker's loop: ``run`` each job received until ``None``."""
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(run(job))


class Worker:
    """A process that runs one job at a time; ``target(conn, *args)`` is its main."""

    def __init__(self, ctx, target: Callable, args: tuple = ()):
        self._ctx, self._target, self._args = ctx, target, args
        self._start()

    def _start(self) -> None:
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=self._target, args=(child, *self._args), daemon=True)
        self.proc.start()
        child.close()
        self.job: Any = None
        self.started = 0.0

    def submit(self, job: Any) -> None:
        self.job, self.started = job, time.perf_counter()
        self.conn.send(job)

    def poll(self, timeout_s: float, failed: Callable[[Any, str, str, float], Any]) -> Any:
        """The finished job's result; ``failed(job, "crash" | "timeout", detail, seconds)`` when
        the worker died or overran (the worker is replaced); None while the job runs."""
        job, elapsed = self.job, time.perf_counter() - self.started
        try:
            if self.conn.poll(0):
                result = self.conn.recv()
                self.job = None
                return result
        except (EOFError, OSError):
            pass
        if self.proc.is_alive() and elapsed <= timeout_s:
            return None
        code = self.proc.exitcode
        self.proc.kill()
        self.proc.join()
        self._start()
        if code is None:
            return failed(job, "timeout", f"over {timeout_s:.0f} s", elapsed)
        return failed(job, "crash", f"worker died (exit {code}{signal_name(code)})", elapsed)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()


def signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f", {signal.Signals(-code).name}"
        except ValueError:
            return ""
    return ""


def run_jobs(jobs: list, target: Callable, args: tuple, workers: int, timeout_s: float,
             failed: Callable[[Any, str, str, float], Any], progress=None) -> list:  # fmt: skip
    """Every job through a pool of ``workers`` spawned processes; results in finishing order."""
    ctx = mp.get_context("spawn")
    todo = list(jobs)
    pool = [Worker(ctx, target, args) for _ in range(max(1, min(workers, len(todo))))]
    results: list = []
    try:
        while todo or any(w.job is not None for w in pool):
            for worker in pool:
                if worker.job is None and todo:
                    worker.submit(todo.pop(0))
                if worker.job is not None:
                    result = worker.poll(timeout_s, failed)
                    if result is not None:
                        results.append(result)
                        if progress:
                            progress(result, len(results))
            time.sleep(0.005)
    finally:
        for worker in pool:
            worker.close()
    return results
