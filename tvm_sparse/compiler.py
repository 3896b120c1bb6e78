"""``compile()`` and ``analyze()``: the public entry points; each target goes to its backend."""

from __future__ import annotations

import os
from typing import Any

from .codegen.fpga.backend import FpgaProject, compile_fpga
from .codegen.fpga.target import is_fpga_target
from .compile_tvm import OPTIONS, compile_tvm, model_name
from .errors import named_failures
from .module import CompiledModule
from .passes.analyze_sparsity import analyze_function, layer_report
from .passes.canonicalize import canonicalize
from .report import Report
from .torch_frontend import import_any, is_torch_model, torch_to_onnx


def analyze(
    model: Any, input_shapes: str | dict | None = None, *, example_inputs: Any = None
) -> Report:
    """The sparsity report of a model without compiling it (a torch module needs
    ``example_inputs``)."""
    imported = import_any(model, input_shapes, example_inputs)
    with named_failures(f"{model_name(imported)}: analysis"):
        mod = canonicalize(imported.mod)
        rows = [
            layer_report(layer, act)
            for layer, act in analyze_function(mod["main"], imported.weighted_nodes)
        ]
    for row in rows:
        row.chosen, row.reason = "-", "analysis only"
    return Report(model_name(imported), "", rows)


def compile(  # noqa: A001 - the public name mirrors tvm.compile
    model: Any,
    target: Any = "llvm",
    *,
    tuning_records: str | os.PathLike | None = None,
    input_shapes: str | dict | None = None,
    example_inputs: Any = None,
    **options: Any,
) -> CompiledModule | FpgaProject:
    """Compile a model into a runnable module: an ONNX path, ``onnx.ModelProto``, Relax
    IRModule, or a ``torch.nn.Module`` with ``example_inputs=(tensor, ...)`` (through
    ``torch.export`` and TVM's importer, the ONNX exporter as fallback; pruning masks and
    eval-mode BatchNorm folded: ``tvm_sparse.torch_frontend``).

    ``target="fpga"`` (or a dict with ``kind: fpga``) returns an HLS project instead
    (``tvm_sparse.codegen.fpga.FpgaProject``; ``output_dir=`` writes it and runs C simulation).

    Options: ``sparse`` (default True; False compiles the dense baseline with the same dense
    kernels), ``measure`` ("auto" by default: time dense and the best sparse candidates of each
    layer on this machine, cached on disk; True: time every candidate; False: trust the cost
    model), ``strict_nan`` (default False: a kernel that skips zero weights makes
    ``0 x NaN`` and ``0 x Inf`` contribute 0, where dense math gives NaN; True keeps dense math's
    NaN / Inf results: linear layers keep their sparse kernels plus a check of each input row,
    conv layers get dense kernels).
    """
    unknown = set(options) - OPTIONS - {"output_dir"}
    if unknown:
        known = sorted(OPTIONS | {"output_dir"})
        raise TypeError(f"unknown compile option(s): {sorted(unknown)}; known: {known}")
    if is_fpga_target(target):
        ignored = sorted(set(options) - {"output_dir"}) + (
            ["tuning_records"] if tuning_records else []
        )
        if ignored:  # the FPGA backend packs every layer itself: no kernel choice to steer
            raise TypeError(
                f"compile option(s) {ignored} do not apply to the fpga target (it packs every "
                "layer for its HLS engines; there is no kernel choice, timing or tuning)"
            )
        if is_torch_model(model):  # the HLS flow re-runs the model as its golden reference
            model = torch_to_onnx(model, example_inputs)
        return compile_fpga(
            model, target, input_shapes=input_shapes, output_dir=options.pop("output_dir", None)
        )
    if "output_dir" in options:
        raise TypeError("output_dir is for the fpga target; CPU/CUDA modules use .export(path)")
    return compile_tvm(model, target, tuning_records=tuning_records, input_shapes=input_shapes,
                       example_inputs=example_inputs, **options)  # fmt: skip
