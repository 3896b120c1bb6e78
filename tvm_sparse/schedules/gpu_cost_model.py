"""Analytical cost model of the CUDA kernels: memory time on an H100-class GPU.

Batch-1 sparse layers on a GPU are bandwidth bound, so a kernel's time is the bytes it moves
over the bandwidth it reaches (an efficiency below 1 for the access patterns that do not
coalesce fully) plus a fixed cost per kernel launch.
"""

from __future__ import annotations

GPU_BANDWIDTH_GBS = 2500.0  # H100 SXM streaming, what a well-coalesced kernel reaches
GPU_LAUNCH_US = 4.0
GATHER_EFFICIENCY = 0.5  # CSR: index loads + gathered x reads
SCATTER_EFFICIENCY = 0.25  # sparse-sparse: atomics and compaction


def gpu_seconds(nbytes: float, efficiency: float = 1.0, launches: int = 1) -> float:
    """Seconds to move ``nbytes`` at ``efficiency`` of the bandwidth, plus the launches."""
    return nbytes / (GPU_BANDWIDTH_GBS * 1e9 * efficiency) + launches * GPU_LAUNCH_US * 1e-6
