"""``compile()`` and ``analyze()``: the public entry points, composed from the pipeline phases."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import tvm

from .errors import TvmSparseError
from .frontend import ImportedModel, import_model
from .module import CompiledModule
from .passes.analyze_sparsity import analyze_function, layer_report
from .passes.canonicalize import canonicalize
from .passes.pipeline import Sparsify, SparsifyOptions, build_pipeline
from .report import Report
from .schedules import tuning
from .target import resolve_target

log = logging.getLogger("tvm_sparse")

_OPTIONS = (set(SparsifyOptions.__dataclass_fields__) - {"layer_names"}) | {"output_dir"}


def _records_dir(tuning_records: str | os.PathLike | None) -> str | None:
    """The tuning records directory, checked before a long compile starts."""
    if tuning_records is None:
        return None
    path = os.fspath(tuning_records)
    if not os.path.isdir(path):
        raise TvmSparseError(f"{path}: tuning records directory not found")
    return path


def _model_name(imported: ImportedModel) -> str:
    return os.path.basename(imported.source) if imported.source else "<model>"


def analyze(model: Any, input_shapes: str | dict | None = None) -> Report:
    """The sparsity report of a model without compiling it."""
    imported = import_model(model, input_shapes)
    mod = canonicalize(imported.mod)
    rows = [
        layer_report(layer, act)
        for layer, act in analyze_function(mod["main"], imported.weighted_nodes)
    ]
    for row in rows:
        row.chosen, row.reason = "-", "analysis only"
    return Report(_model_name(imported), "", rows)


def compile(  # noqa: A001 - the public name mirrors tvm.compile
    model: Any,
    target: Any = "llvm",
    *,
    tuning_records: str | os.PathLike | None = None,
    input_shapes: str | dict | None = None,
    **options: Any,
) -> CompiledModule:
    """Compile a model (ONNX path, ModelProto or Relax IRModule) into a runnable module.

    ``target="fpga"`` (or a dict with ``kind: fpga``) returns an HLS project instead
    (``tvm_sparse.codegen.fpga.FpgaProject``; ``output_dir=`` writes it and runs C simulation).

    Options: ``sparse`` (default True; False compiles the dense baseline with the same dense
    kernels), ``measure`` ("auto" by default: time dense and the best sparse candidates of each
    layer on this machine, cached on disk; True: time every candidate; False: trust the cost
    model).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"unknown compile option(s): {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    from .codegen.fpga import compile_fpga, is_fpga_target

    if is_fpga_target(target):
        return compile_fpga(
            model, target, input_shapes=input_shapes, output_dir=options.pop("output_dir", None)
        )
    if "output_dir" in options:
        raise TypeError("output_dir is for the fpga target; CPU/CUDA modules use .export(path)")
    tgt = resolve_target(target)
    imported = import_model(model, input_shapes)
    sparsify = Sparsify(SparsifyOptions(layer_names=imported.weighted_nodes, **options))
    pipeline = build_pipeline(tgt, sparsify, _records_dir(tuning_records))
    start = time.perf_counter()
    log.info("compiling %s for %s", imported.source, tgt)
    try:
        with tuning.use_records(tuning_records):  # tuned kernel knobs and choices
            executable = tvm.compile(imported.mod, target=tgt, relax_pipeline=pipeline)
    except TvmSparseError:
        raise
    except Exception as err:
        lines = str(err).strip().splitlines()
        raise TvmSparseError(
            f"{imported.source}: TVM failed to compile: {lines[-1] if lines else err}"
        ) from err
    log.info("compiled in %.1f s", time.perf_counter() - start)
    report = Report(_model_name(imported), str(tgt.kind.name), sparsify.layers)
    return CompiledModule(executable, imported.inputs, report, str(tgt.kind.name))
