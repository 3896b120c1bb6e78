"""Several kernels as one, each writing a slice of a shared output: a channel concat whose
inputs are computed in place.

Why: a concat copies each input into its channel range, reading and writing every value once
more (SqueezeNet 1.1: ~0.37 ms of 5.3 ms at 1 thread, the Fire modules' expand convs). With
batch 1, input ``i`` of a concat over axis 1 is one contiguous run of the output, so the kernel
that computes it can write there directly. Each kernel's TIR stays as it is: its output
parameter becomes a buffer declared over the shared output's data at that run's start, so
every store, view and alias of it lands in the slice.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import tirx
from tvm.s_tir import renew_defs

# attributes of the member kernels kept on the merged one (when every member has the same
# value): how TVM lowers the body; each member's own spec attributes describe only its part
KEPT_ATTRS = ("tirx.is_scheduled", "tirx.noalias")
# a slice's start is a whole number of these bytes, so a member's vector stores stay as
# aligned as the kernel was written for
SLICE_ALIGN_BYTES = 64


def slice_aligned(offset: int, dtype: str = "float32") -> bool:
    """Whether a slice starting ``offset`` elements into the output keeps its stores aligned."""
    return offset * np.dtype(dtype).itemsize % SLICE_ALIGN_BYTES == 0


def write_into_slices(
    funcs: list[tirx.PrimFunc], offsets: list[int], out_shape: tuple[int, ...],
    dtype: str = "float32",
) -> tirx.PrimFunc:  # fmt: skip
    """One PrimFunc ``(inputs of funcs[0], inputs of funcs[1], ..., out)`` that runs each
    member in order, member ``i`` writing its whole output (its last parameter) to ``out``'s
    flat elements from ``offsets[i]`` on. The slices must lie inside ``out`` and start
    aligned (``slice_aligned``); the caller ensures they do not overlap."""
    if len(funcs) != len(offsets) or not funcs:
        raise ValueError(f"write_into_slices: {len(funcs)} kernels for {len(offsets)} offsets")
    total = math.prod(out_shape)
    out = tirx.decl_buffer(tuple(out_shape), dtype, name="out")
    params, body = [], []
    for func, offset in zip(funcs, offsets):
        func = renew_defs(func)  # each member's vars its own, even for the same kernel twice
        *inputs, member_out = func.params
        size = math.prod(int(d) for d in member_out.ty.shape)
        if str(member_out.ty.dtype) != dtype or offset < 0 or offset + size > total:
            raise ValueError(
                f"write_into_slices: a {member_out.ty.dtype} output of {size} elements at "
                f"{offset} does not fit a {dtype} output of {total}"
            )
        if not slice_aligned(offset, dtype):
            raise ValueError(f"write_into_slices: a slice at element {offset} is not aligned")
        start = [int(i) for i in np.unravel_index(offset, tuple(out_shape))]
        params += inputs
        body.append(tirx.DeclBuffer(member_out, data=tirx.address_of(tirx.BufferLoad(out, start))))
        body += list(func.body.seq) if isinstance(func.body, tirx.SeqStmt) else [func.body]
    merged = tirx.PrimFunc([*params, out], tirx.SeqStmt(body))
    for key in KEPT_ATTRS:
        values = {str(f.attrs.get(key)) if f.attrs is not None else "None" for f in funcs}
        value = funcs[0].attrs.get(key) if funcs[0].attrs is not None else None
        if len(values) == 1 and value is not None:
            merged = merged.with_attr(key, value)
    return merged


__all__ = ["slice_aligned", "write_into_slices"]
