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

from . import final_build
from .errors import TvmSparseError, named_failures
from .frontend import ImportedModel
from .module import CompiledModule
from .passes.module_report import capture_report
from .passes.pipeline import SparsifyOptions, build_pipeline
from .phases import timing_phases
from .schedules import tuning
from .schedules.isolation import checked_by_final_build
from .target import resolve_target
from .torch_frontend import import_any

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


def applicable_records(
    records_dir: str | None, imported: ImportedModel, tgt
) -> tuple[str | None, str | None]:
    """(``records_dir``, the machine whose records to look up) when they apply to this model
    here, else (None, None) with a warning: records measured on another machine, or records
    that tune's end-to-end check found did not make this model faster (``tuning.model_check``)."""
    if records_dir is None:
        return None, None
    kernels = tuning.KernelRecords(records_dir)
    machine = tuning.records_machine(kernels, tgt)
    if machine is None:
        log.warning("%s", tuning.foreign_records_message(records_dir, kernels, tgt))
        return None, None
    check = tuning.read_check(records_dir, tuning.model_fingerprint(imported.mod, tgt, machine))
    if check is not None and not check.kept:
        log.warning(
            "%s: not applied to %s: tune's end-to-end check found the model no faster with "
            "them (%.3f ms untuned, %.3f ms tuned)",
            records_dir, model_name(imported), check.untuned_ms, check.tuned_ms,
        )  # fmt: skip
        return None, None
    return records_dir, machine


def model_name(imported: ImportedModel) -> str:
    return os.path.basename(imported.source) if imported.source else "<model>"


def compile_tvm(
    model: Any,
    target: Any = "llvm",
    *,
    tuning_records: str | os.PathLike | None = None,
    input_shapes: str | dict | None = None,
    example_inputs: Any = None,
    **options: Any,
) -> CompiledModule:
    """Compile a model for an llvm or cuda target (``compiler.compile`` documents the options)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise TypeError(f"unknown compile option(s): {sorted(unknown)}; known: {sorted(OPTIONS)}")
    tgt = resolve_target(target)
    with timing_phases() as phases:
        with phases.phase("Import"):
            imported = import_any(model, input_shapes, example_inputs)
        sparsify_options = SparsifyOptions(layer_names=imported.weighted_nodes, **options)
        records = applicable_records(_records_dir(tuning_records), imported, tgt)
        pipeline = build_pipeline(tgt, sparsify_options, records[0])
        log.info("compiling %s for %s", imported.source, tgt)
        with named_failures(f"{model_name(imported)}: compile"):
            built, captured = _build(imported, tgt, pipeline, records, phases)
    log.info("compiled in %.1f s\n" + phases.table().replace("%", "%%"), phases.total())
    report = dataclasses.replace(captured.report, model=model_name(imported))
    return CompiledModule(
        built.module,
        imported.inputs,
        report,
        str(tgt.kind.name),
        guards=imported.guards,
        compile_seconds=phases,
        library=built,
    )


def _build(imported: ImportedModel, tgt, pipeline, records: tuple[str | None, str | None], phases):
    """The pipeline, then the final build (``final_build``); when the final build fails or its
    process crashes, both again with every chosen kernel compile-checked first, so the kernel
    LLVM cannot take is dropped. ``records``: (directory, machine) from ``applicable_records``.
    Returns the build and the captured report."""
    forked = final_build.forks(tgt)
    for attempt in ("forked", "checked") if forked else ("in-process",):
        # tuned kernel knobs and choices; the report, as a user of the TVM plugin reads it
        with tuning.use_records(*records), capture_report() as captured, \
                checked_by_final_build(attempt == "forked"):  # fmt: skip
            try:
                with tgt:
                    lowered = pipeline(imported.mod)
            except TvmSparseError:
                raise
            except Exception as err:
                raise TvmSparseError(
                    f"{imported.source}: TVM failed to compile: {final_build.last_line(err)}"
                ) from err
        start = time.perf_counter()
        try:
            built = final_build.build(lowered, tgt)
        except final_build.FinalBuildFailed as err:
            if attempt == "forked":  # a kernel LLVM refuses: the checked attempt drops it
                log.warning("%s: the build failed (%s); compiling again with every kernel "
                            "checked first", imported.source, err)  # fmt: skip
                continue
            raise TvmSparseError(f"{imported.source}: TVM failed to compile: {err}") from err
        except final_build.FinalBuildCrashed as err:
            if attempt == "checked":
                raise TvmSparseError(
                    f"{imported.source}: TVM's code generator crashed building the model ({err})"
                    " although every tvm-sparse kernel in it compiles alone: the crash is in a "
                    "part TVM lowers itself"
                ) from err
            log.warning("%s: %s; compiling again with every kernel checked first",
                        imported.source, err)  # fmt: skip
            continue
        finally:
            phases.add("Build (TIR lowering + LLVM)", time.perf_counter() - start)
        return built, captured
    raise AssertionError("unreachable")
