"""Where a model's weights are when a layer runs again: in the last-level cache, or in DRAM.

Why: the per-layer choice and the tuner time each candidate alone, and a kernel timed alone
finds its weights in L1/L2, where a model's layer does not (its weights were last read a whole
inference ago). So the timer first moves the weights where the model will find them:

- ``"dram"``: flushed from every cache. Right for a model whose weights exceed the last-level
  cache: ResNet-50's 7x7 layers ran 2x slower in the model than timed hot (Zen 4).
- ``"l3"``: L1 and L2 are evicted, the L3 keeps them. Right for a model whose whole working
  set (weights and activations) fits in the L3 with room to spare: it finds its weights there a
  whole inference later. Timed "dram" instead, the GSC super-sparse CNN (1.1 MB of weights,
  0.3 MB of activations, 32 MB L3, Zen 4) chose a tap-plane conv over the flat one (78.6
  against 105 us) and CSR over sparse-sparse for its linear (38.6 against 58.8 us), while in
  the model the flat conv ran 63 us and the sparse-sparse linear 16 us: the choices made with
  "l3" timings ran the whole network 1.23x faster.

Weights alone do not decide it: ResNet-18 at 90% (9.4 MB of weights, tens of MB of
activations) timed "l3" chose the flat conv for its 256-channel 3x3 layers (493 against 530
us), which then ran 716 us in the model (the tap-plane conv: 577) and the network 3% slower.

The L3 counted is at most ``LLC_CAP``: a server's L3 is shared by its socket and its tenants.

The compile opens one ``weights_in(...)`` block for the whole model, decided by its working set
(``weights_in_for(model_working_set(layers))``); the tuner decides the same way when told "auto".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from contextvars import ContextVar

import numpy as np

from ..context import bound
from ..ir.layers import LayerSpec
from ..machine import cache_bytes

DRAM, L3 = "dram", "l3"
WEIGHTS_IN = (DRAM, L3)

_WEIGHTS_IN: ContextVar[str] = ContextVar("tvm_sparse_weights_in", default=DRAM)
# The most last-level cache a model may count on. A server L3 of hundreds of MiB is shared by
# every core of the socket (and, in a cloud, by other tenants' VMs): sysfs reports all of it,
# while one model on two vCPUs keeps only a share. 32 MiB is the L3 the rule was measured on.
LLC_CAP = 32 << 20


def weight_bytes(weight: np.ndarray) -> int:
    """Bytes a weight takes in its kernel: dense, or CSR (value + index, 8 bytes a non-zero)
    where that is smaller."""
    return min(weight.nbytes, 8 * int(np.count_nonzero(weight)))


def model_working_set(layers: Iterable[LayerSpec]) -> int:
    """Bytes one inference reads and writes at least once: every layer's weight
    (``weight_bytes``) and its float32 input and output (an upper bound where the memory
    planner reuses buffers, a lower one where kernels keep scratch copies)."""
    total = 0
    for layer in layers:
        activations = math.prod(layer.x_shape) + math.prod(layer.out_shape)
        total += weight_bytes(layer.weight) + 4 * activations
    return total


def weights_in_for(working_set: int, llc_bytes: int | None = None) -> str:
    """``"l3"`` when a model's ``working_set`` fits in half the last-level cache (the other half
    is other cores' and tenants'), else ``"dram"`` (also when the cache size is unknown).
    ``llc_bytes`` defaults to this machine's L3 (its L2 where it has none), at most
    ``LLC_CAP``."""
    llc = llc_bytes if llc_bytes is not None else cache_bytes(3) or cache_bytes(2)
    llc = min(llc or 0, LLC_CAP)
    return L3 if llc and working_set <= llc // 2 else DRAM


def weights_in(location: str) -> AbstractContextManager[str]:
    """Within: candidates are timed with their weights in ``location`` (one of ``WEIGHTS_IN``)."""
    if location not in WEIGHTS_IN:
        raise ValueError(f"weights_in must be one of {WEIGHTS_IN}, got {location!r}")
    return bound(_WEIGHTS_IN, location)


def current_weights_in() -> str:
    """Where timed weights come from now: "dram" outside a ``weights_in`` block."""
    return _WEIGHTS_IN.get()
