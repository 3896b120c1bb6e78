"""Analytical cost model for choosing a kernel per layer without measuring.

Each kernel's time is the larger of its memory time (bytes it must stream / bandwidth) and its
compute time (useful MACs / the rate that kernel reaches). The rates are per kernel family and
were calibrated from ``benchmarks/`` runs on the development machine (AMD Zen 3, AVX2, one
core); ``compile(..., measure=True)`` replaces estimates by measurements on the machine at hand,
and the choice only trusts an estimate with a safety margin.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MachineModel:
    """Throughputs of one core; scaled by the core count for parallel kernels."""

    bandwidth_gbs: float = 12.0  # streaming read bandwidth of one core (GB/s)
    dense_gmacs: float = 30.0  # register-blocked dense GEMM (GMAC/s)
    gemv_gmacs: float = 6.0  # batch-1 dense (bound by bandwidth in practice)
    sparse_gmacs: float = 4.0  # CSR sparse-dense, batch 1 (gather-bound)
    sparse_batched_gmacs: float = 12.0  # sparse-dense with a weight value reused over a batch
    sparse_sparse_gmacs: float = 2.0  # scatter-add per (active input x packed weight)
    conv_dense_gmacs: float = 20.0
    launch_us: float = 2.0  # fixed cost per kernel call

    def seconds(self, macs: float, gmacs: float, nbytes: float, cores: int = 1) -> float:
        cores = max(cores, 1)
        compute = macs / (gmacs * 1e9 * cores)
        memory = nbytes / (self.bandwidth_gbs * 1e9 * min(cores, 2))
        return max(compute, memory) + self.launch_us * 1e-6


DEFAULT_MACHINE = MachineModel()

# A sparse kernel is chosen on an estimate only when it is estimated this much faster than dense.
ESTIMATE_MARGIN = 0.8
