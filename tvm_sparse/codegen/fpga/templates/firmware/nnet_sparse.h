// Engines of the tvm-sparse FPGA backend (copied verbatim into every project, like hls4ml's
// nnet_utils). Each engine processes one sample: it reads its input stream, computes, and writes
// its output stream; the top function runs the engines as a DATAFLOW pipeline over samples.
//
// Streams:
//   dense  hls::stream<nnet::beat<T, PACK>>  PACK consecutive values (flat NCHW order) per beat
//   sparse hls::stream<nnet::elem<T>>        one (index, value) per non-zero, ascending index,
//                                            then one element with last = true
// Weights live in per-layer headers (weights/<layer>.h) and hold only what the engine reads:
// dense [O*K]; sparse-dense CSR (val, off = input offset, ptr); sparse-sparse complementary
// packed columns (val, owner; G slots per input, owner == O marks an empty slot) + residual.
#ifndef NNET_SPARSE_H_
#define NNET_SPARSE_H_

#include <stdint.h>
#include <string.h>

#include "ap_fixed.h"
#include "hls_stream.h"

namespace nnet {

template <class T, int PACK> struct beat { T v[PACK]; };

template <class T> struct elem {
    uint32_t idx;
    T val;
    bool last;
};

// --- number helpers ----------------------------------------------------------------------------
inline float to_float(float x) { return x; }
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
inline float to_float(const ap_fixed<W, I, Q, O, N> &x) { return x.to_float(); }

// Order-preserving unsigned key of a float (-0.0 counts as +0.0, as IEEE >= does). Every NaN,
// whatever its sign, keys above +inf (as the CPU kernel and onnxruntime's TopK rank it).
const uint32_t KEY_POS_INF = 0xFF800000u;
inline uint32_t float_key(float x) {
    if (x == 0.0f) x = 0.0f;
    uint32_t bits;
    memcpy(&bits, &x, sizeof(bits));
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x80000000u | (bits & 0x7FFFFFFFu);  // NaN
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// k-WTA ranks: float (float, ap_fixed<W,I> builds: the value as a float) or int8's fixed-point
// rank_t (x, or x * boost exactly). rank_key orders them as unsigned integers.
inline void to_rank(float &r, float x) { r = x; }
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
inline void to_rank(float &r, const ap_fixed<W, I, Q, O, N> &x) { r = x.to_float(); }
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N, int W2, int I2, ap_q_mode Q2,
          ap_o_mode O2, int N2>
inline void to_rank(ap_fixed<W, I, Q, O, N> &r, const ap_fixed<W2, I2, Q2, O2, N2> &x) { r = x; }

inline uint32_t rank_key(float r) { return float_key(r); }
// A W-bit two's complement word as offset binary: unsigned order is the signed order.
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
inline uint32_t rank_key(ap_fixed<W, I, Q, O, N> r) {
    static_assert(W <= 32, "a k-WTA rank key is at most 32 bits");
    return (uint32_t)r.range(W - 1, 0).to_uint64() ^ (1u << (W - 1));
}

// --- stream <-> buffer --------------------------------------------------------------------------
template <class T, int N, int PACK>
void read_all(hls::stream<beat<T, PACK> > &s, T (&buf)[N]) {
ReadBeats:
    for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
        beat<T, PACK> x = s.read();
        for (int j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            buf[b * PACK + j] = x.v[j];
        }
    }
}

template <unsigned LANES, class T, int N, int PACK>
void write_all(const T (&buf)[N], hls::stream<beat<T, PACK> > &s) {
WriteBeats:
    for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
        beat<T, PACK> x;
        for (int j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            x.v[j] = buf[b * PACK + j];
        }
        s.write(x);
    }
}

// Sparse output: only the non-zeros leave, then the end marker. LANES positions are scanned per
// cycle (in hardware a compaction network feeds the stream one non-zero per cycle).
template <unsigned LANES, class T, int N> void write_all(const T (&buf)[N], hls::stream<elem<T> > &s) {
WriteNonZeros:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = LANES
        if (buf[i] != 0) {
            elem<T> e;
            e.idx = i;
            e.val = buf[i];
            e.last = false;
            s.write(e);
        }
    }
    elem<T> end;
    end.idx = N;
    end.val = 0;
    end.last = true;
    s.write(end);
}

// Output o of a weighted layer from its accumulator (bias included): the fused ReLU, then the
// output format. CONFIG_T::requantize converts (float, ap_fixed) or, for int8's integer weights,
// multiplies in output channel o's scale.
template <class CONFIG_T>
inline typename CONFIG_T::out_t finish(typename CONFIG_T::accum_t acc, unsigned o) {
    if (CONFIG_T::relu && acc < 0) return 0;
    return CONFIG_T::requantize(acc, o);
}

// Copy the input into a zero-padded [C][HP][WP] buffer, so weight offsets need no bounds checks.
template <class CONFIG_T>
void pad_input(const typename CONFIG_T::in_t (&x)[CONFIG_T::n_in],
               typename CONFIG_T::in_t (&xp)[CONFIG_T::n_padded]) {
    for (unsigned i = 0; i < CONFIG_T::n_padded; i++) xp[i] = 0;
    for (unsigned c = 0; c < CONFIG_T::in_c; c++)
        for (unsigned y = 0; y < CONFIG_T::in_h; y++)
            for (unsigned x_ = 0; x_ < CONFIG_T::in_w; x_++) {
#pragma HLS PIPELINE II = 1
                xp[(c * CONFIG_T::pad_h + y + CONFIG_T::pad_top) * CONFIG_T::pad_w + x_ +
                   CONFIG_T::pad_left] = x[(c * CONFIG_T::in_h + y) * CONFIG_T::in_w + x_];
            }
}

// --- dense-activation engines (dense or sparse-dense weights x every activation) ---------------
// One loop nest per layer kind serves both weight stores: the store is a small class whose
// window() is filter o's dot product with the conv window at offset base of the padded input and
// whose row() is row o's dot product with a linear layer's input, as hls4ml passes its products
// to a layer as classes. Everything inlines, so each engine is still one loop nest.

// Dense weights [O][n_kin]: every tap of the window, every input of the row.
template <class CONFIG_T> struct dense_weights {
    const typename CONFIG_T::weight_t *w;

    typename CONFIG_T::accum_t window(const typename CONFIG_T::in_t xp[], unsigned o,
                                      unsigned base) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t acc = 0;
    Taps:
        for (unsigned c = 0; c < CONFIG_T::in_c; c++)
            for (unsigned kh = 0; kh < CONFIG_T::kern_h; kh++)
                for (unsigned kw = 0; kw < CONFIG_T::kern_w; kw++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = CONFIG_T::simd
                    const unsigned k = (c * CONFIG_T::kern_h + kh) * CONFIG_T::kern_w + kw;
                    const unsigned tap =
                        (c * CONFIG_T::pad_h + kh * CONFIG_T::dil_h) * CONFIG_T::pad_w +
                        kw * CONFIG_T::dil_w;
                    acc += w[o * CONFIG_T::n_kin + k] * xp[base + tap];
                }
        return acc;
    }

    typename CONFIG_T::accum_t row(const typename CONFIG_T::in_t x[], unsigned o) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t acc = 0;
    Inputs:
        for (unsigned k = 0; k < CONFIG_T::n_kin; k++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = CONFIG_T::simd
            acc += w[o * CONFIG_T::n_kin + k] * x[k];
        }
        return acc;
    }
};

// Sparse-dense weights (CSR): row o's non-zeros are val[ptr[o] .. ptr[o+1]); off[j] is the input
// offset to multiply with (conv: in the padded buffer, relative to the window origin).
template <class CONFIG_T> struct csr_weights {
    const typename CONFIG_T::weight_t *val;
    const uint32_t *off;
    const uint32_t *ptr;

    typename CONFIG_T::accum_t window(const typename CONFIG_T::in_t xp[], unsigned o,
                                      unsigned base) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t acc = 0;
    NonZeros:
        for (uint32_t j = ptr[o]; j < ptr[o + 1]; j++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = CONFIG_T::simd
            acc += val[j] * xp[off[j] + base];
        }
        return acc;
    }

    typename CONFIG_T::accum_t row(const typename CONFIG_T::in_t x[], unsigned o) const {
#pragma HLS INLINE
        return window(x, o, 0);
    }
};

// Every (filter, output pixel) of a conv, PE pixels at a time, over the zero-padded input.
template <class CONFIG_T, class WEIGHTS, class IN_S, class OUT_S>
void conv2d_pixels(IN_S &in, OUT_S &out, const WEIGHTS &weights,
                   const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
#pragma HLS INLINE
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::in_t xp[CONFIG_T::n_padded];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    read_all(in, x);
    pad_input<CONFIG_T>(x, xp);
Filters:
    for (unsigned o = 0; o < CONFIG_T::out_c; o++) {
    Pixels:
        for (unsigned p = 0; p < CONFIG_T::out_h * CONFIG_T::out_w; p++) {
#pragma HLS UNROLL factor = CONFIG_T::pe
            const unsigned oy = p / CONFIG_T::out_w, ox = p % CONFIG_T::out_w;
            const unsigned base =
                oy * CONFIG_T::stride_h * CONFIG_T::pad_w + ox * CONFIG_T::stride_w;
            y[o * CONFIG_T::out_h * CONFIG_T::out_w + p] =
                finish<CONFIG_T>(weights.window(xp, o, base) + b[o], o);
        }
    }
    write_all<CONFIG_T::lanes>(y, out);
}

// Every output of a linear layer, PE outputs at a time.
template <class CONFIG_T, class WEIGHTS, class IN_S, class OUT_S>
void linear_outputs(IN_S &in, OUT_S &out, const WEIGHTS &weights,
                    const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
#pragma HLS INLINE
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    read_all(in, x);
Outputs:
    for (unsigned o = 0; o < CONFIG_T::out_c; o++) {
#pragma HLS UNROLL factor = CONFIG_T::pe
        y[o] = finish<CONFIG_T>(weights.row(x, o) + b[o], o);
    }
    write_all<CONFIG_T::lanes>(y, out);
}

template <class CONFIG_T, class IN_S, class OUT_S>
void conv2d_dense(IN_S &in, OUT_S &out,
                  const typename CONFIG_T::weight_t w[CONFIG_T::out_c * CONFIG_T::n_kin],
                  const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const dense_weights<CONFIG_T> weights = {w};
    conv2d_pixels<CONFIG_T>(in, out, weights, b);
}

template <class CONFIG_T, class IN_S, class OUT_S>
void linear_dense(IN_S &in, OUT_S &out,
                  const typename CONFIG_T::weight_t w[CONFIG_T::out_c * CONFIG_T::n_kin],
                  const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const dense_weights<CONFIG_T> weights = {w};
    linear_outputs<CONFIG_T>(in, out, weights, b);
}

template <class CONFIG_T, class IN_S, class OUT_S>
void conv2d_sparse_dense(IN_S &in, OUT_S &out, const typename CONFIG_T::weight_t val[],
                         const uint32_t off[], const uint32_t ptr[CONFIG_T::out_c + 1],
                         const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const csr_weights<CONFIG_T> weights = {val, off, ptr};
    conv2d_pixels<CONFIG_T>(in, out, weights, b);
}

template <class CONFIG_T, class IN_S, class OUT_S>
void linear_sparse_dense(IN_S &in, OUT_S &out, const typename CONFIG_T::weight_t val[],
                         const uint32_t off[], const uint32_t ptr[CONFIG_T::out_c + 1],
                         const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const csr_weights<CONFIG_T> weights = {val, off, ptr};
    linear_outputs<CONFIG_T>(in, out, weights, b);
}

// --- sparse-sparse engines (packed non-zero weights x non-zero activations) --------------------
// For each active input k: its packed column (G slots of value + owner) is multiplied by the
// activation and scatter-added into the owners' accumulators; slots of one column have distinct
// owners (complementary packing), so the G lanes never collide. Then the residual of column k.
template <class CONFIG_T> struct packed_columns {
    const typename CONFIG_T::weight_t *val;
    const typename CONFIG_T::owner_t *owner;
    const uint32_t *rptr;
    const typename CONFIG_T::owner_t *ridx;
    const typename CONFIG_T::weight_t *rval;

    // Scatter-add activation v of input k, SLOTS slots of its column at a time; output o's
    // accumulator is acc[o * stride + pix] (conv: one plane of stride pixels per output channel).
    template <unsigned SLOTS, int N>
    void scatter(typename CONFIG_T::accum_t (&acc)[N], unsigned stride, unsigned pix, uint32_t k,
                 typename CONFIG_T::in_t v) const {
#pragma HLS INLINE
    PackedColumn:
        for (unsigned g = 0; g < CONFIG_T::groups; g++) {
#pragma HLS UNROLL factor = SLOTS
            const unsigned o = owner[k * CONFIG_T::groups + g];
            acc[o * stride + pix] += val[k * CONFIG_T::groups + g] * v;
        }
    Residual:
        for (uint32_t r = rptr[k]; r < rptr[k + 1]; r++) {
#pragma HLS UNROLL factor = CONFIG_T::res_lanes
            acc[ridx[r] * stride + pix] += rval[r] * v;
        }
    }
};

// The next non-zero of a sparse stream into e; false at the end marker.
template <class T> inline bool next_nonzero(hls::stream<elem<T> > &in, elem<T> &e) {
#pragma HLS INLINE
    e = in.read();
    return !e.last;
}

template <class CONFIG_T, class OUT_S>
void linear_sparse_sparse(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out,
                          const typename CONFIG_T::weight_t val[CONFIG_T::n_kin * CONFIG_T::groups],
                          const typename CONFIG_T::owner_t owner[CONFIG_T::n_kin * CONFIG_T::groups],
                          const uint32_t rptr[CONFIG_T::n_kin + 1],
                          const typename CONFIG_T::owner_t ridx[],
                          const typename CONFIG_T::weight_t rval[],
                          const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const packed_columns<CONFIG_T> columns = {val, owner, rptr, ridx, rval};
    typename CONFIG_T::accum_t acc[CONFIG_T::out_c + 1];  // slot out_c swallows empty slots
#pragma HLS ARRAY_PARTITION variable = acc complete
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    for (unsigned o = 0; o <= CONFIG_T::out_c; o++) {
#pragma HLS UNROLL
        acc[o] = 0;
    }
    elem<typename CONFIG_T::in_t> e;
ActiveInputs:
    while (next_nonzero(in, e)) {
        columns.template scatter<CONFIG_T::slots>(acc, 1, 0, e.idx, e.val);
    }
    for (unsigned o = 0; o < CONFIG_T::out_c; o++) {
#pragma HLS UNROLL
        y[o] = finish<CONFIG_T>(acc[o] + b[o], o);
    }
    write_all<CONFIG_T::lanes>(y, out);
}

template <class CONFIG_T, class OUT_S>
void conv2d_sparse_sparse(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out,
                          const typename CONFIG_T::weight_t val[CONFIG_T::n_kin * CONFIG_T::groups],
                          const typename CONFIG_T::owner_t owner[CONFIG_T::n_kin * CONFIG_T::groups],
                          const uint32_t rptr[CONFIG_T::n_kin + 1],
                          const typename CONFIG_T::owner_t ridx[],
                          const typename CONFIG_T::weight_t rval[],
                          const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const unsigned OHW = CONFIG_T::out_h * CONFIG_T::out_w;
    // [out_c + 1][OH*OW]: row out_c swallows empty slots
    typename CONFIG_T::accum_t acc[(CONFIG_T::out_c + 1) * CONFIG_T::out_h * CONFIG_T::out_w];
#pragma HLS ARRAY_PARTITION variable = acc block factor = CONFIG_T::acc_banks
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
ClearAccumulators:
    for (unsigned p = 0; p < OHW; p++) {
#pragma HLS PIPELINE II = 1
        for (unsigned o = 0; o <= CONFIG_T::out_c; o++) acc[o * OHW + p] = 0;  // one per bank
    }
    const packed_columns<CONFIG_T> columns = {val, owner, rptr, ridx, rval};
    elem<typename CONFIG_T::in_t> e;
ActiveInputs:
    while (next_nonzero(in, e)) {
        const unsigned c = e.idx / (CONFIG_T::in_h * CONFIG_T::in_w);
        const unsigned rem = e.idx % (CONFIG_T::in_h * CONFIG_T::in_w);
        const int y_in = rem / CONFIG_T::in_w + CONFIG_T::pad_top;
        const int x_in = rem % CONFIG_T::in_w + CONFIG_T::pad_left;
    KernelRows:
        for (unsigned kh = 0; kh < CONFIG_T::kern_h; kh++) {
        KernelCols:
            for (unsigned kw = 0; kw < CONFIG_T::kern_w; kw++) {
#pragma HLS UNROLL factor = CONFIG_T::taps
                // the output pixel whose window puts tap (kh, kw) on this input
                const int ty = y_in - (int)(kh * CONFIG_T::dil_h);
                const int tx = x_in - (int)(kw * CONFIG_T::dil_w);
                if (ty < 0 || tx < 0 || ty % CONFIG_T::stride_h || tx % CONFIG_T::stride_w)
                    continue;
                const unsigned oy = ty / CONFIG_T::stride_h, ox = tx / CONFIG_T::stride_w;
                if (oy >= CONFIG_T::out_h || ox >= CONFIG_T::out_w) continue;
                const unsigned pix = oy * CONFIG_T::out_w + ox;
                const unsigned k = (c * CONFIG_T::kern_h + kh) * CONFIG_T::kern_w + kw;
                // a whole column per tap (factor = groups: complete unrolling)
                columns.template scatter<CONFIG_T::groups>(acc, OHW, pix, k, e.val);
            }
        }
    }
Finish:
    for (unsigned p = 0; p < OHW; p++) {
#pragma HLS PIPELINE II = 1
        for (unsigned o = 0; o < CONFIG_T::out_c; o++)
            y[o * OHW + p] = finish<CONFIG_T>(acc[o * OHW + p] + b[o], o);
    }
    write_all<CONFIG_T::lanes>(y, out);
}

// --- k-winners-take-all -------------------------------------------------------------------------
// Global per sample: keep x where rank >= the k-th largest rank (ties all win), rank = x or
// x * boost. NaN ranks above everything, so it takes a winner's place, but a NaN is never kept
// (a float compare with it is false), and when the k-th largest is NaN nothing is kept: the
// CPU kernel's and onnxruntime's answer. The k-th largest is found by a 4-pass radix select on 8-bit digits of the
// order-preserving float key: O(n) per pass, no sort.
template <unsigned N, unsigned LANES>
uint32_t kth_largest_key(const uint32_t (&key)[N], unsigned k) {
    uint32_t prefix = 0, mask = 0;
    unsigned remaining = k;
RadixPasses:
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        unsigned hist[256];
        for (int d = 0; d < 256; d++) hist[d] = 0;
    Histogram:
        for (unsigned i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = LANES
            if ((key[i] & mask) == prefix) hist[(key[i] >> shift) & 255u]++;
        }
        unsigned above = 0;
        int digit = 255;
    FindDigit:
        for (; digit > 0; digit--) {
            if (above + hist[digit] >= remaining) break;
            above += hist[digit];
        }
        remaining -= above;
        prefix |= (uint32_t)digit << shift;
        mask |= 255u << shift;
    }
    return prefix;
}

template <class CONFIG_T, class IN_S, class OUT_S>
void kwta(IN_S &in, OUT_S &out, const typename CONFIG_T::boost_t boost[CONFIG_T::n_boost]) {
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    uint32_t key[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_in];
    read_all(in, x);
Rank:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = CONFIG_T::lanes
        typename CONFIG_T::rank_t r;
        to_rank(r, x[i]);
        if (CONFIG_T::boosted) r = r * boost[i / CONFIG_T::boost_stride];
        key[i] = rank_key(r);
    }
    const uint32_t kth = kth_largest_key<CONFIG_T::n_in, CONFIG_T::lanes>(key, CONFIG_T::k);
Select:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = CONFIG_T::lanes
        const bool kept = key[i] >= kth && key[i] <= KEY_POS_INF;  // NaN keys lie above +inf
        y[i] = kept ? x[i] : (typename CONFIG_T::in_t)0;
    }
    write_all<CONFIG_T::lanes>(y, out);
}

// --- max pooling ----------------------------------------------------------------------------------
template <class CONFIG_T, class IN_S, class OUT_S> void maxpool2d(IN_S &in, OUT_S &out) {
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    read_all(in, x);
    for (unsigned c = 0; c < CONFIG_T::out_c; c++)
        for (unsigned oy = 0; oy < CONFIG_T::out_h; oy++)
            for (unsigned ox = 0; ox < CONFIG_T::out_w; ox++) {
#pragma HLS PIPELINE II = 1
                typename CONFIG_T::in_t m =
                    x[(c * CONFIG_T::in_h + oy * CONFIG_T::stride_h) * CONFIG_T::in_w +
                      ox * CONFIG_T::stride_w];
                for (unsigned i = 0; i < CONFIG_T::pool_h; i++)
                    for (unsigned j = 0; j < CONFIG_T::pool_w; j++) {
                        typename CONFIG_T::in_t v =
                            x[(c * CONFIG_T::in_h + oy * CONFIG_T::stride_h + i) * CONFIG_T::in_w +
                              ox * CONFIG_T::stride_w + j];
                        if (v > m) m = v;
                    }
                y[(c * CONFIG_T::out_h + oy) * CONFIG_T::out_w + ox] = m;
            }
    write_all<CONFIG_T::lanes>(y, out);
}

// Sparse in, sparse out: absent inputs are zeros, so a window with fewer present values than
// its size also contains a 0.
template <class CONFIG_T, class OUT_S>
void maxpool2d(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out) {
    typename CONFIG_T::in_t mx[CONFIG_T::n_out];
    uint8_t cnt[CONFIG_T::n_out];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    for (unsigned p = 0; p < CONFIG_T::n_out; p++) cnt[p] = 0;
    elem<typename CONFIG_T::in_t> e;
ActiveInputs:
    while (next_nonzero(in, e)) {
        const unsigned c = e.idx / (CONFIG_T::in_h * CONFIG_T::in_w);
        const int yy = (e.idx / CONFIG_T::in_w) % CONFIG_T::in_h;
        const int xx = e.idx % CONFIG_T::in_w;
        for (int oy = yy / (int)CONFIG_T::stride_h; oy >= 0; oy--) {
            if (oy >= (int)CONFIG_T::out_h) continue;
            if (oy * (int)CONFIG_T::stride_h + (int)CONFIG_T::pool_h <= yy) break;
            for (int ox = xx / (int)CONFIG_T::stride_w; ox >= 0; ox--) {
#pragma HLS PIPELINE II = 1
                if (ox >= (int)CONFIG_T::out_w) continue;
                if (ox * (int)CONFIG_T::stride_w + (int)CONFIG_T::pool_w <= xx) break;
                const unsigned p = (c * CONFIG_T::out_h + oy) * CONFIG_T::out_w + ox;
                if (cnt[p] == 0 || e.val > mx[p]) mx[p] = e.val;
                cnt[p]++;
            }
        }
    }
Emit:
    for (unsigned p = 0; p < CONFIG_T::n_out; p++) {
#pragma HLS PIPELINE II = 1
        typename CONFIG_T::out_t v = 0;
        if (cnt[p] == CONFIG_T::pool_h * CONFIG_T::pool_w || (cnt[p] > 0 && mx[p] > 0)) v = mx[p];
        y[p] = v;
    }
    write_all<CONFIG_T::lanes>(y, out);
}

// --- relu -------------------------------------------------------------------------------------------
template <class CONFIG_T, class IN_S, class OUT_S> void relu(IN_S &in, OUT_S &out) {
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_in];
    read_all(in, x);
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = 1
        y[i] = x[i] > 0 ? x[i] : (typename CONFIG_T::in_t)0;
    }
    write_all<CONFIG_T::lanes>(y, out);
}

// --- AXI <-> streams ------------------------------------------------------------------------------
template <class T, int N, int PACK>
void read_input(const float *in, hls::stream<beat<T, PACK> > &s, int n_samples) {
    for (int n = 0; n < n_samples; n++)
        for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
            beat<T, PACK> x;
            for (int j = 0; j < PACK; j++) x.v[j] = (T)in[(long)n * N + b * PACK + j];
            s.write(x);
        }
}

template <class T, int N, int PACK>
void write_output(hls::stream<beat<T, PACK> > &s, float *out, int n_samples) {
    for (int n = 0; n < n_samples; n++)
        for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
            beat<T, PACK> x = s.read();
            for (int j = 0; j < PACK; j++) out[(long)n * N + b * PACK + j] = to_float(x.v[j]);
        }
}

}  // namespace nnet

#endif
