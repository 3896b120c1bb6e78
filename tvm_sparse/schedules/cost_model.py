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
    # what the batch-1 CSR row kernel streams: decoding indices and gathering x between the loads
    # keep it below the plain streaming bandwidth dense reaches
    gather_bandwidth_gbs: float = 8.0
    dense_gmacs: float = 30.0  # register-blocked dense GEMM (GMAC/s)
    gemv_gmacs: float = 6.0  # batch-1 dense (bound by bandwidth in practice)
    sparse_gmacs: float = 3.0  # CSR sparse-dense, batch 1 (bound by the gathers of x)
    sparse_batched_gmacs: float = 12.0  # sparse-dense with a weight value reused over a batch
    # scatter-add per (active input x packed weight): every MAC is an indexed read-modify-write
    # of an output, far slower than a streamed MAC; the low end of what it reaches, so the
    # estimate never prefers it where dense is faster
    sparse_sparse_gmacs: float = 1.0
    conv_dense_gmacs: float = 20.0
    launch_us: float = 2.0  # fixed cost per kernel call

    def seconds(self, macs: float, gmacs: float, nbytes: float, cores: int = 1,
                bandwidth_gbs: float | None = None) -> float:  # fmt: skip
        """The larger of compute and memory time, plus the launch cost."""
        cores = max(cores, 1)
        compute = macs / (gmacs * 1e9 * cores)
        memory = nbytes / ((bandwidth_gbs or self.bandwidth_gbs) * 1e9 * min(cores, 2))
        return max(compute, memory) + self.launch_us * 1e-6


DEFAULT_MACHINE = MachineModel()

# A sparse kernel is chosen on an estimate only when it is estimated this much faster than dense.
ESTIMATE_MARGIN = 0.8
# ... and on a measurement only when it measured this much faster. A per-layer timing on a shared
# machine moves by ~10% between runs, and one timed alone with hot caches flatters a kernel that
# streams about as many bytes as dense (inside the model its inputs come from memory, not from
# the cache). A near tie goes to dense, the kernel the plan must never be slower than.
MEASURE_MARGIN = 0.9
