"""Relax-level operators for people who build Relax directly (not through ONNX).

``kwta`` emits exactly the subgraph a PyTorch -> ONNX export of nupic.torch's KWinners imports
to, so a hand-built model is detected (``find_kwta``), reported and rewritten to the linear-time
kernel the same way an imported one is; no custom Relax op needs registering or legalizing.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from .ir.relax_utils import static_shape


def _boost_const(boost: np.ndarray, shape: tuple[int, ...], dtype: str) -> relax.Constant:
    """The boost factor as a constant that broadcasts against ``x`` (batch dimension 1)."""
    boost = np.asarray(boost, dtype=dtype)
    per_sample = (1, *shape[1:])
    n = int(np.prod(shape[1:]))
    if boost.size == n:
        return relax.const(np.ascontiguousarray(boost.reshape(per_sample)))
    try:  # e.g. [1, C, 1, 1] per channel, as KWinners2d keeps it
        np.broadcast_shapes(boost.shape, per_sample)
        full = np.broadcast_to(boost, per_sample)
    except ValueError:
        full = None
    if full is None or full.shape != per_sample:
        raise ValueError(f"boost of shape {boost.shape} does not broadcast to {per_sample}")
    return relax.const(np.ascontiguousarray(boost))


def kwta(x: relax.Expr, k: int, boost: np.ndarray | None = None) -> relax.Expr:
    """k-winners-take-all per sample, global over all non-batch axes (nupic.torch semantics).

    Keeps ``x`` where ``x * boost`` (or ``x``) is >= its k-th largest value in the sample, else 0;
    ties with the k-th value all win. ``x`` needs a static shape ``[B, ...]``. ``boost`` is the
    boost factor ``exp(-b * duty)``: ``n`` values or any shape broadcasting to ``x[0:1]`` (such
    as ``[1, C, 1, 1]``). Emit the result inside a ``BlockBuilder`` (``bb.emit``), which binds
    the nested calls to variables the way the ONNX importer does.
    """
    shape = static_shape(x)
    if shape is None or len(shape) < 2:
        raise ValueError("kwta needs a tensor with a static shape [B, ...] of rank >= 2")
    batch, n = shape[0], int(np.prod(shape[1:]))
    if not 1 <= int(k) <= n:
        raise ValueError(f"kwta needs 1 <= k <= {n}, got k={k}")
    dtype = str(x.ty.dtype)
    flat = len(shape) == 2

    def flatten(value: relax.Expr) -> relax.Expr:
        return value if flat else relax.op.reshape(value, (batch, n))

    kept = flatten(x)
    if boost is None:
        ranked = kept
    else:
        ranked = flatten(relax.op.multiply(x, _boost_const(boost, shape, dtype)))
    values = relax.TupleGetItem(relax.op.topk(ranked, int(k), axis=-1, ret_type="both"), 0)
    kth = relax.op.take(values, relax.const(int(k) - 1, "int64"), axis=1)
    mask = relax.op.greater_equal(ranked, relax.op.expand_dims(kth, axis=[1]))
    out = relax.op.where(mask, kept, relax.const(0.0, dtype))
    return out if flat else relax.op.reshape(out, shape)
