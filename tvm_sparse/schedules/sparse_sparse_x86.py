"""Sparse-activation x sparse-weight kernels for x86 CPUs (AVX2 + BMI2), as block-free TIR.

The activations arrive dense, with zeros (the output of k-WTA or ReLU). Each sample is handled in
three steps:

1. **Compact** (one branch-free pass): the positions of the non-zero inputs, 8 inputs a step with
   ``vcmpps`` + ``movmsk`` + ``pdep``/``pext`` (one scalar input a step without AVX2 / BMI2).
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

``sparse_sparse_conv2d`` does the same per input position ``(c, ih, iw)``: every filter tap
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

from dataclasses import dataclass

import numpy as np
from tvm.script import tirx as T

from ..formats.complementary import ComplementaryPacked
from ..target import has_cpu_features, num_cores
from ._epilogue import ACTIVATIONS
from ._epilogue import bias_const as _bias_const
from ._epilogue import check_activation as _check_activation
from ._epilogue import epilogue as _epilogue
from .kernel import KernelCall
from .kernel import finish as _finish

DEFAULT_ACTIVATION_DENSITY = 0.125  # what ``info`` costs the kernel at (k-WTA 12.5 %)
_BYTE_LSBS = 0x0101010101010101  # pdep: mask bit i -> byte i
_LANE_IDS = 0x0706050403020100  # pext: the indices of the selected bytes, packed


# --------------------------------------------------------------------------- helpers


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


def _tables(packed: ComplementaryPacked, vector: bool | None, simd: bool) -> ScatterTables:
    if vector is None:
        vector = simd and _vector_pays(packed.n_out, packed.n_groups)
    if vector and packed.n_out + -(-packed.n_groups // 8) * 8 > 1 << 16:
        raise ValueError("the vector scatter needs N + G <= 65536 (16-bit owners)")
    return scatter_tables(packed, bool(vector))


# --------------------------------------------------------------------------- TIR pieces


def _compact_macro(total: int, simd: bool):
    """Macro: append to ``active[cnt:]`` the positions of the non-zeros of ``xf[start:+total]``.

    One pass, no branch. With AVX2 + BMI2, 8 inputs a step: compare with 0 (unordered-or-not-equal,
    so NaN is active), ``movmsk`` gives an 8-bit mask, ``pdep`` / ``pext`` turn it into the byte
    indices of its set lanes, which are widened and stored as 8 ints at ``cnt`` (the lanes past
    ``popcount(mask)`` are overwritten by the next step). Without them: one input a step,
    ``cnt += 1 - (x == 0)``. Positions are relative to ``start``. Afterwards ``active[cnt] = 0``,
    so a one-ahead prefetch stays in bounds; ``active`` needs ``8`` spare entries.
    """
    chunks = total // 8 if simd else 0

    @T.macro
    def compact(xf, start, active, cnt):
        for c in range(chunks):
            nz: T.let = T.call_llvm_pure_intrin(
                "float32x8",
                "llvm.x86.avx.cmp.ps.256",
                xf[T.ramp(start + c * 8, 1, 8)],
                T.broadcast(T.float32(0), 8),
                T.int8(4),  # _CMP_NEQ_UQ
            )
            mask: T.let = T.call_llvm_pure_intrin("int32", "llvm.x86.avx.movmsk.ps.256", nz)
            spread: T.let = T.call_llvm_pure_intrin(
                "uint64", "llvm.x86.bmi.pdep.64", T.Cast("uint64", mask), T.uint64(_BYTE_LSBS)
            ) * T.uint64(255)
            lanes: T.let = T.call_llvm_pure_intrin(
                "uint64", "llvm.x86.bmi.pext.64", T.uint64(_LANE_IDS), spread
            )
            active[T.ramp(cnt[0], 1, 8)] = T.Cast(
                "int32x8", T.reinterpret("uint8x8", lanes)
            ) + T.broadcast(c * 8, 8)
            cnt[0] = cnt[0] + T.popcount(mask)
        for t in range(chunks * 8, total):
            active[cnt[0]] = t
            cnt[0] = cnt[0] + 1 - T.Cast("int32", xf[start + t] == T.float32(0))
        active[cnt[0]] = 0

    return compact


def _scatter_macro(tab: ScatterTables):
    """Macro: ``acc[base + owner] += v * value`` over the packed column ``col`` and its residual.

    Vector form: 8 products in one multiply, owners unpacked from ``uint64`` words with shifts
    (ALU work, not loads), then one load-add-store per slot. Scalar form: one owner load, one
    value load, one FMA with the accumulator, one store per slot.
    """
    stride, bits = tab.stride, tab.owner_bits
    per = 64 // bits  # owners per uint64 word
    words = 8 // per  # words per 8 slots
    lane_mask = (1 << bits) - 1
    chunks = stride // 8
    vector, has_res = tab.vector, tab.residual_nnz > 0

    @T.macro
    def scatter(acc, base, col, v, vals, owner, res_ptr, res_owner, res_vals):
        if vector:
            for c in range(chunks):
                prod = T.alloc_buffer((8,), "float32", scope="local")
                prod[T.ramp(0, 1, 8)] = vals[T.ramp(col * stride + c * 8, 1, 8)] * T.broadcast(v, 8)
                for h in T.unroll(words):
                    word: T.let = owner[(col * chunks + c) * words + h]
                    for i in T.unroll(per):
                        o: T.let = base + T.Cast(
                            "int32",
                            T.bitwise_and(
                                T.shift_right(word, T.uint64(bits * i)), T.uint64(lane_mask)
                            ),
                        )
                        acc[o] = acc[o] + prod[h * per + i]
        else:
            for s in range(stride):
                so: T.let = base + T.Cast("int32", owner[col * stride + s])
                acc[so] = acc[so] + v * vals[col * stride + s]
        if has_res:
            r0: T.let = T.Cast("int32", res_ptr[col])
            for r in range(T.Cast("int32", res_ptr[col + 1]) - r0):
                ro: T.let = base + T.Cast("int32", res_owner[r0 + r])
                acc[ro] = acc[ro] + v * res_vals[r0 + r]

    return scatter


def _prefetch_macro(tab: ScatterTables):
    """Macro: prefetch packed column ``col`` (values and owners) into L1, one line at a time.

    Addresses past the end of a buffer are harmless: a prefetch never faults.
    """
    stride = tab.stride
    owner_per_col = stride * tab.owner_bits // 64 if tab.vector else stride
    val_lines = -(-stride * 4 // 64)
    owner_lines = -(-owner_per_col * tab.owner.dtype.itemsize // 64)
    owner_per_line = 64 // tab.owner.dtype.itemsize

    @T.macro
    def prefetch(vals, owner, col):
        for q in T.unroll(val_lines):
            T.evaluate(
                T.call_llvm_intrin(
                    "void",
                    "llvm.prefetch",
                    T.address_of(vals[col * stride + q * 16]),
                    T.int32(0),
                    T.int32(3),
                    T.int32(1),
                )
            )
        for q in T.unroll(owner_lines):
            T.evaluate(
                T.call_llvm_intrin(
                    "void",
                    "llvm.prefetch",
                    T.address_of(owner[col * owner_per_col + q * owner_per_line]),
                    T.int32(0),
                    T.int32(3),
                    T.int32(1),
                )
            )

    return prefetch


# --------------------------------------------------------------------------- linear


def _linear_kernel(m, tab, nbias, has_bias, activation, parallel, simd, prefetch_next):
    """Per sample: compact the non-zeros of x[b], scatter their packed columns, epilogue."""
    n, k = tab.n_out, tab.n_in
    nacc = tab.acc_size
    nval, nown, nres = tab.values.size, tab.owner.size, tab.res_values.size
    odt, pdt, rdt = str(tab.owner.dtype), str(tab.res_ptr.dtype), str(tab.res_owner.dtype)
    compact = _compact_macro(k, simd)
    scatter = _scatter_macro(tab)
    prefetch = _prefetch_macro(tab)
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
            acc = T.alloc_buffer((nacc,), "float32", scope="global")
            active = T.alloc_buffer((k + 8,), "int32", scope="global")
            cnt = T.alloc_buffer((1,), "int32", scope="global")
            for i in T.vectorized(nacc):
                acc[i] = T.float32(0)
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


def _simd(target) -> bool:
    """AVX2 + BMI2 (the vector compaction and scatter); False for no or an unknown target."""
    return target is not None and has_cpu_features(target, "avx2", "bmi2")


def _cost_info(tab: ScatterTables, macs_dense, useful_per_density, kernel_per_density, density,
               bytes_per_density, fixed_bytes) -> dict:  # fmt: skip
    """The cost fields shared by both builders; ``*_per_density`` are at activation density 1."""
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
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got shape {weight.shape}")
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    n, k = weight.shape
    simd = _simd(target)
    tab = _tables(ComplementaryPacked.from_dense(weight, max_groups), vector, simd)
    bias_arr, has_bias = _bias_const(bias, n)
    if parallel is None:
        parallel = m > 1 and num_cores(target) > 1
    func = _linear_kernel(m, tab, bias_arr.size, has_bias, activation, parallel, simd, prefetch)
    slots = tab.slots_per_input
    bytes_per_slot = 4 + tab.owner_bits // 8
    info = {
        "kernel": "sparse_sparse_linear",
        "m": m,
        "n": n,
        "k": k,
        **_cost_info(
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


# --------------------------------------------------------------------------- conv2d


def _conv_kernel(x_shape, tab, kernel_hw, out_hw, pads, strides, dilation, nbias, has_bias,
                 activation, parallel, simd):  # fmt: skip
    """Per sample: compact x[b], scatter each active input through its valid taps, transpose.

    Input (c, ih, iw) reaches output (oh, ow) through tap (kh, kw) when ih + top = oh * sh +
    kh * dh and iw + left = ow * sw + kw * dw, so the valid kh (and kw) form a range: no branch
    per tap. (Walking taps outermost and filtering the active inputs per tap measured 2x slower:
    about half the (input, tap) pairs are invalid on a 14x14 input, an unpredictable branch.)
    """
    bn, ci, h, wd = x_shape
    kh_, kw_ = kernel_hw
    oh, ow = out_hw
    top, left = pads
    sh, sw = strides
    dh, dw = dilation
    o = tab.n_out
    hw = h * wd
    total, npos, row = ci * hw, oh * ow, tab.acc_size
    nval, nown, nres = tab.values.size, tab.owner.size, tab.res_values.size
    odt, pdt, rdt = str(tab.owner.dtype), str(tab.res_ptr.dtype), str(tab.res_owner.dtype)
    compact = _compact_macro(total, simd)
    scatter = _scatter_macro(tab)
    samples = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((bn, ci, h, wd), "float32"),
        vals: T.Buffer((nval,), "float32"),
        owner: T.Buffer((nown,), odt),
        res_ptr: T.Buffer((ci * kh_ * kw_ + 1,), pdt),
        res_owner: T.Buffer((nres,), rdt),
        res_vals: T.Buffer((nres,), "float32"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((bn, o, oh, ow), "float32"),
    ):
        xf = T.decl_buffer((bn * total,), "float32", data=x.data)
        yf = T.decl_buffer((bn * o * npos,), "float32", data=y.data)
        for b in samples(bn):
            acc = T.alloc_buffer((npos * row,), "float32", scope="global")  # [OH*OW, O + stride]
            active = T.alloc_buffer((total + 8,), "int32", scope="global")
            cnt = T.alloc_buffer((1,), "int32", scope="global")
            for i in T.vectorized(npos * row):
                acc[i] = T.float32(0)
            # Step 1. Compact the non-zeros of the sample (flat c, ih, iw).
            cnt[0] = 0
            compact(xf, b * total, active, cnt)
            # Step 2. Scatter every active input through its valid taps (a range per axis).
            # Loops start at 0: TVM 0.27's CanonicalizeLoop does not rewrite an inner loop's
            # bounds when it shifts an outer loop with a non-zero start.
            for j in range(cnt[0]):
                q: T.let = active[j]
                v: T.let = xf[b * total + q]
                c: T.let = q // hw
                th: T.let = (q // wd) % h + top
                tw: T.let = q % wd + left
                kh_lo: T.let = T.max((th - (oh - 1) * sh + dh - 1) // dh, 0)
                kw_lo: T.let = T.max((tw - (ow - 1) * sw + dw - 1) // dw, 0)
                for kh_i in range(T.min(th // dh + 1, kh_) - kh_lo):
                    kh: T.let = kh_lo + kh_i
                    if (th - kh * dh) % sh == 0:
                        for kw_i in range(T.min(tw // dw + 1, kw_) - kw_lo):
                            kw: T.let = kw_lo + kw_i
                            if (tw - kw * dw) % sw == 0:
                                scatter(
                                    acc,
                                    (((th - kh * dh) // sh) * ow + (tw - kw * dw) // sw) * row,
                                    (c * kh_ + kh) * kw_ + kw,
                                    v,
                                    vals,
                                    owner,
                                    res_ptr,
                                    res_owner,
                                    res_vals,
                                )
            # Step 3. Channels-last accumulator -> NCHW, with bias and activation.
            for oc in range(o):
                for p in range(npos):
                    if has_bias:
                        yf[(b * o + oc) * npos + p] = _epilogue(
                            acc[p * row + oc] + bias[oc], activation
                        )
                    else:
                        yf[(b * o + oc) * npos + p] = _epilogue(acc[p * row + oc], activation)

    return kernel


def _valid_taps(size: int, pad: int, k: int, stride: int, dil: int, out: int) -> np.ndarray:
    """For each tap, how many output positions read an in-bounds (not padding) input through it."""
    pos = np.arange(out)[None, :] * stride + np.arange(k)[:, None] * dil - pad
    return ((pos >= 0) & (pos < size)).sum(axis=1)


def sparse_sparse_conv2d(
    x_shape: tuple[int, int, int, int],
    weight_oihw: np.ndarray,
    bias: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    activation: str | None = None,
    target=None,
    *,
    max_groups: int | None = None,
    vector: bool | None = None,
    activation_density: float = DEFAULT_ACTIVATION_DENSITY,
    parallel: bool | None = None,
) -> KernelCall:
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, ``padding=(top, left, bottom, right)``.

    Each non-zero input ``(c, ih, iw)`` scatters, for every tap ``(kh, kw)`` landing on an output
    ``(oh, ow)``, the packed filter column ``k = (c * KH + kh) * KW + kw`` into the outputs'
    channels. Knobs as ``sparse_sparse_linear``; ``parallel`` spreads the batch over threads.
    """
    _check_activation(activation)
    if groups != 1:
        raise ValueError(f"sparse_sparse_conv2d supports groups=1 only, got groups={groups}")
    weight = np.asarray(weight_oihw)
    if weight.ndim != 4:
        raise ValueError(f"expected an OIHW weight, got shape {weight.shape}")
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    bn, ci, h, wd = (int(s) for s in x_shape)
    o, wci, kh, kw = weight.shape
    if wci != ci:
        raise ValueError(f"weight has {wci} input channels, input has {ci}")
    top, left, bottom, right = (int(p) for p in padding)
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"empty conv output for input {x_shape} and kernel {(kh, kw)}")
    simd = _simd(target)
    tab = _tables(ComplementaryPacked.from_conv_weight(weight, max_groups), vector, simd)
    bias_arr, has_bias = _bias_const(bias, o)
    if parallel is None:
        parallel = bn > 1 and num_cores(target) > 1
    func = _conv_kernel(
        (bn, ci, h, wd), tab, (kh, kw), (oh, ow), (top, left), (sh, sw), (dh, dw),
        bias_arr.size, has_bias, activation, parallel, simd,
    )  # fmt: skip
    # Output positions each flat input index k reaches when its input is active (padding never is).
    reach = np.outer(_valid_taps(h, top, kh, sh, dh, oh), _valid_taps(wd, left, kw, sw, dw, ow))
    reach_k = np.tile(reach.reshape(-1), ci)  # [C*KH*KW], k = (c * KH + kh) * KW + kw
    nnz_k = np.count_nonzero(weight.reshape(o, -1), axis=0)
    slots_reached = float(bn * (tab.slots_per_input * reach_k).sum())
    bytes_per_slot = 4 + tab.owner_bits // 8
    info = {
        "kernel": "sparse_sparse_conv2d",
        "out_hw": (oh, ow),
        **_cost_info(
            tab,
            bn * o * ci * kh * kw * oh * ow,
            bn * float((nnz_k * reach_k).sum()),
            slots_reached,
            activation_density,
            slots_reached * bytes_per_slot,
            4 * bn * (ci * h * wd + o * oh * ow),
        ),
    }
    return KernelCall(
        func=_finish(func),
        name="sparse_sparse_conv2d",
        consts=(*tab.consts, bias_arr),
        out_shape=(bn, o, oh, ow),
        info=info,
    )


__all__ = [
    "ACTIVATIONS",
    "ScatterTables",
    "scatter_tables",
    "sparse_sparse_conv2d",
    "sparse_sparse_linear",
    "sparse_sparse_macs",
]
