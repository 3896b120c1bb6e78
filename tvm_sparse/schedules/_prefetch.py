"""Software prefetch: the one intrinsic call, and the weights that come from L3 or DRAM in a model.

Why: a kernel's weights were last read a whole inference ago. Where a kernel's first pass over a
block of weights does little work per byte (one pixel panel, one Winograd panel group), the
hardware prefetcher alone leaves it waiting on memory, and the layer takes its warm time plus
the time to stream its weights (ResNet-50's 3x3 convs at 7x7: 2389 against 1837 us warm,
Sapphire Rapids). The GEMM kernels prefetch the next weight block while computing this one.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

# weights at least this big are prefetched a channel tile ahead: in a model they were last
# read a whole inference ago and come from L3 or DRAM, and the hardware prefetcher alone left
# the first pass over each tile waiting on them (2048->512 at 7x7 with cold weights: 1071
# against 929 us; 512->128 at 28x28: 859 against 805; warm, 0-5% slower)
PREFETCH_MIN_WEIGHT_BYTES = 128 << 10
# outputs at least this big are prefetched for writing a tile ahead (``wants_output_prefetch``)
PREFETCH_MIN_OUTPUT_BYTES = 1 << 20


def prefetch(element: tvm.tirx.BufferLoad, locality: int = 3) -> tvm.tirx.PrimExpr:
    """A software read prefetch of the cache line holding ``element`` (``llvm.prefetch``):
    locality 3 into L1 (``prefetcht0``), 2 into L2 (``prefetcht1``). It never faults, so an
    address past the end of a buffer is harmless."""
    return T.call_llvm_intrin(
        "void", "llvm.prefetch.p0", T.address_of(element), T.int32(0), T.int32(locality),
        T.int32(1),
    )  # fmt: skip


def prefetch_write(element: tvm.tirx.BufferLoad) -> tvm.tirx.PrimExpr:
    """A prefetch for writing (``prefetchw``) of the line holding ``element``: the line is
    owned before the stores reach it, so they do not each wait on a read for ownership."""
    return T.call_llvm_intrin(
        "void", "llvm.prefetch.p0", T.address_of(element), T.int32(1), T.int32(3), T.int32(1)
    )


def wants_output_prefetch(output_bytes: int, parallel: bool) -> bool:
    """Prefetch-for-write a tile ahead: an output past half an L2, in NCHW, written as one
    short run per output channel and tile (tens of store streams, more than the hardware
    prefetcher follows). In a model such an output's lines were last touched a whole inference
    ago: SqueezeNet's stem (64 x 111 x 111 out, 3.2 MB) ran in 435 us warm and 1349 with its
    output cold. One thread only (a line prefetched for writing by one core is taken from the
    other)."""
    return output_bytes >= PREFETCH_MIN_OUTPUT_BYTES and not parallel


def prefetch_l2(element: tvm.tirx.BufferLoad) -> tvm.tirx.PrimExpr:
    """A prefetch of one weight line into L2: a block ahead, too big for L1 beside the
    block in use."""
    return prefetch(element, locality=2)


def spread_offset(step, steps: int, floats: int) -> tvm.tirx.PrimExpr:
    """The offset (in floats, a whole line) into the next weight block that step ``step`` of
    ``steps`` prefetches, so that the block's ``floats`` are requested evenly over all the
    steps that use the current block, not in the first few of them.

    Why: a software prefetch holds an L1 fill buffer until its line arrives, and a line from L3
    takes ~100 ns; requesting a whole block during one tile (ResNet-50's 1024->256 1x1 at 14x14:
    a 256 KB weight panel during 4 of 33 pixel tiles) starves the tile's own loads from L2, and
    the layer ran at its warm time plus the time to stream its weights."""
    lines = max(1, -(-floats // 16))
    if isinstance(step, int) or steps * lines < 2**31:
        return (step * lines // steps) * 16
    # the product overflows int32 (a batch-64 conv's steps times a 200 KB block's lines)
    return T.Cast("int32", T.Cast("int64", step) * lines // steps) * 16


def wants_prefetch(weight_bytes: int, parallel: bool) -> bool:
    """Prefetch a kernel's weights: big ones, in a kernel that runs on one thread. On two
    threads the prefetches made ResNet-18's 3x3 conv (256 channels, 7x7, batch 16) 2.3x
    slower, not faster (7666 against 3310 us without them)."""
    return weight_bytes >= PREFETCH_MIN_WEIGHT_BYTES and not parallel
