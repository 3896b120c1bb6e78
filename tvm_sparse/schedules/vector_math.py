"""float32 ``exp`` and ``erf`` as polynomials that LLVM vectorizes, and a pass that uses them.

Why: on x86 TVM's LLVM backend turns ``tirx.exp`` / ``tirx.erf`` into one libm call per element
even inside a vectorized loop. Measured on this machine (Zen 3, 1 thread, 196,608 elements):
exp 0.97 ms, erf 5.0 ms. A BERT encoder at seq 128 runs 12 x 128 x 128 exps per softmax and
128 x 1536 erfs per FFN GELU, so libm alone costs more than the sparse linears. The polynomial
forms below are the ones Cephes (``expf``) and Eigen (``generic_fast_erf_float``, also TVM's
``topi.fast_erf``) use: within a few float32 ulps over the whole range, with the edge cases kept
(NaN stays NaN, exp overflows to +inf and underflows to 0, erf saturates at +-1).
"""

from __future__ import annotations

import tvm
from tvm import tirx

_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1)  # fmt: skip
_EXP_HI = 88.72283935546875  # ln(FLT_MAX): exp(x) overflows float32 above this
_EXP_LO = -87.3365447504019  # below this the result is denormal: flushed to 0

_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def _dtype(expr: tirx.PrimExpr) -> str:
    return str(expr.ty)


def _lanes(expr: tirx.PrimExpr) -> int:
    _, _, lanes = _dtype(expr).partition("x")
    return int(lanes) if lanes else 1


def _f(value: float, like: tirx.PrimExpr) -> tirx.PrimExpr:
    """A float32 constant with as many lanes as ``like``."""
    lanes = _lanes(like)
    scalar = tirx.const(value, "float32")
    return tirx.Broadcast(scalar, lanes) if lanes > 1 else scalar


def _with_lanes(dtype: str, like: tirx.PrimExpr) -> str:
    lanes = _lanes(like)
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def _horner(x: tirx.PrimExpr, coeffs: tuple[float, ...]) -> tirx.PrimExpr:
    acc = _f(coeffs[0], x)
    for c in coeffs[1:]:
        acc = acc * x + _f(c, x)
    return acc


def _bind(value: tirx.PrimExpr, name: str, body) -> tirx.PrimExpr:
    """``let name = value in body(name)``: the argument is evaluated once."""
    var = tirx.Var(name, _dtype(value))
    return tirx.Let(var, value, body(var))


def _pow2(n: tirx.PrimExpr) -> tirx.PrimExpr:
    """2^n for a whole-valued float32 ``n`` in [-126, 127], built in the exponent bits."""
    as_int = _with_lanes("int32", n)
    bits = tirx.shift_left(tirx.Cast(as_int, n) + tirx.const(127, as_int), tirx.const(23, as_int))
    return tirx.reinterpret(_dtype(n), bits)


def exp_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32, scalar or vector (Cephes expf: reduction by ln 2, degree-5 poly)."""

    def body(v):
        c = tirx.max(tirx.min(v, _f(_EXP_HI, v)), _f(_EXP_LO, v))
        # 2^n must stay a normal float: n <= 127 (then r runs up to ln 2 near the top)
        n = tirx.min(tirx.floor(c * _f(_LOG2E, v) + _f(0.5, v)), _f(127.0, v))
        r = c - n * _f(_LN2_HI, v) - n * _f(_LN2_LO, v)
        y = _horner(r, _EXP_POLY) * (r * r) + r + _f(1.0, v)
        scaled = y * _pow2(n)
        inf = tirx.reinterpret(_dtype(v), tirx.const(0x7F800000, _with_lanes("int32", v)))
        out = tirx.Select(v > _f(_EXP_HI, v), inf, scaled)
        out = tirx.Select(v < _f(_EXP_LO, v), _f(0.0, v), out)
        return tirx.Select(tirx.isnan(v), v, out)  # NaN in, NaN out

    return _bind(x, "exp_x", body)


# exp's polynomial in -r: e^(-r') = Q(r') r'^2 - r' + 1 with Q's odd-power coefficients negated,
# so e^(-x) needs no negation of x
_EXP_POLY_NEG = tuple(c * (-1) ** (len(_EXP_POLY) - 1 - i) for i, c in enumerate(_EXP_POLY))


def _exp_neg_clamped(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """e^(-x) for x clamped to [-88, 88] (Cephes form: no overflow or underflow case is
    needed there). NaN does not propagate: the clamp turns it into a bound."""
    t = tirx.min(tirx.max(v, _f(-88.0, v)), _f(88.0, v))
    n = tirx.floor(t * _f(-_LOG2E, v) + _f(0.5, v))  # e^(-t) = 2^n e^(-r'), r' = t + n ln 2

    def scaled(r):
        return (_horner(r, _EXP_POLY_NEG) * (r * r) + (_f(1.0, v) - r)) * _pow2(n)

    return _bind(t + n * _f(_LN2_HI, v) + n * _f(_LN2_LO, v), "exp_r", scaled)


def sigmoid_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 / (1 + exp(-x)) for float32, scalar or vector, NaN kept. exp's argument is clamped to
    [-88, 88], where the sigmoid is saturated anyway (1 / (1 + e^88) is below float32's normal
    range). The SE gates of EfficientNet run it."""

    def body(v):
        return tirx.Select(tirx.isnan(v), v, _f(1.0, v) / (_f(1.0, v) + _exp_neg_clamped(v)))

    return _bind(x, "sigmoid_x", body)


def silu_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """x / (1 + exp(-x)) (SiLU, swish) for float32, scalar or vector. Dividing x keeps NaN and
    the infinities without a select (silu(-inf) is -inf / e^88 = -inf, as x * sigmoid(x)
    gave). Every output of EfficientNet's convs runs it: 18 vector ops where x * sigmoid(x)
    took 25 (Zen 4, 16 lanes: 4.06 against 4.80 ns a vector; 8 lanes 2.68 against 3.27)."""
    return _bind(x, "silu_x", lambda v: v / (_f(1.0, v) + _exp_neg_clamped(v)))


def erf_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """erf(x) for float32, scalar or vector (Eigen's rational approximation on [-4, 4])."""

    def body(v):
        c = tirx.max(tirx.min(v, _f(4.0, v)), _f(-4.0, v))

        def rational(c2):
            return c * _horner(c2, _ERF_P) / _horner(c2, _ERF_Q)

        out = _bind(c * c, "erf_x2", rational)
        return tirx.Select(tirx.isnan(v), v, out)

    return _bind(x, "erf_x", body)


# tanh as Eigen's (and TVM's topi.fast_tanh) rational function: odd degree 13 over even degree 6
# on [-9, 9] (tanh(9) rounds to 1 - 2^-24 in float32)
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)  # fmt: skip
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03)  # fmt: skip


def tanh_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """tanh(x) for float32, scalar or vector: a rational function, odd, so accurate relative
    to x near 0 too (TVM's own lowering, (1 - e^-2x) / (1 + e^-2x), cancels there: 1.4e-3
    relative error at 1e-5); +-inf give +-1, NaN stays NaN."""

    def body(v):
        c = tirx.max(tirx.min(v, _f(9.0, v)), _f(-9.0, v))

        def rational(c2):
            return c * _horner(c2, _TANH_P) / _horner(c2, _TANH_Q)

        return tirx.Select(tirx.isnan(v), v, _bind(c * c, "tanh_x2", rational))

    return _bind(x, "tanh_x", body)


_POLYNOMIALS = {"tirx.exp": exp_f32, "tirx.erf": erf_f32, "tirx.tanh": tanh_f32}
_LEVEL = 100  # above TVM's own rules (level 10), so ours is the one LowerIntrin picks
_installed = False


def _lowering(op_name: str, fallback):
    poly = _POLYNOMIALS[op_name]

    def lower(call):
        dtype = _dtype(call)
        if dtype == "float32" or dtype.startswith("float32x"):
            return poly(call.args[0])
        return fallback(call)

    return lower


def install_llvm_lowering() -> None:
    """Make float32 ``exp`` / ``erf`` lower to the polynomials for every llvm build.

    TIR has no Python mutator in TVM 0.27, so the hook is the intrinsic lowering table that
    ``LowerIntrin`` consults after vectorization: every kernel (ours, TVM's legalized softmax,
    the GELU epilogues) gets the vector form. Other dtypes keep TVM's own lowering. Idempotent.
    """
    global _installed
    if _installed:
        return
    for op_name in _POLYNOMIALS:
        op = tvm.ir.Op.get(op_name)
        fallback = op.get_attr("llvm.FLowerIntrinsic") or op.get_attr("default.FLowerIntrinsic")
        tirx.register_intrin_lowering(op_name, "llvm", f=_lowering(op_name, fallback), level=_LEVEL)
    _installed = True
