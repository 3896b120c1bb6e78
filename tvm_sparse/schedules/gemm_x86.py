"""The register-blocked GEMM micro-kernel shared by the dense linear and conv2d kernels.

``acc[i, j] = sum_k A[i, k] * B[j // nb, k, j % nb]``: ``A`` is the *broadcast* operand (``mr``
rows, one scalar broadcast per row and k), ``B`` the *panel* operand, packed as
``[cols / nb, K, nb]`` so that one k step reads ``nb`` contiguous floats (``nb / 8`` AVX2
registers). The ``mr x nb`` accumulator tile lives in registers for the whole K loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from ._epilogue import ACTIVATIONS, epilogue


@dataclass(frozen=True)
class GemmTiling:
    """The micro-kernel's knobs: ``mr`` broadcast rows x ``nb`` vector columns per tile."""

    mr: int
    nb: int
    k_unroll: int = 1  # unroll factor of the K loop (1: let LLVM decide)
    parallel: bool = True


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def choose_tiling(
    rows: int, cols: int, num_cores: int = 1, lanes: int = 8, zmm_split: bool = False
) -> GemmTiling:
    """Pick ``mr x nb`` for a GEMM with ``rows`` broadcast rows and ``cols`` vector columns.

    AVX2 (``lanes`` 8) has 16 ymm registers: 6x16 (12 accumulators) or 4x16 is the classic FMA
    kernel. AVX-512 (``lanes`` 16) has 32 zmm registers: 8x32 (16 accumulators, two vectors a
    row), so each broadcast feeds two FMAs and each loaded vector eight. Where 512-bit ops run
    as two halves (``zmm_split``, Zen 4), 4x64 (four vectors a row) reached 92-98% of the FMA
    peak on the MiniLM and MLP shapes against 84-96% for 8x32. With few rows (batch 1..3, the
    memory-bound GEMV case) the tile widens instead, so there are still >= 8 independent FMA
    chains to hide the 4-cycle FMA latency. ``nb`` is a power of two no wider than the columns
    need (a 12-output layer does not pad to 128): a 48-, 80- or 112-column panel ran 10-25x
    slower than a 64-column one (Zen 4; why was not looked into, likely how LLVM lowers 3-, 5-
    and 7-vector types).
    """
    col_cap = max(16, 1 << (max(cols, 1) - 1).bit_length())
    wide = lanes >= 16
    if rows >= 4:
        if wide and zmm_split:
            return GemmTiling(mr=4, nb=min(4 * lanes, col_cap), parallel=num_cores > 1)
        mrs = (8, 7, 6, 5, 4) if wide else (6, 5, 4)
        mr = min(mrs, key=lambda r: (round_up(rows, r), -r))
        # whole 512-bit units (Intel): the K loop unrolled 4 ran 3-9% faster on BERT's,
        # MiniLM's and the MLP's shapes (8x32 tile, 128 / 64 rows; 9 of 10 A/B pairs)
        unroll = 4 if wide else 1
        return GemmTiling(
            mr=mr, nb=min(2 * lanes, col_cap), k_unroll=unroll, parallel=num_cores > 1
        )
    nb = {1: 8, 2: 4, 3: 4}[rows] * lanes
    return GemmTiling(mr=rows, nb=min(nb, col_cap), parallel=num_cores > 1)


def apply_activation(value: te.Tensor, activation: str | None):
    """``act(value)`` as a TE expression (GELU in erf form). ReLU and ReLU6 keep NaN, as
    numpy, onnxruntime and ``_epilogue.epilogue`` do: selects, not ``max`` (LLVM's ``maxnum``
    returns the number of a NaN / number pair, so ``max(NaN, 0)`` is 0)."""
    if activation is None:
        return value
    zero, six = tirx.const(0.0, "float32"), tirx.const(6.0, "float32")
    if activation == "relu":
        return tirx.Select(value < zero, zero, value)
    if activation == "relu6":
        return tirx.Select(value < zero, zero, tirx.Select(value > six, six, value))
    if activation == "gelu":
        half = tirx.const(0.5, "float32")
        return value * (half + half * te.erf(value * tirx.const(1.0 / math.sqrt(2.0), "float32")))
    if activation in ("gelu_tanh", "silu", "sigmoid", "hardswish", "hardsigmoid"):
        return epilogue(value, activation)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")


def schedule_gemm(
    sch: s_tir.Schedule,
    tiling: GemmTiling,
    gemm_block: str = "gemm",
    epilogue_block: str | None = "epilogue",
) -> s_tir.Schedule:
    """Schedule ``acc[i, j] = sum_k A[i, k] * B[j // nb, k, j % nb]`` as a register micro-kernel.

    ``epilogue_block`` (reads ``acc``, writes the output) runs per tile, while the tile is in L1.
    Loop order: column panel, row tile, K, rows (unrolled), columns (vectorized), so one
    packed panel is reused from L2 by every row tile.
    """
    mr, nb = tiling.mr, tiling.nb
    gemm = sch.get_sblock(gemm_block)

    # Step 1. Tile: columns by nb (one packed panel), rows by mr, K whole and innermost-but-two.
    i, j, k = sch.get_loops(gemm)
    i_o, i_i = sch.split(i, [None, mr])
    j_o, j_i = sch.split(j, [None, nb])
    sch.reorder(j_o, i_o, k, i_i, j_i)

    # Step 2. Keep the mr x nb accumulators in registers for the whole K loop.
    acc_local = sch.cache_write(gemm, 0, "local")
    sch.reverse_compute_at(acc_local, i_o)

    # Step 3. Epilogue (bias, activation, unpad) per tile.
    if epilogue_block is not None:
        sch.reverse_compute_at(sch.get_sblock(epilogue_block), i_o)

    # Step 4. Parallel over (column panel, row tile): threads get contiguous ranges of panels.
    if tiling.parallel:
        sch.parallel(sch.fuse(j_o, i_o))

    # Step 5. Micro-kernel: unroll rows, vectorize columns; optionally unroll K. The reduction
    # is split into init + update last (the loop primitives need an intact reduction block).
    if tiling.k_unroll > 1:
        k, k_i = sch.split(k, [None, tiling.k_unroll])
        sch.unroll(k_i)
    sch.unroll(i_i)
    sch.vectorize(j_i)
    sch.decompose_reduction(gemm, k)
    sch.vectorize(sch.get_loops(acc_local)[-1])
    return sch


def parallel_elementwise(sch: s_tir.Schedule, block, parallel: bool) -> None:
    """Parallelize an elementwise block over its leading (up to two, fused) loops."""
    loops = sch.get_loops(block)
    if parallel and len(loops) >= 2:
        sch.parallel(sch.fuse(*loops[:2]) if len(loops) > 2 else loops[0])
    elif parallel:
        sch.parallel(loops[0])


def pack_gemm_panels(matrix: np.ndarray, nb: int) -> np.ndarray:
    """``[cols, K]`` -> ``[ceil(cols / nb), K, nb]``, zero padded: the micro-kernel's B layout."""
    cols, depth = matrix.shape
    padded = np.zeros((round_up(cols, nb), depth), dtype=np.float32)
    padded[:cols] = matrix
    return np.ascontiguousarray(padded.reshape(-1, nb, depth).transpose(0, 2, 1))
