"""Sparse-activation x sparse-weight kernels for x86 CPUs (AVX2 + BMI2), as block-free TIR.

The activations arrive dense, with zeros (the output of k-WTA or ReLU). Each sample is handled in
three steps:

1. **Compact** (one branch-free pass): the positions of the non-zero inputs, 16 inputs a step
   with a mask compare + ``vpcompressd`` on AVX-512, 8 with ``vcmpps`` + ``movmsk`` +
   ``pdep``/``pext`` on AVX2 + BMI2, one scalar input a step otherwise.
   NaN compares unequal to 0, so NaN activations count as active, as they must.
2. **Scatter**: for each active input ``k`` fetch its complementary-packed column (``G`` values
   and ``G`` owners, contiguous; the next active column is prefetched) and scatter-add
   ``x[k] * value`` into an accumulator indexed by owner, then walk the residual CSR of ``k``.
   The vector form multiplies 8 slots at once and unpacks their 8-/16-bit owners from one or two
   ``uint64`` loads with shifts, leaving one load-add-store per slot: ~2.4 memory operations a
   slot against 4 for the scalar form (owner load, value load, accumulator load, store), and
   memory operations (3 a cycle on Zen 3) are what bounds a scatter. Cost:
   ``nnz(x) * (G + residual per input)`` multiply-adds, against ``K * N`` for dense.
3. **Epilogue**: bias and activation.

Empty packed slots (owner ``N`` in ``ComplementaryPacked``), and the padding that rounds ``G`` up
to a multiple of 8, are re-pointed at build time to a dummy accumulator per slot position
(``N + s``): they still cost a multiply-add of 0 but do not chain through one address, which
would serialize the scatter on store-to-load forwarding.

``sparse_sparse_conv2d`` (in ``sparse_sparse_conv_x86``, the tables in ``scatter_tables``, the
TIR pieces in ``_scatter_tir``) does the same per input position ``(c, ih, iw)``: every filter tap
``(kh, kw)`` that maps it onto an output ``(oh, ow)`` scatters packed column
``k = (c * KH + kh) * KW + kw`` into a channels-last accumulator ``[OH * OW, O + stride]`` (the
slots of one tap land in one contiguous row), which the epilogue transposes into NCHW.

Semantics: skipping zeros is exact for finite weights (up to float summation order). The one
difference from dense math: **an inactive (zero) input times an Inf or NaN weight** gives
``0 * Inf = NaN`` in dense math, while here that product is never formed and contributes 0. A
conv's zero padding is inactive too. Active inputs times NaN / Inf weights give what dense math
gives. (As in every sparse-weight kernel, a zero weight times a NaN / Inf activation also
contributes nothing: the weight is not stored.)
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats.complementary import ComplementaryPacked
from ..target import num_cores
from ._epilogue import ACTIVATIONS
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue as _epilogue
from ._scatter_tir import (
    COMPACT_SPARE,
    compact_compress,
    compact_macro,
    padded,
    prefetch_macro,
    scatter_macro,
    scatter_simd,
    zero_fill_macro,
)
from .kernel import KernelCall, as_weight
from .kernel import finish as _finish
from .scatter_tables import (
    DEFAULT_ACTIVATION_DENSITY,
    choose_tables,
    scatter_cost_info,
)
from .sparse_sparse_conv_x86 import sparse_sparse_conv2d


def _linear_kernel(m, tab, nbias, has_bias, activation, parallel, simd, compress, prefetch_next):
    """Per sample: compact the non-zeros of x[b], scatter their packed columns, epilogue."""
    n, k = tab.n_out, tab.n_in
    nacc = tab.acc_size
    nval, nown, nres = tab.values.size, tab.owner.size, tab.res_values.size
    odt, pdt, rdt = str(tab.owner.dtype), str(tab.res_ptr.dtype), str(tab.res_owner.dtype)
    compact = compact_macro(k, simd, compress)
    scatter = scatter_macro(tab)
    prefetch = prefetch_macro(tab)
    zero_fill = zero_fill_macro(nacc)
    prefetch_next = prefetch_next and tab.stride > 0
    samples = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nval,), "float32"),
        owner: T.Buffer((nown,), odt),
        res_ptr: T.Buffer((k + 1,), pdt),
        res_owner: T.Buffer((nres,), rdt),
        res_vals: T.Buffer((nres,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        xf = T.decl_buffer((m * k,), "float32", data=x.data)
        for b in samples(m):
            acc = T.alloc_buffer((padded(nacc),), "float32", scope="global")
            active = T.alloc_buffer((k + COMPACT_SPARE,), "int32", scope="global")
            cnt = T.alloc_buffer((1,), "int32", scope="global")
            zero_fill(acc)
            # Step 1. Compact the non-zeros of the row.
            cnt[0] = 0
            compact(xf, b * k, active, cnt)
            # Step 2. Scatter the packed column (and residual) of every active input.
            for j in range(cnt[0]):
                col: T.let = active[j]
                v: T.let = xf[b * k + col]
                if prefetch_next:
                    prefetch(vals, owner, active[j + 1])
                scatter(acc, 0, col, v, vals, owner, res_ptr, res_owner, res_vals)
            # Step 3. Bias and activation.
            for i in range(n):
                if has_bias:
                    y[b, i] = _epilogue(acc[i] + bias[i], activation)
                else:
                    y[b, i] = _epilogue(acc[i], activation)

    return kernel


def sparse_sparse_macs(info: dict, activation_density: float) -> tuple[int, int]:
    """(useful MACs, MACs the kernel executes) of a built call at another activation density."""
    return (
        int(round(activation_density * info["macs_per_unit_density"])),
        int(round(activation_density * info["kernel_macs_per_unit_density"])),
    )


def sparse_sparse_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    max_groups: int | None = None,
    vector: bool | None = None,
    prefetch: bool = True,
    activation_density: float = DEFAULT_ACTIVATION_DENSITY,
    parallel: bool | None = None,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight[N, K].T + bias), skipping the zeros of x and of weight.

    Knobs: ``max_groups`` is the packing budget G (None: the cost-optimal G, see
    ``ComplementaryPacked``); ``vector`` the 8-wide scatter (None: when the target has AVX2 +
    BMI2 and it pays); ``prefetch`` fetches the next active column while scattering this one;
    ``parallel`` (default: the target has > 1 core and m > 1) spreads samples over threads.
    ``activation_density`` only sets the cost written to ``info``.
    """
    _check_activation(activation)
    weight = as_weight(weight, 2)
    n, k = weight.shape
    simd = scatter_simd(target)
    tab = choose_tables(ComplementaryPacked.from_dense(weight, max_groups), vector, simd)
    bias_arr, has_bias = _bias_const(bias, n)
    if parallel is None:
        parallel = m > 1 and num_cores(target) > 1
    compress = compact_compress(target)
    func = _linear_kernel(
        m, tab, bias_arr.size, has_bias, activation, parallel, simd, compress, prefetch
    )
    slots = tab.slots_per_input
    bytes_per_slot = 4 + tab.owner_bits // 8
    info = {
        "kernel": "sparse_sparse_linear",
        "compaction": "vpcompressd" if compress else "pdep/pext" if simd else "scalar",
        "m": m,
        "n": n,
        "k": k,
        **scatter_cost_info(
            tab,
            m * n * k,
            m * tab.packed.nnz,
            m * slots.sum(),
            activation_density,
            m * slots.sum() * bytes_per_slot,
            4 * m * (n + k),
        ),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_sparse_linear",
        consts=(*tab.consts, bias_arr),
        out_shape=(m, n),
        info=info,
    )


__all__ = [
    "ACTIVATIONS",
    "sparse_sparse_conv2d",
    "sparse_sparse_linear",
    "sparse_sparse_macs",
]
