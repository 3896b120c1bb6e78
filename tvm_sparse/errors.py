"""Exceptions of tvm-sparse. Each carries what the user needs to find the problem."""

from __future__ import annotations


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


class InputShapeError(TvmSparseError):
    """Dynamic input shapes without --input-shapes, or a malformed shape spec."""


class RunInputError(TvmSparseError):
    """Inputs at run time do not match the compiled module (count, shape or dtype)."""


class TargetError(TvmSparseError):
    """The target cannot be understood or built for."""


class ArtifactError(TvmSparseError):
    """An exported module or its manifest is missing or inconsistent."""
