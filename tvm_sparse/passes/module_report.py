"""The sparsity report as an IRModule attribute, and how to read it after ``tvm.compile``.

The sparsify passes keep the report (``tvm_sparse.report.Report``) as JSON in the module
attribute ``tvm_sparse.report``, as mlc-llm's memory estimate keeps its numbers: any pass, test
or user holding the module reads it with ``read_report(mod)``. ``tvm.compile`` returns an
executable, not the module, so ``capture_report()`` watches the module go through the pipeline
(a TVM pass instrument) and keeps the last report it saw; ``compile_tvm`` uses it the same way a
user of ``relax_pipeline="sparse"`` does::

    with capture_report() as captured:
        ex = tvm.compile(mod, target, relax_pipeline="sparse")
    print(captured.report.table())
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tvm

from ..report import Report

REPORT_ATTR = "tvm_sparse.report"


def attach_report(mod: tvm.IRModule, report: Report) -> tvm.IRModule:
    """``mod`` carrying ``report``."""
    return mod.with_attr(REPORT_ATTR, report.to_json(indent=None))


def read_report(mod: tvm.IRModule) -> Report | None:
    """The report ``mod`` carries, or None when no sparsify pass has run on it."""
    text = mod.attrs.get(REPORT_ATTR) if mod.attrs is not None else None
    return None if text is None else Report.from_json(str(text))


@tvm.instrument.pass_instrument
class CaptureReport:
    """Keeps the report of the last module a pass returned with one."""

    def __init__(self):
        self._json: str | None = None

    def run_after_pass(self, mod: tvm.IRModule, _info: tvm.transform.PassInfo) -> None:
        text = mod.attrs.get(REPORT_ATTR) if mod.attrs is not None else None
        if text is not None:
            self._json = str(text)

    @property
    def report(self) -> Report | None:
        return None if self._json is None else Report.from_json(self._json)


@contextlib.contextmanager
def capture_report() -> Iterator[CaptureReport]:
    """A pass context like the current one that also captures the report (see the module doc)."""
    capture = CaptureReport()
    current = tvm.transform.PassContext.current()
    context = tvm.transform.PassContext(
        opt_level=current.opt_level,
        required_pass=list(current.required_pass),
        disabled_pass=list(current.disabled_pass),
        instruments=[*current.instruments, capture],
        config=dict(current.config),
    )
    with context:
        yield capture
