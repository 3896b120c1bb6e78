"""What a sparse-sparse kernel reads: a ``ComplementaryPacked`` weight laid out input-major.

Shared by the x86 scatter kernels (``sparse_sparse_x86``, ``sparse_sparse_conv_x86``) and the
CUDA one, with the cost fields their ``info`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats.complementary import ComplementaryPacked

DEFAULT_ACTIVATION_DENSITY = 0.125  # what ``info`` costs the kernel at (k-WTA 12.5 %)


def _uint(max_value: int) -> np.dtype:
    """Smallest unsigned type holding ``max_value`` (the kernel widens it in-register)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"index {max_value} does not fit in 32 bits")


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class ScatterTables:
    """The constants a sparse-sparse kernel reads, input-major, ``stride`` slots per input.

    Column ``k`` is ``values[k * stride : (k + 1) * stride]``. Slots past ``G`` (padding to a
    multiple of 8 for the vector scatter) and empty slots hold value 0 and owner ``n_out + s``, a
    dummy accumulator per slot position. ``owner`` is ``uint8``/``uint16`` packed into ``uint64``
    words (8 or 4 owners a word, lowest bits first) when ``vector``, else one uint per slot. The
    residual of input ``k`` is ``res_ptr[k] .. res_ptr[k + 1]`` of ``res_owner`` / ``res_values``.
    Arrays that would be empty hold one unused element so every buffer has a shape.
    """

    n_out: int
    n_in: int
    groups: int
    stride: int
    vector: bool
    owner_bits: int
    values: np.ndarray
    owner: np.ndarray
    res_ptr: np.ndarray
    res_owner: np.ndarray
    res_values: np.ndarray
    packed: ComplementaryPacked

    @property
    def acc_size(self) -> int:
        """Accumulator entries per output position: ``N`` outputs plus one dummy per slot."""
        return self.n_out + self.stride

    @property
    def residual_nnz(self) -> int:
        return self.packed.residual_nnz

    @property
    def slots_per_input(self) -> np.ndarray:
        """Multiply-adds the kernel does per active input ``k`` (padded slots + residual)."""
        return self.stride + np.diff(self.packed.residual_indptr.astype(np.int64))

    @property
    def consts(self) -> tuple[np.ndarray, ...]:
        return (self.values, self.owner, self.res_ptr, self.res_owner, self.res_values)

    @property
    def nbytes(self) -> int:
        return int(sum(c.nbytes for c in self.consts))


def _vector_pays(n_out: int, groups: int) -> bool:
    """Vector scatter: 8 slots cost ~19 memory ops (2.4 / slot) against 4 per scalar slot."""
    padded = -(-groups // 8) * 8
    return groups > 0 and n_out + padded <= 1 << 16 and padded * 2.4 < groups * 4


def scatter_tables(packed: ComplementaryPacked, vector: bool) -> ScatterTables:
    """Lay a packed weight out for the scatter kernels (see ``ScatterTables``)."""
    view = packed.by_input()
    n, k, g = packed.n_out, packed.n_in, packed.n_groups
    stride = -(-g // 8) * 8 if vector else g
    owner = np.tile(n + np.arange(stride, dtype=np.int64), (k, 1))  # [K, stride], all dummies
    values = np.zeros((k, stride), dtype=np.float32)
    real = view.owner.astype(np.int64) != n
    owner[:, :g] = np.where(real, view.owner.astype(np.int64), owner[:, :g])
    values[:, :g] = np.where(real, view.values.astype(np.float32), np.float32(0))
    bits = 8 if n + stride <= 1 << 8 else 16
    if vector:
        owner = owner.astype(np.uint8 if bits == 8 else np.uint16).reshape(-1).view("<u8")
    else:
        owner = owner.astype(_uint(n + max(stride, 1) - 1)).reshape(-1)
        bits = owner.dtype.itemsize * 8
    values = values.reshape(-1)
    if values.size == 0:
        values, owner = np.zeros(1, np.float32), np.zeros(1, owner.dtype)
    res_nnz = packed.residual_nnz
    res_owner = view.residual_indices.astype(np.int64)
    res_values = view.residual_values.astype(np.float32)
    if res_nnz == 0:
        res_owner, res_values = np.zeros(1, np.int64), np.zeros(1, np.float32)
    return ScatterTables(
        n_out=n,
        n_in=k,
        groups=g,
        stride=stride,
        vector=vector,
        owner_bits=bits,
        values=np.ascontiguousarray(values),
        owner=np.ascontiguousarray(owner),
        res_ptr=np.ascontiguousarray(packed.residual_indptr, dtype=_uint(max(res_nnz, 1))),
        res_owner=np.ascontiguousarray(res_owner, dtype=_uint(max(n - 1, 0))),
        res_values=np.ascontiguousarray(res_values),
        packed=packed,
    )


def choose_tables(packed: ComplementaryPacked, vector: bool | None, simd: bool) -> ScatterTables:
    """The tables with the vector scatter where asked (``vector``) or, when None, where ``simd``
    (AVX2 + BMI2) allows it and it pays."""
    if vector is None:
        vector = simd and _vector_pays(packed.n_out, packed.n_groups)
    if vector and packed.n_out + -(-packed.n_groups // 8) * 8 > 1 << 16:
        raise ValueError("the vector scatter needs N + G <= 65536 (16-bit owners)")
    return scatter_tables(packed, bool(vector))


def scatter_cost_info(tab: ScatterTables, macs_dense, useful_per_density, kernel_per_density,
                      density, bytes_per_density, fixed_bytes) -> dict:  # fmt: skip
    """The cost fields every scatter builder reports (``*_per_density``: at density 1)."""
    return {
        "nnz_weights": int(tab.packed.nnz),
        "weight_density": tab.packed.nnz / max(tab.n_out * tab.n_in, 1),
        "packing": tab.packed.stats(),
        "groups": tab.groups,
        "slots_per_input": tab.stride,
        "vector_scatter": tab.vector,
        "owner_bits": tab.owner_bits,
        "macs_dense": int(macs_dense),
        "macs_per_unit_density": float(useful_per_density),
        "kernel_macs_per_unit_density": float(kernel_per_density),
        "activation_density": float(density),
        "macs_sparse_sparse": int(round(density * useful_per_density)),
        "kernel_macs": int(round(density * kernel_per_density)),
        "weight_bytes": tab.nbytes,
        "bytes": int(round(density * bytes_per_density + fixed_bytes)),
    }
