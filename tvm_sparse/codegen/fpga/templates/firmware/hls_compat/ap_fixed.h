// Stand-in for Xilinx ap_fixed.h, for C simulation with plain g++ (tvm-sparse).
//
// Only what the generated engines use: ap_fixed<W, I, Q, O> with W <= 56, the quantization modes
// AP_TRN (floor, the default) and AP_RND (round half up), the overflow modes AP_WRAP (default)
// and AP_SAT; exact products (ap_fixed<W1+W2, I1+I2>) and sums (one more integer bit),
// quantization on assignment and range(hi, lo) of the word (k-WTA keys; setting only the whole
// word: constant tables' raw words), as in the real
// headers. The value is raw * 2^-(W-I) in an int64.
// When the open-source ap_types (github.com/Xilinx/HLS_arbitrary_Precision_Types) are on the
// include path they win: this directory is searched last.
#ifndef TVM_SPARSE_AP_FIXED_COMPAT_H_
#define TVM_SPARSE_AP_FIXED_COMPAT_H_

#include <assert.h>
#include <stdint.h>

#include <cmath>

enum ap_q_mode { AP_RND, AP_RND_ZERO, AP_RND_MIN_INF, AP_RND_INF, AP_RND_CONV, AP_TRN, AP_TRN_ZERO };
enum ap_o_mode { AP_SAT, AP_SAT_ZERO, AP_SAT_SYM, AP_WRAP, AP_WRAP_SM };

namespace ap_compat {
// constexpr helpers: weight tables of ap_fixed are then constant-initialized (fast to compile)
constexpr double pow2(int e) {
    double r = 1.0;
    for (int i = 0; i < e; i++) r *= 2.0;
    for (int i = 0; i > e; i--) r *= 0.5;
    return r;
}
constexpr int64_t floor_i64(double x) {
    const double lim = 4.6e18;  // saturate far outside any supported width
    if (x >= lim) return (int64_t)lim;
    if (x <= -lim) return -(int64_t)lim;
    const int64_t i = (int64_t)x;
    return ((double)i > x) ? i - 1 : i;
}
// raw value with `from` fraction bits -> `to` fraction bits, rounding per Q
constexpr int64_t requant(int64_t raw, int from, int to, ap_q_mode q) {
    if (to >= from) return raw * ((int64_t)1 << (to - from));
    const int s = from - to;
    if (q == AP_RND) return (raw + ((int64_t)1 << (s - 1))) >> s;  // >> floors: round half up
    return raw >> s;                                               // AP_TRN: floor
}
constexpr int64_t overflow(int64_t raw, int w, ap_o_mode o) {
    const int64_t hi = ((int64_t)1 << (w - 1)) - 1, lo = -((int64_t)1 << (w - 1));
    if (o == AP_SAT || o == AP_SAT_SYM || o == AP_SAT_ZERO) return raw > hi ? hi : (raw < lo ? lo : raw);
    const uint64_t m = ((uint64_t)1 << w) - 1;  // wrap: keep w bits, sign-extend
    uint64_t u = (uint64_t)raw & m;
    if (u >> (w - 1)) u |= ~m;
    return (int64_t)u;
}
}  // namespace ap_compat

template <int W, int I, ap_q_mode Q = AP_TRN, ap_o_mode O = AP_WRAP, int N = 0> struct ap_fixed {
    static_assert(W >= 1 && W <= 62, "compat ap_fixed supports 1..62 bits");
    static const int F = W - I;
    int64_t raw;

    constexpr ap_fixed() : raw(0) {}
    constexpr ap_fixed(double d)
        : raw(ap_compat::overflow(
              ap_compat::floor_i64(d * ap_compat::pow2(F) + (Q == AP_RND ? 0.5 : 0.0)), W, O)) {}
    constexpr ap_fixed(float d) : ap_fixed((double)d) {}
    constexpr ap_fixed(int v) : ap_fixed((double)v) {}
    template <int W2, int I2, ap_q_mode Q2, ap_o_mode O2, int N2>
    ap_fixed(const ap_fixed<W2, I2, Q2, O2, N2> &o) {
        raw = ap_compat::overflow(ap_compat::requant(o.raw, W2 - I2, F, Q), W, O);
    }

    double to_double() const { return std::ldexp((double)raw, -F); }
    float to_float() const { return (float)to_double(); }
    operator double() const { return to_double(); }
    // bits hi..lo of the W-bit word, zero-extended (what the real af_range_ref::to_uint64 gives)
    struct range_ref {
        uint64_t v;
        uint64_t to_uint64() const { return v; }
    };
    range_ref range(int hi, int lo) const {
        const int n = hi - lo + 1;
        const uint64_t mask = n >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1);
        return range_ref{((uint64_t)raw >> lo) & mask};
    }
    // bits hi..lo of a variable: read as above; set from an integer only as the whole word
    // (range(W - 1, 0) = v: a constant table's raw word), sign-extended as the word is
    struct word_ref {
        ap_fixed *self;
        int hi, lo;
        uint64_t to_uint64() const { return ((const ap_fixed *)self)->range(hi, lo).to_uint64(); }
        word_ref &operator=(int64_t v) {
            assert(hi == W - 1 && lo == 0 && "compat ap_fixed sets only the whole word");
            self->raw = ap_compat::overflow(v, W, AP_WRAP);
            return *this;
        }
    };
    word_ref range(int hi, int lo) { return word_ref{this, hi, lo}; }

    template <int W2, int I2, ap_q_mode Q2, ap_o_mode O2, int N2>
    ap_fixed &operator+=(const ap_fixed<W2, I2, Q2, O2, N2> &o) {
        const int f = F > (W2 - I2) ? F : (W2 - I2);
        const int64_t sum = ap_compat::requant(raw, F, f, AP_TRN) +
                            ap_compat::requant(o.raw, W2 - I2, f, AP_TRN);
        raw = ap_compat::overflow(ap_compat::requant(sum, f, F, Q), W, O);
        return *this;
    }
};

// exact product and sum, as the real headers type them
template <int W1, int I1, ap_q_mode Q1, ap_o_mode O1, int N1, int W2, int I2, ap_q_mode Q2,
          ap_o_mode O2, int N2>
ap_fixed<W1 + W2, I1 + I2> operator*(const ap_fixed<W1, I1, Q1, O1, N1> &a,
                                     const ap_fixed<W2, I2, Q2, O2, N2> &b) {
    ap_fixed<W1 + W2, I1 + I2> r;
    r.raw = a.raw * b.raw;
    return r;
}

// an int8_t weight times a value (int8 builds), exact as the real headers type it
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
ap_fixed<W + 8, I + 8> operator*(signed char a, const ap_fixed<W, I, Q, O, N> &b) {
    ap_fixed<W + 8, I + 8> r;
    r.raw = (int64_t)a * b.raw;
    return r;
}

template <int W1, int I1, ap_q_mode Q1, ap_o_mode O1, int N1, int W2, int I2, ap_q_mode Q2,
          ap_o_mode O2, int N2>
ap_fixed<((W1 - I1) > (W2 - I2) ? (W1 - I1) : (W2 - I2)) + (I1 > I2 ? I1 : I2) + 1,
         (I1 > I2 ? I1 : I2) + 1>
operator+(const ap_fixed<W1, I1, Q1, O1, N1> &a, const ap_fixed<W2, I2, Q2, O2, N2> &b) {
    const int f = (W1 - I1) > (W2 - I2) ? (W1 - I1) : (W2 - I2);
    ap_fixed<((W1 - I1) > (W2 - I2) ? (W1 - I1) : (W2 - I2)) + (I1 > I2 ? I1 : I2) + 1,
             (I1 > I2 ? I1 : I2) + 1>
        r;
    r.raw = ap_compat::requant(a.raw, W1 - I1, f, AP_TRN) +
            ap_compat::requant(b.raw, W2 - I2, f, AP_TRN);
    return r;
}

// comparisons (exact, through double: every supported value is exact in a double)
#define AP_COMPAT_CMP(op)                                                                        \
    template <int W1, int I1, ap_q_mode Q1, ap_o_mode O1, int N1, int W2, int I2, ap_q_mode Q2,  \
              ap_o_mode O2, int N2>                                                              \
    bool operator op(const ap_fixed<W1, I1, Q1, O1, N1> &a, const ap_fixed<W2, I2, Q2, O2, N2> &b) { \
        return a.to_double() op b.to_double();                                                   \
    }                                                                                            \
    template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>                                     \
    bool operator op(const ap_fixed<W, I, Q, O, N> &a, int b) {                                  \
        return a.to_double() op(double) b;                                                       \
    }
AP_COMPAT_CMP(<)
AP_COMPAT_CMP(>)
AP_COMPAT_CMP(<=)
AP_COMPAT_CMP(>=)
AP_COMPAT_CMP(==)
AP_COMPAT_CMP(!=)
#undef AP_COMPAT_CMP

#endif
