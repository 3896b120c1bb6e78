"""Sparse-activation x sparse-weight conv2d for x86 CPUs (see ``sparse_sparse_x86``).

Per input position ``(c, ih, iw)``: every filter tap ``(kh, kw)`` that maps it onto an output
``(oh, ow)`` scatters packed column ``k = (c * KH + kh) * KW + kw`` into a channels-last
accumulator ``[OH * OW, O + stride]`` (the slots of one tap land in one contiguous row), which
the epilogue transposes into NCHW. A conv's zero padding is inactive.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from ..formats.complementary import ComplementaryPacked
from ..target import num_cores
from ._conv_dims import DEFAULT_CONV, ConvAttrs, checked_groups1_conv
from ._epilogue import bias_const as _bias_const
from ._epilogue import epilogue as _epilogue
from ._scatter_tir import (
    COMPACT_SPARE,
    compact_compress,
    compact_macro,
    padded,
    scatter_macro,
    scatter_simd,
    zero_fill_macro,
)
from .kernel import KernelCall
from .kernel import finish as _finish
from .scatter_tables import DEFAULT_ACTIVATION_DENSITY, choose_tables, scatter_cost_info


def _conv_kernel(x_shape, tab, kernel_hw, out_hw, pads, strides, dilation, nbias, has_bias,
                 activation, parallel, simd, compress):  # fmt: skip
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
    compact = compact_macro(total, simd, compress)
    scatter = scatter_macro(tab)
    zero_fill = zero_fill_macro(npos * row)
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
            # [OH*OW, O + stride], padded to whole fill steps
            acc = T.alloc_buffer((padded(npos * row),), "float32", scope="global")
            active = T.alloc_buffer((total + COMPACT_SPARE,), "int32", scope="global")
            cnt = T.alloc_buffer((1,), "int32", scope="global")
            zero_fill(acc)
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
    x_shape: tuple[int, int, int, int], weight_oihw: np.ndarray, bias: np.ndarray | None = None,
    conv: ConvAttrs = DEFAULT_CONV, activation: str | None = None, target=None, *,
    max_groups: int | None = None, vector: bool | None = None,
    activation_density: float = DEFAULT_ACTIVATION_DENSITY, parallel: bool | None = None,
) -> KernelCall:  # fmt: skip
    """y = act(conv2d(x, weight) + bias), NCHW / OIHW, ``padding=(top, left, bottom, right)``.

    Each non-zero input ``(c, ih, iw)`` scatters, for every tap ``(kh, kw)`` landing on an output
    ``(oh, ow)``, the packed filter column ``k = (c * KH + kh) * KW + kw`` into the outputs'
    channels. Knobs as ``sparse_sparse_linear``; ``parallel`` spreads the batch over threads.
    """
    weight, dims = checked_groups1_conv(
        "sparse_sparse_conv2d", x_shape, weight_oihw, conv, activation
    )
    (bn, ci, h, wd), (o, kh, kw) = dims.x, dims.kernel
    top, left, bottom, right = dims.pads
    (sh, sw), (dh, dw), (oh, ow) = dims.strides, dims.dilation, dims.out_hw
    simd = scatter_simd(target)
    compress = compact_compress(target)
    tab = choose_tables(ComplementaryPacked.from_conv_weight(weight, max_groups), vector, simd)
    bias_arr, has_bias = _bias_const(bias, o)
    if parallel is None:
        parallel = bn > 1 and num_cores(target) > 1
    func = _conv_kernel(
        (bn, ci, h, wd), tab, (kh, kw), (oh, ow), (top, left), (sh, sw), (dh, dw),
        bias_arr.size, has_bias, activation, parallel, simd, compress,
    )  # fmt: skip
    # Output positions each flat input index k reaches when its input is active (padding never is).
    reach = np.outer(_valid_taps(h, top, kh, sh, dh, oh), _valid_taps(wd, left, kw, sw, dw, ow))
    reach_k = np.tile(reach.reshape(-1), ci)  # [C*KH*KW], k = (c * KH + kh) * KW + kw
    nnz_k = np.count_nonzero(weight.reshape(o, -1), axis=0)
    slots_reached = float(bn * (tab.slots_per_input * reach_k).sum())
    bytes_per_slot = 4 + tab.owner_bits // 8
    info = {
        "kernel": "sparse_sparse_conv2d",
        "compaction": "vpcompressd" if compress else "pdep/pext" if simd else "scalar",
        "out_hw": (oh, ow),
        **scatter_cost_info(
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
