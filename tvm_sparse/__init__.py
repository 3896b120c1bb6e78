"""tvm-sparse: a compiler for sparse neural networks on Apache TVM.

Public API: ``compile(model, target)`` -> module with ``.run``, ``.export``, ``.report``;
``load(path)`` for exported modules; ``analyze(model)`` for the sparsity report alone.

Names are imported lazily: ``import tvm`` loads our TVM plugin (``tvm_sparse.codegen.plugin``)
through this package, and that must not import TVM-heavy modules while TVM itself is importing.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "compiler",
    "compile": "compiler",
    "CompiledModule": "module",
    "load": "module",
    "LayerReport": "report",
    "Report": "report",
    "ArtifactError": "errors",
    "InputShapeError": "errors",
    "ModelLoadError": "errors",
    "RunInputError": "errors",
    "TargetError": "errors",
    "TvmSparseError": "errors",
    "UnsupportedModelError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tvm_sparse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
