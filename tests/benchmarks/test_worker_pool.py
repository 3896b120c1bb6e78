"""The worker pool of the conformance runner and the fuzz harness: a job that kills its worker
or overruns is reported, the worker replaced, and the other jobs still run."""

from __future__ import annotations

import os
import sys
import time

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, os.path.abspath(BENCHMARKS))

from worker_pool import run_jobs, serve  # noqa: E402


def _job(kind: str) -> str:
    if kind == "abort":
        os.abort()  # what an LLVM abort does to the process
    if kind == "hang":
        time.sleep(60)
    return f"done {kind}"


def _main(conn) -> None:
    serve(conn, _job)


def test_crash_and_timeout_are_reported_and_the_rest_runs():
    jobs = ["ok1", "abort", "ok2", "hang", "ok3"]
    results = run_jobs(jobs, _main, (), workers=2, timeout_s=4,
                       failed=lambda job, kind, detail, s: (job, kind, detail))  # fmt: skip
    by_job = {r[0] if isinstance(r, tuple) else r.split()[1]: r for r in results}
    assert len(results) == 5
    assert by_job["abort"][1] == "crash" and "SIGABRT" in by_job["abort"][2]
    assert by_job["hang"][1] == "timeout"
    assert {by_job[k] for k in ("ok1", "ok2", "ok3")} == {"done ok1", "done ok2", "done ok3"}
