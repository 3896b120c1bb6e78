"""Sparse-sparse linear on CUDA: per-sample compaction of the non-zero inputs, then atomic
scatter-adds of their complementary-packed weight columns."""

from __future__ import annotations

import tvm

from ...formats.complementary import ComplementaryPacked
from ...ir.layers import LayerSpec
from .. import sparse_cuda
from ..cost_model import MachineModel
from ..gpu_cost_model import SCATTER_EFFICIENCY, gpu_seconds
from ..kernel import KernelCall
from .base import CudaKernel, build_linear
from .knobs import cuda_sparse_sparse_space, settings_for

# Above this input density the atomics cost more than the skipped inputs save.
MAX_INPUT_DENSITY = 0.5


class CudaSparseSparseLinear(CudaKernel):
    name = "sparse_sparse"

    def fits(self, layer: LayerSpec) -> bool:
        return layer.input_density is not None and layer.input_density < MAX_INPUT_DENSITY

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        stats = ComplementaryPacked.from_dense(w).stats()
        per_input = (stats["n_groups"] * k + stats["residual_nnz"]) / max(k, 1)
        moved = m * k * layer.input_density * per_input * 6 + 4 * m * (k + 2 * n)
        return gpu_seconds(moved, SCATTER_EFFICIENCY, launches=3)

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        return settings_for(sparse_cuda.sparse_sparse_linear, cuda_sparse_sparse_space())

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(sparse_cuda.sparse_sparse_linear, layer, target, knobs)
