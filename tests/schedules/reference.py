"""Dense float64 numpy references the kernel tests compare against (one copy for all of them)."""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def act(v: np.ndarray, activation: str | None) -> np.ndarray:
    """The fused epilogues: ReLU and ReLU6 keep NaN (as numpy and onnxruntime do), GELU in erf
    form, hard-swish / hard-sigmoid as torch defines them."""
    if activation == "relu":
        return np.where(v < 0, 0.0, v)
    if activation == "gelu":
        return 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))
    if activation == "gelu_tanh":  # GPT-2's tanh approximation
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    if activation in ("sigmoid", "silu"):
        with np.errstate(over="ignore"):
            gate = 1.0 / (1.0 + np.exp(-v))
        return gate if activation == "sigmoid" else v * gate
    if activation == "relu6":  # NaN stays NaN, as with ReLU
        return np.where(v < 0, 0.0, np.where(v > 6, 6.0, v))
    if activation in ("hardswish", "hardsigmoid"):  # torch's relu6(v + 3) / 6; NaN stays NaN
        gate = np.where(v + 3 < 0, 0.0, np.where(v + 3 > 6, 6.0, v + 3)) / 6
        with np.errstate(invalid="ignore"):  # hard-swish(-inf) = -inf * 0 = NaN, as onnxruntime
            return v * gate if activation == "hardswish" else gate
    if activation is not None:
        raise ValueError(f"no reference for activation {activation!r}")
    return v


def sparse_weight(rng, shape, density, block=(1, 1)) -> np.ndarray:
    """A float32 weight keeping about ``density`` of the (r x c) blocks of its [rows, -1] view
    (conv filters flattened OIHW); ``density="one"``: a single non-zero, 1.5, in the middle
    row's last column (the last block of a panel or tile, where off-by-ones hide)."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    if density == "one":
        w = np.zeros((rows, cols), np.float32)
        w[rows // 2, -1] = 1.5
        return w.reshape(shape)
    r, c = block
    grid = rng.random((-(-rows // r), -(-cols // c))) < density
    mask = np.kron(grid, np.ones((r, c), dtype=bool))[:rows, :cols]
    return (rng.standard_normal((rows, cols)) * mask).astype(np.float32).reshape(shape)


def linear_ref(x, w, bias=None, activation=None):
    """act(x @ w.T + bias) in float64; NaN / Inf weights give NaN rows, as expected."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = x.astype(np.float64) @ w.T.astype(np.float64)
    if bias is not None:
        y = y + bias
    return act(y, activation)


def conv_ref(
    x,
    w,
    bias=None,
    strides=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    activation=None,
    groups=1,
):
    """act(conv2d(x, w) + bias) in float64 from strided windows (NaN / Inf weights propagate).

    NCHW / OIHW, ``padding=(top, left, bottom, right)``; ``groups``: output channel block ``g``
    reads input channel block ``g`` (``w`` is ``[O, C / groups, kh, kw]``).
    """
    x = np.pad(
        x.astype(np.float64), ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3]))
    )
    o, cg, kh, kw = w.shape
    og = o // groups
    (sh, sw), (dh, dw) = strides, dilation
    oh = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                patch = x[:, :, rows, cols]
                for g in range(groups):
                    out[:, g * og : (g + 1) * og] += np.einsum(
                        "bchw,oc->bohw",
                        patch[:, g * cg : (g + 1) * cg],
                        w[g * og : (g + 1) * og, :, i, j].astype(np.float64),
                    )
    if bias is not None:
        out += bias[None, :, None, None]
    return act(out, activation)


def check_conv(builder, x_shape, w, bias, conv, activation, target, **knobs):
    """Build ``builder``'s conv kernel for ``target``, run it on a seeded input and compare it
    with ``conv_ref`` (rtol/atol 1e-4); returns the KernelCall."""
    from tvm_sparse.schedules.kernel import run_kernel

    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    call = builder(x_shape, w, bias, conv, activation, target, **knobs)
    out = run_kernel(call, target, x)
    expected = conv_ref(x, w, bias, conv.strides, conv.padding, conv.dilation, activation)
    assert out.shape == call.out_shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    return call
