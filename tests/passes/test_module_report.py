"""The report as a module attribute: read back as written, absent where no sparsify pass ran, and
captured through ``tvm.compile`` without changing the caller's pass context."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_sparse.passes.module_report import (
    REPORT_ATTR,
    CaptureReport,
    attach_report,
    capture_report,
    read_report,
)
from tvm_sparse.report import LayerReport, Report


def _module() -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    return bb.get()


def _report() -> Report:
    row = LayerReport("fc0", "linear", [2, 4], [4, 4], [2, 4], 32, 0.25, 4)
    row.chosen, row.reason, row.estimated_ms = "csr", "estimated 2.0x faster", {"csr": 0.5}
    return Report("", "llvm", [row])


def test_a_module_without_a_sparsify_pass_has_no_report():
    assert read_report(_module()) is None


def test_the_report_reads_back_as_it_was_attached():
    mod = attach_report(_module(), _report())
    assert REPORT_ATTR in mod.attrs
    assert read_report(mod) == _report()


def test_capture_keeps_the_last_report_a_pass_returned():
    @tvm.transform.module_pass(opt_level=0, name="test.AttachReport")
    def attach(mod, _ctx):
        return attach_report(mod, _report())

    with capture_report() as captured:
        tvm.transform.Sequential([attach, relax.transform.DeadCodeElimination()])(_module())
    assert captured.report == _report()
    assert CaptureReport().report is None  # nothing seen yet


def test_capture_keeps_the_callers_pass_context():
    with tvm.transform.PassContext(opt_level=3, disabled_pass=["FoldConstant"]):
        with capture_report():
            inner = tvm.transform.PassContext.current()
            assert inner.opt_level == 3
            assert list(inner.disabled_pass) == ["FoldConstant"]
