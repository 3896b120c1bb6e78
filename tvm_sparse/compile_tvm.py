"""The TVM backends (llvm, cuda): import, the sparse pipeline, ``tvm.compile``, a runnable module.

``compiler.compile`` sends every target but the FPGA here; the FPGA backend calls it too, for the
CPU module its C simulation is checked against.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import tvm

from .errors import TvmSparseError
from .frontend import ImportedModel, import_model
from .module import CompiledModule
from .passes.module_report import capture_report
from .passes.pipeline import SparsifyOptions, build_pipeline
from .phases import timing_phases
from .schedules import tuning
from .target import resolve_target

log = logging.getLogger("tvm_sparse")

OPTIONS = set(SparsifyOptions.__dataclass_fields__) - {"layer_names"}


def _records_dir(tuning_records: str | os.PathLike | None) -> str | None:
    """The tuning records directory, checked before a long compile starts."""
    if tuning_records is None:
        return None
    path = os.fspath(tuning_records)
    if not os.path.isdir(path):
        raise TvmSparseError(f"{path}: tuning records directory not found")
    return path


def model_name(imported: ImportedModel) -> str:
    return os.path.basename(imported.source) if imported.source else "<model>"


def compile_tvm(
    model: Any,
    target: Any = "llvm",
    *,
    tuning_records: str | os.PathLike | None = None,
    input_shapes: str | dict | None = None,
    **options: Any,
) -> CompiledModule:
    """Compile a model for an llvm or cuda target (``compiler.compile`` documents the options)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise TypeError(f"unknown compile option(s): {sorted(unknown)}; known: {sorted(OPTIONS)}")
    tgt = resolve_target(target)
    with timing_phases() as phases:
        with phases.phase("Import"):
            imported = import_model(model, input_shapes)
        sparsify_options = SparsifyOptions(layer_names=imported.weighted_nodes, **options)
        pipeline = build_pipeline(tgt, sparsify_options, _records_dir(tuning_records))
        start = time.perf_counter()
        log.info("compiling %s for %s", imported.source, tgt)
        try:
            # tuned kernel knobs and choices; the report, as a user of the TVM plugin reads it
            with tuning.use_records(tuning_records), capture_report() as captured:
                executable = tvm.compile(imported.mod, target=tgt, relax_pipeline=pipeline)
        except TvmSparseError:
            raise
        except Exception as err:
            lines = str(err).strip().splitlines()
            raise TvmSparseError(
                f"{imported.source}: TVM failed to compile: {lines[-1] if lines else err}"
            ) from err
        elapsed = time.perf_counter() - start
        in_pipeline = sum(s for n, s in phases.seconds.items() if ": " not in n and n != "Import")
        phases.add("Build (TIR lowering + LLVM)", elapsed - in_pipeline)
    log.info("compiled in %.1f s\n%s", elapsed, phases.table())
    report = dataclasses.replace(captured.report, model=model_name(imported))
    return CompiledModule(
        executable,
        imported.inputs,
        report,
        str(tgt.kind.name),
        guards=imported.guards,
        compile_seconds=phases,
    )
