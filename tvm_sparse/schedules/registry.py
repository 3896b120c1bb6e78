"""Which kernels can implement a layer on a target, with an estimated time for each.

A candidate is cheap to list (an estimate) and built only when chosen or measured. Dense is always
a candidate, so the choice can never be forced onto a slower sparse kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm

from ..ir.layers import LINEAR, LayerSpec
from ..target import num_cores
from .cost_model import DEFAULT_MACHINE, MachineModel
from .kernel import KernelCall

_BSR_BLOCKS = ((1, 8), (4, 1), (8, 1), (16, 1))
# A weight-sparse kernel that stores this fraction of the dense weight skips (almost) no work, so
# it cannot beat the dense GEMM by design; a per-layer timing that says otherwise is noise, and
# whole models measured slower with it (pruned BERT at 0% sparsity: 42.8 vs 35.6 ms).
_NO_SKIP_FILL = 0.9


@dataclass
class Candidate:
    name: str
    estimate_s: float
    build: Callable[[], KernelCall]


def _index_bytes(extent: int) -> int:
    return 2 if extent < 2**15 else 4


def linear_candidates(
    layer: LayerSpec, target: tvm.target.Target, sparse: bool, machine: MachineModel
) -> list[Candidate]:
    from . import dense_x86

    w = layer.weight
    m, (n, k) = layer.rows, w.shape
    cores = num_cores(target)
    act, bias = layer.activation, layer.bias
    gmacs = machine.gemv_gmacs if m < 4 else machine.dense_gmacs
    dense_bytes = w.nbytes + 4 * m * (n + k)
    out = [
        Candidate(
            "dense",
            machine.seconds(m * n * k, gmacs, dense_bytes, cores),
            lambda: dense_x86.dense_linear(m, w, bias, act, target),
        )
    ]
    if not sparse:
        return out
    from . import sparse_x86

    nnz = int(np.count_nonzero(w))
    csr_bytes = nnz * (4 + _index_bytes(k)) + 4 * (n + 1) + 4 * m * (n + k)
    rate = machine.sparse_gmacs if m < 4 else machine.sparse_batched_gmacs
    stream_gbs = machine.gather_bandwidth_gbs if m < 4 else None  # the row kernel gathers
    weight_sparse = nnz < _NO_SKIP_FILL * w.size
    if weight_sparse:
        out.append(
            Candidate(
                "csr",
                machine.seconds(m * nnz, rate, csr_bytes, cores, stream_gbs),
                lambda: sparse_x86.csr_linear(m, w, bias, act, target),
            )
        )
    if layer.input_density is not None:
        from . import sparse_sparse_x86

        d = layer.input_density
        active = max(m * k * d, 1.0)
        ss_bytes = active * (nnz / max(k, 1)) * (4 + 2) + 4 * m * (n + k)
        out.append(
            Candidate(
                "sparse_sparse",
                machine.seconds(
                    active * nnz / max(k, 1), machine.sparse_sparse_gmacs, ss_bytes, cores
                )
                + m * k * 0.3e-9,  # + the compaction scan of x
                lambda: sparse_sparse_x86.sparse_sparse_linear(m, w, bias, act, target),
            )
        )
    for r, c in _BSR_BLOCKS:
        if n % r or k % c:
            continue
        blocks = np.count_nonzero(w.reshape(n // r, r, k // c, c).any(axis=(1, 3)))
        stored = blocks * r * c
        if stored > 1.5 * max(nnz, 1):  # poor fill: BSR multiplies too many zeros
            continue
        if stored >= _NO_SKIP_FILL * w.size:  # stores the dense weight: nothing skipped
            continue
        bsr_bytes = stored * 4 + blocks * _index_bytes(k) + 4 * m * (n + k)
        out.append(
            Candidate(
                f"bsr{r}x{c}",
                machine.seconds(m * stored, rate * 1.5, bsr_bytes, cores),
                lambda r=r, c=c: sparse_x86.bsr_linear(m, w, (r, c), bias, act, target),
            )
        )
    return out


def conv2d_candidates(
    layer: LayerSpec, target: tvm.target.Target, sparse: bool, machine: MachineModel
) -> list[Candidate]:
    from . import dense_x86

    w, attrs = layer.weight, layer.conv_attrs
    cores = num_cores(target)
    macs = layer.macs_dense
    io_bytes = 4 * (int(np.prod(layer.x_shape)) + int(np.prod(layer.out_shape)))
    common = {
        "strides": attrs["strides"],
        "padding": attrs["padding"],
        "dilation": attrs["dilation"],
        "groups": attrs["groups"],
        "activation": layer.activation,
        "target": target,
    }
    out = [
        Candidate(
            "dense",
            machine.seconds(macs, machine.conv_dense_gmacs, w.nbytes + io_bytes, cores),
            lambda: dense_x86.dense_conv2d(layer.x_shape, w, layer.bias, **common),
        )
    ]
    if not sparse or attrs["groups"] != 1:
        return out
    from . import sparse_x86

    density = np.count_nonzero(w) / max(w.size, 1)
    nnz = int(np.count_nonzero(w))
    if nnz < _NO_SKIP_FILL * w.size:
        out.append(
            Candidate(
                "sparse_conv",
                machine.seconds(
                    macs * density, machine.sparse_batched_gmacs, nnz * 6 + io_bytes, cores
                ),
                lambda: sparse_x86.sparse_conv2d(layer.x_shape, w, layer.bias, **common),
            )
        )
    if layer.input_density is not None:
        from . import sparse_sparse_x86

        in_elems = int(np.prod(layer.x_shape))
        ss_macs = macs * density * layer.input_density
        out.append(
            Candidate(
                "sparse_sparse",
                machine.seconds(ss_macs, machine.sparse_sparse_gmacs, nnz * 6 + io_bytes, cores)
                + in_elems * 0.3e-9,
                lambda: sparse_sparse_x86.sparse_sparse_conv2d(
                    layer.x_shape, w, layer.bias, **common
                ),
            )
        )
    return out


def candidates_for(
    layer: LayerSpec,
    target: tvm.target.Target,
    sparse: bool = True,
    machine: MachineModel = DEFAULT_MACHINE,
) -> list[Candidate]:
    """All kernels that can implement ``layer`` on ``target`` (dense first)."""
    kind = str(target.kind.name)
    if kind == "cuda":
        from .sparse_cuda import cuda_candidates

        return cuda_candidates(layer, target, sparse, machine)
    if kind != "llvm":
        return []
    if layer.kind == LINEAR:
        return linear_candidates(layer, target, sparse, machine)
    return conv2d_candidates(layer, target, sparse, machine)
