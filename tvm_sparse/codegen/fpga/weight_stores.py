"""Weight stores: a layer's weight as the arrays its engine reads, and back.

``dense_store`` / ``csr_store`` / ``packed_store`` build the ``WeightStore`` of the dense,
sparse-dense and sparse-sparse engines; ``dense_weight`` rebuilds the [O, K] weight from any of
them (what the numpy executor multiplies with, and what checks that a store lost nothing).
"""

from __future__ import annotations

import numpy as np

from ...formats.complementary import ComplementaryPacked
from ...ir.layers import CONV2D
from .hw_model import HwLayer, WeightStore


def _one(a: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """``a`` as ``dtype``, padded to one element if empty."""
    a = np.asarray(a).astype(dtype).ravel()
    return (a, 0) if a.size else (np.zeros(1, dtype), 1)


def _input_offsets(layer_attrs: dict, in_shape: tuple[int, ...], k_idx: np.ndarray) -> np.ndarray:
    """Offset in the padded input buffer of im2col position k = (c*KH + kh)*KW + kw."""
    if "kernel" not in layer_attrs:
        return k_idx
    kh_n, kw_n = layer_attrs["kernel"]
    hp, wp = layer_attrs["padded"]
    dh, dw = layer_attrs["dilation"]
    c, rem = np.divmod(k_idx, kh_n * kw_n)
    kh, kw = np.divmod(rem, kw_n)
    return c * hp * wp + kh * dh * wp + kw * dw


def dense_store(w2: np.ndarray) -> WeightStore:
    return WeightStore("dense", {"w": w2.astype(np.float32).ravel()}, int(np.count_nonzero(w2)))


def csr_store(w2: np.ndarray, attrs: dict, in_shape: tuple[int, ...]) -> WeightStore:
    """Row-major CSR of the non-zeros, column index replaced by the input offset to read."""
    rows, cols = np.nonzero(w2)
    ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w2.shape[0]))])
    val, p1 = _one(w2[rows, cols], np.float32)
    off, p2 = _one(_input_offsets(attrs, in_shape, cols), np.uint32)
    arrays = {"val": val, "off": off, "ptr": ptr.astype(np.uint32)}
    return WeightStore("csr", arrays, int(rows.size), padding=p1 + p2)


def packed_store(w2: np.ndarray) -> WeightStore:
    """Complementary packing, input-major: column k is G consecutive (value, owner) slots."""
    packed = ComplementaryPacked.from_dense(w2.astype(np.float32))
    view = packed.by_input()
    g = packed.n_groups
    n_out = w2.shape[0]
    if g == 0:  # all-zero weight: one empty group keeps the arrays non-empty
        val, owner = np.zeros(w2.shape[1], np.float32), np.full(w2.shape[1], n_out)
        g = 1
    else:
        val, owner = view.values.ravel(), view.owner.ravel()
    owner_t = np.uint16 if n_out < 65535 else np.uint32
    rval, p1 = _one(view.residual_values, np.float32)
    ridx, p2 = _one(view.residual_indices, owner_t)
    arrays = {
        "val": val.astype(np.float32),
        "owner": owner.astype(owner_t),
        "rptr": view.residual_indptr.astype(np.uint32),
        "ridx": ridx,
        "rval": rval,
    }
    return WeightStore("packed", arrays, packed.nnz, n_groups=g, padding=p1 + p2)


def dense_weight(layer: HwLayer) -> np.ndarray:
    """The layer's weight as [O, K] float32, rebuilt from its store (checks the store too)."""
    w = layer.weights
    o, k = layer.out_shape[0], layer.n_kin
    if w.fmt == "dense":
        return w.arrays["w"].reshape(o, k)
    if w.fmt == "packed":
        g = w.n_groups
        out = np.zeros((o + 1, k), np.float32)
        owner = w.arrays["owner"].reshape(k, g).astype(np.int64)
        out[owner, np.arange(k)[:, None]] = w.arrays["val"].reshape(k, g)
        rptr = w.arrays["rptr"].astype(np.int64)
        cols = np.repeat(np.arange(k), np.diff(rptr))
        out[w.arrays["ridx"][: rptr[-1]].astype(np.int64), cols] = w.arrays["rval"][: rptr[-1]]
        return out[:o]
    ptr = w.arrays["ptr"].astype(np.int64)
    rows = np.repeat(np.arange(o), np.diff(ptr))
    off = w.arrays["off"][: ptr[-1]].astype(np.int64)
    if layer.op == CONV2D:  # invert the offset encoding
        kh_n, kw_n = layer.kernel
        hp, wp = layer.attrs["padded"]
        dh, dw = layer.attrs["dilation"]
        c, rem = np.divmod(off, hp * wp)
        kh, kw = rem // wp // dh, rem % wp // dw
        off = (c * kh_n + kh) * kw_n + kw
    out = np.zeros((o, k), np.float32)
    out[rows, off] = w.arrays["val"][: ptr[-1]]
    return out
