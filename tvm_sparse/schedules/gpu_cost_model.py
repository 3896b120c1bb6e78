"""Analytical cost model of the CUDA kernels: memory time on an H100-class GPU.

Batch-1 sparse layers on a GPU are bandwidth bound, so a kernel's time is the bytes it moves
over the bandwidth it reaches (an efficiency below 1 for the access patterns that do not
coalesce fully) plus a fixed cost per kernel launch. At larger batches the kernels become bound
by their multiply-adds, at rates that differ by tens of times between a dense tiled GEMM and a
gathering CSR kernel; the rates below were measured on an H200 (sm_90, fp32, 4096x4096 at 5%
density, batch 64, ``benchmarks/bench_cuda.py``): dlight dense 273 us, CSR 463 us, BSR 4x1
176 us. Without the compute term the model picked CSR at batch 64, 1.7x slower than dense.
"""

from __future__ import annotations

GPU_BANDWIDTH_GBS = 2500.0  # H100 SXM streaming, what a well-coalesced kernel reaches
GPU_LAUNCH_US = 4.0
GATHER_EFFICIENCY = 0.5  # CSR: index loads + gathered x reads
SCATTER_EFFICIENCY = 0.25  # sparse-sparse: atomics and compaction


# Sustained fp32 multiply-add rates (GFLOP/s, 2 per MAC) of each kernel kind at batch >= 16.
DENSE_GFLOPS = 7900.0  # dlight's SIMT GEMM schedule
CSR_GFLOPS = 230.0
BSR_GFLOPS = 610.0


def gpu_seconds(
    nbytes: float, efficiency: float = 1.0, launches: int = 1, flops: float = 0.0,
    gflops: float = float("inf"),
) -> float:  # fmt: skip
    """Seconds to move ``nbytes`` at ``efficiency`` of the bandwidth or to do ``flops`` at
    ``gflops``, whichever takes longer, plus the launches."""
    memory = nbytes / (GPU_BANDWIDTH_GBS * 1e9 * efficiency)
    compute = flops / (gflops * 1e9)
    return max(memory, compute) + launches * GPU_LAUNCH_US * 1e-6
