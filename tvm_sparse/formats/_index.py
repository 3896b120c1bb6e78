"""Index dtype choice shared by the sparse formats.

At batch 1 a sparse-dense kernel streams the values and the indices once, so the index width is
part of the bytes that decide its speed: int16 indices move a third less data than int32 ones
next to float32 values. Kernels accept either dtype.
"""

from __future__ import annotations

import numpy as np

INT16_MAX = int(np.iinfo(np.int16).max)
INT32_MAX = int(np.iinfo(np.int32).max)


def index_dtype(max_index: int) -> np.dtype:
    """The smallest of int16 / int32 that holds ``max_index`` (and 0)."""
    if max_index < 0:
        raise ValueError(f"an index cannot be negative: {max_index}")
    if max_index <= INT16_MAX:
        return np.dtype(np.int16)
    if max_index <= INT32_MAX:
        return np.dtype(np.int32)
    raise ValueError(f"index {max_index} does not fit in int32")


def as_index(values: np.ndarray, max_index: int | None = None) -> np.ndarray:
    """``values`` cast to the index dtype that holds ``max_index`` (default: their maximum)."""
    values = np.asarray(values)
    if max_index is None:
        max_index = int(values.max()) if values.size else 0
    return np.ascontiguousarray(values, dtype=index_dtype(max_index))


def frozen(array: np.ndarray) -> np.ndarray:
    """A contiguous read-only view, so a frozen format cannot be changed through its arrays."""
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def nonzero_mask(w: np.ndarray) -> np.ndarray:
    """Entries a format must store: everything that is not +-0.0 (NaN and Inf are kept).

    ``-0.0`` is dropped like ``+0.0`` (magnitude pruning writes ``-0.0`` for every pruned negative
    weight); it comes back as ``+0.0``, which is equal in value.
    """
    return w != 0  # NaN != 0 is True, so NaN entries are kept


def as_matrix(w: np.ndarray) -> np.ndarray:
    """Validate a 2-D float32 weight (the formats store float32 values only)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {w.shape}")
    if w.dtype != np.float32:
        raise TypeError(f"expected a float32 weight, got {w.dtype}")
    return w
