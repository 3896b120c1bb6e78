"""Exceptions of tvm-sparse. Each carries what the user needs to find the problem."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TvmSparseError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ModelLoadError(TvmSparseError):
    """The model file is missing, unreadable, not ONNX or truncated."""


class UnsupportedModelError(TvmSparseError):
    """TVM's frontend cannot import an op of the model."""

    def __init__(self, message: str, node: str | None = None, op: str | None = None):
        super().__init__(message)
        self.node = node
        self.op = op
        self.frontend_detail: str | None = None  # TVM's own error, when its importer failed


class InputShapeError(TvmSparseError):
    """Dynamic input shapes without --input-shapes, or a malformed shape spec."""


class RunInputError(TvmSparseError):
    """Inputs at run time do not match the compiled module (count, shape or dtype)."""


class RunError(TvmSparseError):
    """The compiled model stopped during a run: one of its run-time checks failed on these
    inputs (a gather index out of range, for instance)."""


class TargetError(TvmSparseError):
    """The target cannot be understood or built for."""


class ArtifactError(TvmSparseError):
    """An exported module or its manifest is missing or inconsistent."""


class CompileError(TvmSparseError):
    """A compile step failed on this model in a way no check before it named (a TVM pass
    rejecting a damaged model, for instance): the step and the failed check, as one line."""


def error_detail(err: BaseException, limit: int = 240) -> str:
    """The line of an exception that names the problem. TVM appends the IR it failed on
    (script lines, ending in "# Metadata omitted ...") after the check that failed, so the last
    line is often not it: the first line naming an error or a failed check is."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("#", "@", "class ", "def ", "R.", "T."))]
    marked = [ln for ln in lines if "Error" in ln or "Check failed" in ln or "error:" in ln]
    text = (marked or lines or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def named_failures(what: str) -> Iterator[None]:
    """Turn any failure inside into a ``CompileError`` naming ``what`` failed and why (our own
    errors, interrupts and memory exhaustion pass through). Found by fuzzing: a damaged model
    that TVM's importer accepts can still trip a check in a later TVM pass."""
    try:
        yield
    except (TvmSparseError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - the point: no bare traceback reaches the user
        raise CompileError(f"{what} failed: {type(err).__name__}: {error_detail(err)}") from err
