"""The TVM plugin: ``import tvm`` runs this through the ``tvm.backends`` entry point.

It registers the Relax pipeline ``"sparse"``, so any TVM user with tvm-sparse installed can write
``tvm.compile(mod, target, relax_pipeline="sparse")`` (``passes/pipeline.py`` says how to read the
report of such a compile). It must stay cheap and must not import ``tvm_sparse`` eagerly: it runs
inside ``import tvm``.
"""

from __future__ import annotations

PIPELINE_NAME = "sparse"


def _sparse_pipeline(**options):
    """Pipeline factory for ``relax.get_pipeline("sparse", sparse=..., measure=...)``."""
    from ..passes.pipeline import SparsifyOptions, build_pipeline

    return build_pipeline(options=SparsifyOptions(**options))


def register() -> None:
    """Entry point: register the pipeline once (idempotent across repeated imports)."""
    from tvm.relax import pipeline as tvm_pipeline

    if PIPELINE_NAME not in tvm_pipeline.PIPELINE_MAP:
        tvm_pipeline.register_pipeline(PIPELINE_NAME)(_sparse_pipeline)
