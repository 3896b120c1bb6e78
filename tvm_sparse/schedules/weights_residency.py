"""Where a model's weights are when a layer runs again: in the last-level cache, or in DRAM.

Why: the per-layer choice and the tuner time each candidate alone, and a kernel timed alone
finds its weights in L1/L2, where a model's layer does not (its weights were last read a whole
inference ago). So the timer first moves the weights where the model will find them:

- ``"dram"``: flushed from every cache. Right for a model whose weights exceed the last-level
  cache: ResNet-50's 7x7 layers ran 2x slower in the model than timed hot (Zen 4).
- ``"l3"``: L1 and L2 are evicted, the L3 keeps them. Right for a model whose weights fit in
  the L3 with room to spare: it finds them there a whole inference later. Timed "dram" instead,
  the GSC super-sparse CNN (1.1 MB of weights, 32 MB L3, Zen 4) chose a tap-plane conv over
  the flat one (78.6 against 105 us) and CSR over sparse-sparse for its linear (38.6 against
  58.8 us), while in the model the flat conv ran 63 us and the sparse-sparse linear 16 us: the
  choices made with "l3" timings ran the whole network 1.23x faster.

The compile opens one ``weights_in(...)`` block for the whole model, decided by its size
(``weights_in_for``); the tuner decides the same way when told "auto".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar

import numpy as np

from ..machine import cache_bytes

DRAM, L3 = "dram", "l3"
WEIGHTS_IN = (DRAM, L3)

_WEIGHTS_IN: ContextVar[str] = ContextVar("tvm_sparse_weights_in", default=DRAM)


def model_weight_bytes(weights: Iterable[np.ndarray]) -> int:
    """Bytes a model's weights take in its kernels: dense, or CSR (value + index, 8 bytes a
    non-zero) where that is smaller."""
    return sum(min(w.nbytes, 8 * int(np.count_nonzero(w))) for w in weights)


def weights_in_for(weight_bytes: int, llc_bytes: int | None = None) -> str:
    """``"l3"`` when ``weight_bytes`` fit in half the last-level cache (the other half holds the
    activations and other tenants' lines), else ``"dram"`` (also when the cache size is unknown).
    ``llc_bytes`` defaults to this machine's L3 (its L2 where it has none)."""
    llc = llc_bytes if llc_bytes is not None else cache_bytes(3) or cache_bytes(2)
    return L3 if llc and weight_bytes <= llc // 2 else DRAM


@contextlib.contextmanager
def weights_in(location: str) -> Iterator[None]:
    """Within: candidates are timed with their weights in ``location`` (one of ``WEIGHTS_IN``)."""
    if location not in WEIGHTS_IN:
        raise ValueError(f"weights_in must be one of {WEIGHTS_IN}, got {location!r}")
    token = _WEIGHTS_IN.set(location)
    try:
        yield
    finally:
        _WEIGHTS_IN.reset(token)


def current_weights_in() -> str:
    """Where timed weights come from now: "dram" outside a ``weights_in`` block."""
    return _WEIGHTS_IN.get()
