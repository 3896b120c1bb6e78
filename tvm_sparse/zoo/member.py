"""One zoo member's record and the export constants every member uses.

A leaf: it imports nothing of the zoo, so the members (cnn.py, gsc.py, bert.py) import from here
and the package's ``__init__`` can import them without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
OPSET = 17
# IR 8: the newest IR onnx 1.14 reads, so DeepSparse 1.8 loads the same file.
IR_VERSION = 8


@dataclass(frozen=True)
class ZooModel:
    """One zoo member: how to export it and how to feed it.

    ``export(path, sparsity, batch, seed, **options)`` writes the pruned model to ``path``;
    ``inputs(batch, seed, **options)`` returns its feeds. ``family`` groups members in reports
    ("cnn", "gsc", "transformer"); ``options`` documents what ``**options`` accepts (e.g.
    ``{"seq": 128}`` for transformers, ``{"image": 224}`` for CNNs) with their defaults.
    """

    name: str
    family: str
    export: Callable[..., str]
    inputs: Callable[..., dict[str, np.ndarray]]
    description: str = ""
    options: dict = field(default_factory=dict)
