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
//
// Loops are written as the hardware runs them: one pipelined loop per phase (flattened where
// the trip count depends on the data), lanes as unrolled inner loops, the II in the pragma. The
// estimator (cycles.py) counts exactly these loops; the C simulation counts them too (below).
#ifndef NNET_SPARSE_H_
#define NNET_SPARSE_H_

#include <cmath>
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

// A constant table's entry as T: float tables hold the value, fixed-point tables T's raw word
// (an integer array is constant-initialized by g++; ap_fixed initializers are constructor calls).
template <class T> struct table_value {
    static T get(float v) { return v; }
};
template <int W, int I, ap_q_mode Q, ap_o_mode O, int N>
struct table_value<ap_fixed<W, I, Q, O, N> > {
    static ap_fixed<W, I, Q, O, N> get(int32_t raw) {
        ap_fixed<W, I, Q, O, N> v;
        v.range(W - 1, 0) = raw;
        return v;
    }
};

// --- cycle counting (C simulation) -------------------------------------------------------------
// Built with -DNNET_COUNT_CYCLES (tvm-sparse's csim always is), every pipelined loop ticks its
// stage's counter by its II once per iteration and adds NNET_PIPELINE_DEPTH when it ends: the
// cycles the schedule written in the pragmas takes, per stage, on the testbench samples. The
// estimator (cycles.py) counts the same loops; tests/codegen/test_fpga_cycles.py ties the two.
// Stage 0 is the AXI input, stage i the i-th layer, NNET_OUTPUT_STAGE the AXI output.
#ifndef NNET_PIPELINE_DEPTH
#define NNET_PIPELINE_DEPTH 20
#endif
#ifdef NNET_COUNT_CYCLES
struct cycle_counters {
    static const int MAX_STAGES = 1024;
    unsigned long long cycles[MAX_STAGES];
    unsigned long long loops[MAX_STAGES];
    int stage;
};
inline cycle_counters &counters() {
    static cycle_counters c;  // zero-initialized; one instance across translation units
    return c;
}
#define NNET_STAGE(i) (::nnet::counters().stage = (i))
#define NNET_TICK(n) (::nnet::counters().cycles[::nnet::counters().stage] += (n))
#define NNET_LOOP_DONE()                                                          \
    (::nnet::counters().cycles[::nnet::counters().stage] += NNET_PIPELINE_DEPTH, \
     ::nnet::counters().loops[::nnet::counters().stage]++)
#else
#define NNET_STAGE(i) ((void)0)
#define NNET_TICK(n) ((void)0)
#define NNET_LOOP_DONE() ((void)0)
#endif

// --- stream <-> buffer --------------------------------------------------------------------------
template <class T, int N, int PACK>
void read_all(hls::stream<beat<T, PACK> > &s, T (&buf)[N]) {
ReadBeats:
    for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        beat<T, PACK> x = s.read();
        for (int j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            buf[b * PACK + j] = x.v[j];
        }
    }
    NNET_LOOP_DONE();
}

template <unsigned LANES, class T, int N, int PACK>
void write_all(const T (&buf)[N], hls::stream<beat<T, PACK> > &s) {
WriteBeats:
    for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        beat<T, PACK> x;
        for (int j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            x.v[j] = buf[b * PACK + j];
        }
        s.write(x);
    }
    NNET_LOOP_DONE();
}

// Sparse output: only the non-zeros leave, then the end marker. Each cycle looks at the LANES
// positions from pos on (a priority encoder): it emits the first non-zero among them and moves
// past it, or moves past all LANES when there is none. Cycles: non-zeros + LANES-wide empty
// stretches + 1 (the end marker).
template <unsigned LANES, class T, int N> void write_all(const T (&buf)[N], hls::stream<elem<T> > &s) {
    unsigned pos = 0;
WriteNonZeros:
    while (pos < (unsigned)N) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        unsigned next = pos + LANES;
        for (unsigned j = LANES; j-- > 0;) {  // the lowest non-zero wins
#pragma HLS UNROLL
            if (pos + j < (unsigned)N && buf[pos + j] != 0) next = pos + j;
        }
        if (next < pos + LANES) {
            elem<T> e;
            e.idx = next;
            e.val = buf[next];
            e.last = false;
            s.write(e);
            pos = next + 1;
        } else {
            pos = next;
        }
    }
    NNET_TICK(1);
    elem<T> end;
    end.idx = N;
    end.val = 0;
    end.last = true;
    s.write(end);
    NNET_LOOP_DONE();
}

// Output o of a weighted layer from its accumulator (bias included): the fused ReLU, then the
// output format. CONFIG_T::requantize converts (float, ap_fixed) or, for int8's integer weights,
// multiplies in output channel o's scale.
template <class CONFIG_T>
inline typename CONFIG_T::out_t finish(typename CONFIG_T::accum_t acc, unsigned o) {
    if (CONFIG_T::relu && acc < 0) return 0;
    return CONFIG_T::requantize(acc, o);
}

// Read the input stream straight into a zero-padded [C][HP][WP] buffer, so weight offsets need
// no bounds checks. The buffer is static: its border is never written, so it stays zero.
template <class CONFIG_T, int PACK>
void read_padded(hls::stream<beat<typename CONFIG_T::in_t, PACK> > &s,
                 typename CONFIG_T::in_t (&xp)[CONFIG_T::n_padded]) {
    const unsigned HW = CONFIG_T::in_h * CONFIG_T::in_w;
ReadBeats:
    for (unsigned b = 0; b < CONFIG_T::n_in / PACK; b++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        beat<typename CONFIG_T::in_t, PACK> x = s.read();
        for (unsigned j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            const unsigned i = b * PACK + j, c = i / HW, rem = i % HW;
            xp[(c * CONFIG_T::pad_h + rem / CONFIG_T::in_w + CONFIG_T::pad_top) * CONFIG_T::pad_w +
               rem % CONFIG_T::in_w + CONFIG_T::pad_left] = x.v[j];
        }
    }
    NNET_LOOP_DONE();
}

// --- dense-activation engines (dense or sparse-dense weights x every activation) ---------------
// One flattened loop per layer: each iteration is one step of PE outputs x SIMD weights of their
// rows, at II = acc_ii (1 for fixed point; a float accumulator's add latency otherwise: the
// running sum of an output is read back every step). A weight store is a small class whose
// steps(o) is how many steps row o takes and whose window() / row() is step s of row o's dot
// product (conv: with the window at offset base of the padded input), as hls4ml passes its
// products to a layer as classes. Everything inlines.

// Dense weights [O][n_kin]: every tap of the window, every input of the row; ceil(K / SIMD) steps.
template <class CONFIG_T> struct dense_weights {
    const typename CONFIG_T::weight_t *w;

    unsigned steps(unsigned o) const {
#pragma HLS INLINE
        return (CONFIG_T::n_kin + CONFIG_T::simd - 1) / CONFIG_T::simd;
    }

    typename CONFIG_T::accum_t window(const typename CONFIG_T::in_t xp[], unsigned o, unsigned s,
                                      unsigned base) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t sum = 0;
    Taps:
        for (unsigned j = 0; j < CONFIG_T::simd; j++) {
#pragma HLS UNROLL
            const unsigned k = s * CONFIG_T::simd + j;
            if (k < CONFIG_T::n_kin) {
                const unsigned c = k / (CONFIG_T::kern_h * CONFIG_T::kern_w);
                const unsigned kh = k / CONFIG_T::kern_w % CONFIG_T::kern_h;
                const unsigned kw = k % CONFIG_T::kern_w;
                const unsigned tap = (c * CONFIG_T::pad_h + kh * CONFIG_T::dil_h) * CONFIG_T::pad_w +
                                     kw * CONFIG_T::dil_w;
                sum += w[o * CONFIG_T::n_kin + k] * xp[base + tap];
            }
        }
        return sum;
    }

    typename CONFIG_T::accum_t row(const typename CONFIG_T::in_t x[], unsigned o,
                                   unsigned s) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t sum = 0;
    Inputs:
        for (unsigned j = 0; j < CONFIG_T::simd; j++) {
#pragma HLS UNROLL
            const unsigned k = s * CONFIG_T::simd + j;
            if (k < CONFIG_T::n_kin) sum += w[o * CONFIG_T::n_kin + k] * x[k];
        }
        return sum;
    }
};

// Sparse-dense weights (CSR): row o's non-zeros are val[ptr[o] .. ptr[o+1]); off[j] is the input
// offset to multiply with (conv: in the padded buffer, relative to the window origin). A row
// takes max(1, ceil(nnz / SIMD)) steps: zero weights are never multiplied.
template <class CONFIG_T> struct csr_weights {
    const typename CONFIG_T::weight_t *val;
    const uint32_t *off;
    const uint32_t *ptr;

    unsigned steps(unsigned o) const {
#pragma HLS INLINE
        const unsigned nnz = ptr[o + 1] - ptr[o];
        return nnz ? (nnz + CONFIG_T::simd - 1) / CONFIG_T::simd : 1;
    }

    typename CONFIG_T::accum_t window(const typename CONFIG_T::in_t xp[], unsigned o, unsigned s,
                                      unsigned base) const {
#pragma HLS INLINE
        typename CONFIG_T::accum_t sum = 0;
    NonZeros:
        for (unsigned j = 0; j < CONFIG_T::simd; j++) {
#pragma HLS UNROLL
            const uint32_t nz = ptr[o] + s * CONFIG_T::simd + j;
            if (nz < ptr[o + 1]) sum += val[nz] * xp[off[nz] + base];
        }
        return sum;
    }

    typename CONFIG_T::accum_t row(const typename CONFIG_T::in_t x[], unsigned o,
                                   unsigned s) const {
#pragma HLS INLINE
        return window(x, o, s, 0);
    }
};

// Every (filter, output pixel) of a conv: filter o's steps for PE pixels at a time, flattened
// over filters and pixel groups into one pipelined loop of out_c * ceil(P / PE) * steps
// iterations (row_steps = the sum of steps(o) over the filters).
template <class CONFIG_T, class WEIGHTS, int PACK, class OUT_S>
void conv2d_pixels(hls::stream<beat<typename CONFIG_T::in_t, PACK> > &in, OUT_S &out,
                   const WEIGHTS &weights, const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
#pragma HLS INLINE
    const unsigned P = CONFIG_T::out_h * CONFIG_T::out_w;
    const unsigned GROUPS = (P + CONFIG_T::pe - 1) / CONFIG_T::pe;
    static typename CONFIG_T::in_t xp[CONFIG_T::n_padded];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    typename CONFIG_T::accum_t acc[CONFIG_T::pe];
#pragma HLS ARRAY_PARTITION variable = acc complete
    read_padded<CONFIG_T>(in, xp);
    for (unsigned l = 0; l < CONFIG_T::pe; l++) acc[l] = 0;
    unsigned o = 0, g = 0, s = 0;
Steps:
    for (unsigned it = 0; it < CONFIG_T::row_steps * GROUPS; it++) {
#pragma HLS PIPELINE II = CONFIG_T::acc_ii
        NNET_TICK(CONFIG_T::acc_ii);
        for (unsigned l = 0; l < CONFIG_T::pe; l++) {
#pragma HLS UNROLL
            const unsigned p = g * CONFIG_T::pe + l;
            if (p < P) {
                const unsigned base = (p / CONFIG_T::out_w) * CONFIG_T::stride_h * CONFIG_T::pad_w +
                                      (p % CONFIG_T::out_w) * CONFIG_T::stride_w;
                acc[l] += weights.window(xp, o, s, base);
            }
        }
        if (s + 1 < weights.steps(o)) {
            s++;
            continue;
        }
        for (unsigned l = 0; l < CONFIG_T::pe; l++) {
#pragma HLS UNROLL
            const unsigned p = g * CONFIG_T::pe + l;
            if (p < P) y[o * P + p] = finish<CONFIG_T>(acc[l] + b[o], o);
            acc[l] = 0;
        }
        s = 0;
        if (++g == GROUPS) {
            g = 0;
            o++;
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// Every output of a linear layer, PE rows at a time: a group of rows takes the steps of its
// longest row (row_steps = the sum of those over the groups), in one pipelined loop.
template <class CONFIG_T, class WEIGHTS, class IN_S, class OUT_S>
void linear_outputs(IN_S &in, OUT_S &out, const WEIGHTS &weights,
                    const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
#pragma HLS INLINE
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    typename CONFIG_T::accum_t acc[CONFIG_T::pe];
#pragma HLS ARRAY_PARTITION variable = acc complete
    read_all(in, x);
    for (unsigned l = 0; l < CONFIG_T::pe; l++) acc[l] = 0;
    unsigned g = 0, s = 0;
Steps:
    for (unsigned it = 0; it < CONFIG_T::row_steps; it++) {
#pragma HLS PIPELINE II = CONFIG_T::acc_ii
        NNET_TICK(CONFIG_T::acc_ii);
        unsigned longest = 1;
        for (unsigned l = 0; l < CONFIG_T::pe; l++) {
#pragma HLS UNROLL
            const unsigned o = g * CONFIG_T::pe + l;
            if (o < CONFIG_T::out_c) {
                const unsigned n = weights.steps(o);
                if (n > longest) longest = n;
                if (s < n) acc[l] += weights.row(x, o, s);
            }
        }
        if (s + 1 < longest) {
            s++;
            continue;
        }
        for (unsigned l = 0; l < CONFIG_T::pe; l++) {
#pragma HLS UNROLL
            const unsigned o = g * CONFIG_T::pe + l;
            if (o < CONFIG_T::out_c) y[o] = finish<CONFIG_T>(acc[l] + b[o], o);
            acc[l] = 0;
        }
        s = 0;
        g++;
    }
    NNET_LOOP_DONE();
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
// activation and scatter-added into the owners' accumulators, SLOTS slots per step, beside
// res_lanes entries of the column's residual. An empty slot (owner == out_c) writes nothing.
// The owners one step writes are distinct (complementary packing puts each owner in at most one
// slot of a column, and the residual holds the column's other owners): that is what makes the
// step's writes independent (DEPENDENCE intra false), and it holds for one column only, so
// successive steps keep their true dependence (II = acc_ii; the conv rotates partial-sum copies).
template <class CONFIG_T> struct packed_columns {
    const typename CONFIG_T::weight_t *val;
    const typename CONFIG_T::owner_t *owner;
    const uint32_t *rptr;
    const typename CONFIG_T::owner_t *ridx;
    const typename CONFIG_T::weight_t *rval;

    // Steps column k takes: its packed slots SLOTS at a time beside its residual.
    template <unsigned SLOTS> unsigned steps(uint32_t k) const {
#pragma HLS INLINE
        const unsigned packed = (CONFIG_T::groups + SLOTS - 1) / SLOTS;
        const unsigned res = (rptr[k + 1] - rptr[k] + CONFIG_T::res_lanes - 1) / CONFIG_T::res_lanes;
        const unsigned n = packed > res ? packed : res;
        return n ? n : 1;
    }

    // Step s of column k: scatter-add activation v; output o's accumulator is acc[o][pix]
    // (conv: a plane of P pixels per output channel; linear: P = 1).
    template <unsigned SLOTS, int P>
    void scatter(typename CONFIG_T::accum_t (&acc)[CONFIG_T::out_c][P], unsigned pix, uint32_t k,
                 unsigned s, typename CONFIG_T::in_t v) const {
#pragma HLS INLINE
    PackedSlots:
        for (unsigned j = 0; j < SLOTS; j++) {
#pragma HLS UNROLL
            const unsigned g = s * SLOTS + j;
            if (g < CONFIG_T::groups) {
                const unsigned o = owner[k * CONFIG_T::groups + g];
                if (o < CONFIG_T::out_c) acc[o][pix] += val[k * CONFIG_T::groups + g] * v;
            }
        }
    Residual:
        for (unsigned j = 0; j < CONFIG_T::res_lanes; j++) {
#pragma HLS UNROLL
            const uint32_t r = rptr[k] + s * CONFIG_T::res_lanes + j;
            if (r < rptr[k + 1]) acc[ridx[r]][pix] += rval[r] * v;
        }
    }
};

// The next element of a sparse stream into e; false at the end marker.
template <class T> inline bool next_nonzero(hls::stream<elem<T> > &in, elem<T> &e) {
#pragma HLS INLINE
    e = in.read();
    return !e.last;
}

// Accumulators in registers (complete partition): clearing them takes one cycle.
template <class CONFIG_T, class OUT_S>
void linear_sparse_sparse(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out,
                          const typename CONFIG_T::weight_t val[CONFIG_T::n_kin * CONFIG_T::groups],
                          const typename CONFIG_T::owner_t owner[CONFIG_T::n_kin * CONFIG_T::groups],
                          const uint32_t rptr[CONFIG_T::n_kin + 1],
                          const typename CONFIG_T::owner_t ridx[],
                          const typename CONFIG_T::weight_t rval[],
                          const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const packed_columns<CONFIG_T> columns = {val, owner, rptr, ridx, rval};
    typename CONFIG_T::accum_t acc[CONFIG_T::out_c][1];
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 0
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    NNET_TICK(1);
    for (unsigned o = 0; o < CONFIG_T::out_c; o++) {
#pragma HLS UNROLL
        acc[o][0] = 0;
    }
    elem<typename CONFIG_T::in_t> e;
    unsigned s = 0, n = 0;
ActiveInputs:
    for (;;) {
#pragma HLS PIPELINE II = CONFIG_T::acc_ii
#pragma HLS DEPENDENCE variable = acc intra false
        NNET_TICK(CONFIG_T::acc_ii);
        if (s == 0) {
            if (!next_nonzero(in, e)) break;
            n = columns.template steps<CONFIG_T::slots>(e.idx);
        }
        columns.template scatter<CONFIG_T::slots>(acc, 0, e.idx, s, e.val);
        if (++s == n) s = 0;
    }
    NNET_LOOP_DONE();
Finish:  // lanes outputs per cycle: bias, ReLU and the output format
    for (unsigned i = 0; i < (CONFIG_T::out_c + CONFIG_T::lanes - 1) / CONFIG_T::lanes; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned o = i * CONFIG_T::lanes + l;
            if (o < CONFIG_T::out_c) y[o] = finish<CONFIG_T>(acc[o][0] + b[o], o);
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// Accumulators: a plane of OH*OW words (RAM) per output channel, cut into acc_pixel_banks banks
// (pixel mod banks), so the taps of one step, each on its own output pixel, never share a bank
// (the compiler chose the count from every input position's taps). They are kept in acc_copies
// interleaved partial-sum copies: step i reads, adds and writes back copy i mod acc_copies, so
// a step never reads a sum the step before it is still writing. Fixed point keeps as many
// copies as that read-modify-write takes cycles (RAM read + add) and runs at II 1; float keeps
// one copy at II = acc_ii. Finish adds the copies. Per active input, taps kernel positions at
// a time (each its own output pixel) times the steps of the longest of their columns.
template <class CONFIG_T, class OUT_S>
void conv2d_sparse_sparse(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out,
                          const typename CONFIG_T::weight_t val[CONFIG_T::n_kin * CONFIG_T::groups],
                          const typename CONFIG_T::owner_t owner[CONFIG_T::n_kin * CONFIG_T::groups],
                          const uint32_t rptr[CONFIG_T::n_kin + 1],
                          const typename CONFIG_T::owner_t ridx[],
                          const typename CONFIG_T::weight_t rval[],
                          const typename CONFIG_T::bias_t b[CONFIG_T::out_c]) {
    const unsigned OHW = CONFIG_T::out_h * CONFIG_T::out_w;
    const unsigned TAPS = CONFIG_T::kern_h * CONFIG_T::kern_w;
    const unsigned TAP_GROUPS = (TAPS + CONFIG_T::taps - 1) / CONFIG_T::taps;
    typename CONFIG_T::accum_t
        acc[CONFIG_T::acc_copies][CONFIG_T::out_c][CONFIG_T::out_h * CONFIG_T::out_w];
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc complete dim = 2
#pragma HLS ARRAY_PARTITION variable = acc cyclic factor = CONFIG_T::acc_pixel_banks dim = 3
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
ClearAccumulators:
    for (unsigned p = 0; p < OHW; p++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned i = 0; i < CONFIG_T::acc_copies; i++)
            for (unsigned o = 0; o < CONFIG_T::out_c; o++) acc[i][o][p] = 0;  // one per bank
    }
    NNET_LOOP_DONE();
    const packed_columns<CONFIG_T> columns = {val, owner, rptr, ridx, rval};
    elem<typename CONFIG_T::in_t> e;
    unsigned c = 0, y_in = 0, x_in = 0, tg = 0, s = 0, n = 0, copy = 0;
ActiveInputs:
    for (;;) {
#pragma HLS PIPELINE II = CONFIG_T::acc_ii
#pragma HLS DEPENDENCE variable = acc intra false
#pragma HLS DEPENDENCE variable = acc inter RAW distance = CONFIG_T::acc_copies true
        NNET_TICK(CONFIG_T::acc_ii);
        if (tg == 0 && s == 0) {
            if (!next_nonzero(in, e)) break;
            c = e.idx / (CONFIG_T::in_h * CONFIG_T::in_w);
            const unsigned rem = e.idx % (CONFIG_T::in_h * CONFIG_T::in_w);
            y_in = rem / CONFIG_T::in_w + CONFIG_T::pad_top;
            x_in = rem % CONFIG_T::in_w + CONFIG_T::pad_left;
        }
        if (s == 0) {  // the steps of this tap group: those of its longest column
            n = 1;
            for (unsigned t = 0; t < CONFIG_T::taps; t++) {
#pragma HLS UNROLL
                const unsigned tap = tg * CONFIG_T::taps + t;
                if (tap < TAPS) {
                    const unsigned m = columns.template steps<CONFIG_T::slots>(c * TAPS + tap);
                    if (m > n) n = m;
                }
            }
        }
    Taps:
        for (unsigned t = 0; t < CONFIG_T::taps; t++) {
#pragma HLS UNROLL
            const unsigned tap = tg * CONFIG_T::taps + t;
            if (tap >= TAPS) continue;
            const unsigned kh = tap / CONFIG_T::kern_w, kw = tap % CONFIG_T::kern_w;
            // the output pixel whose window puts tap (kh, kw) on this input
            const int ty = (int)y_in - (int)(kh * CONFIG_T::dil_h);
            const int tx = (int)x_in - (int)(kw * CONFIG_T::dil_w);
            if (ty < 0 || tx < 0 || ty % CONFIG_T::stride_h || tx % CONFIG_T::stride_w) continue;
            const unsigned oy = ty / CONFIG_T::stride_h, ox = tx / CONFIG_T::stride_w;
            if (oy >= CONFIG_T::out_h || ox >= CONFIG_T::out_w) continue;
            columns.template scatter<CONFIG_T::slots>(acc[copy], oy * CONFIG_T::out_w + ox,
                                                      c * TAPS + tap, s, e.val);
        }
        if (++copy == CONFIG_T::acc_copies) copy = 0;
        if (++s == n) {
            s = 0;
            if (++tg == TAP_GROUPS) tg = 0;
        }
    }
    NNET_LOOP_DONE();
Finish:
    for (unsigned p = 0; p < OHW; p++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned o = 0; o < CONFIG_T::out_c; o++) {
            typename CONFIG_T::accum_t sum = b[o];
            for (unsigned i = 0; i < CONFIG_T::acc_copies; i++) sum += acc[i][o][p];
            y[o * OHW + p] = finish<CONFIG_T>(sum, o);
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// --- k-winners-take-all -------------------------------------------------------------------------
// Global per sample: keep x where rank >= the k-th largest rank (ties all win; with exact, only
// as many ties as make k, lowest index first, as TopK picks them), rank = x or x * boost. NaN
// ranks above everything, so it takes a winner's place, but a NaN is never kept (a float compare
// with it is false), and when the k-th largest is NaN nothing is kept: the
// CPU kernel's and onnxruntime's answer. The k-th largest is found by a 4-pass radix select on
// 8-bit digits of the order-preserving float key: O(n) per pass, no sort.
//
// Each lane owns a 256-bin histogram (LANES x 256 counters), so the lanes never write the same
// counter. A lane counts the bin it saw last in a register (run_bin, run_count) and touches its
// RAM only when the bin changes: it writes the finished run back and reads the new bin's count
// (two ports, two different bins: UG1399's histogram), so the loop runs at II = 1. FindDigit
// reads bin d of every lane, the register where a lane's run is on d (an adder tree), clears
// it for the next pass, and always walks all 256 bins (a fixed-length loop; the digit is
// latched when found). hist is the caller's (static, zero at start): FindDigit clears every
// bin it reads. ties: how many keys equal to the k-th must win for exactly k (k minus those
// above it).
template <unsigned N, unsigned LANES>
uint32_t kth_largest_key(const uint32_t (&key)[N], unsigned (&hist)[LANES][256], unsigned k,
                         unsigned &ties) {
    uint32_t prefix = 0, mask = 0;
    unsigned remaining = k;
RadixPasses:
    for (int pass = 0; pass < 4; pass++) {
        const int shift = 24 - 8 * pass;
        unsigned run_bin[LANES], run_count[LANES];  // 256: no run yet
#pragma HLS ARRAY_PARTITION variable = run_bin complete
#pragma HLS ARRAY_PARTITION variable = run_count complete
        for (unsigned l = 0; l < LANES; l++) {
#pragma HLS UNROLL
            run_bin[l] = 256;
            run_count[l] = 0;
        }
    Histogram:
        for (unsigned i = 0; i < (N + LANES - 1) / LANES; i++) {
#pragma HLS PIPELINE II = 1
#pragma HLS DEPENDENCE variable = hist intra RAW false
            NNET_TICK(1);
            for (unsigned l = 0; l < LANES; l++) {
#pragma HLS UNROLL
                const unsigned j = i * LANES + l;
                if (j < N && (key[j] & mask) == prefix) {
                    const unsigned bin = (key[j] >> shift) & 255u;
                    if (bin == run_bin[l]) {
                        run_count[l]++;
                    } else {  // the run ends: write it back, start one on bin
                        if (run_bin[l] < 256) hist[l][run_bin[l]] = run_count[l];
                        run_count[l] = hist[l][bin] + 1;
                        run_bin[l] = bin;
                    }
                }
            }
        }
        NNET_LOOP_DONE();
        unsigned above = 0;
        int digit = 0;
        bool found = false;
    FindDigit:
        for (int d = 255; d >= 0; d--) {
#pragma HLS PIPELINE II = 1
            NNET_TICK(1);
            unsigned count = 0;
            for (unsigned l = 0; l < LANES; l++) {
#pragma HLS UNROLL
                count += run_bin[l] == (unsigned)d ? run_count[l] : hist[l][d];
                hist[l][d] = 0;
            }
            if (!found) {
                if (d == 0 || above + count >= remaining) {
                    found = true;
                    digit = d;
                } else {
                    above += count;
                }
            }
        }
        NNET_LOOP_DONE();
        remaining -= above;
        prefix |= (uint32_t)digit << shift;
        mask |= 255u << shift;
    }
    ties = remaining;
    return prefix;
}

template <class CONFIG_T, class IN_S, class OUT_S>
void kwta(IN_S &in, OUT_S &out, const typename CONFIG_T::boost_store_t boost[CONFIG_T::n_boost]) {
    const unsigned STEPS = (CONFIG_T::n_in + CONFIG_T::lanes - 1) / CONFIG_T::lanes;
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    uint32_t key[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_in];
    static unsigned hist[CONFIG_T::lanes][256];  // lane-private histograms
#pragma HLS ARRAY_PARTITION variable = hist complete dim = 1
    read_all(in, x);
Rank:
    for (unsigned i = 0; i < STEPS; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned j = i * CONFIG_T::lanes + l;
            if (j < CONFIG_T::n_in) {
                typename CONFIG_T::rank_t r;
                to_rank(r, x[j]);
                if (CONFIG_T::boosted)
                    r = r * table_value<typename CONFIG_T::boost_t>::get(boost[j / CONFIG_T::boost_stride]);
                key[j] = rank_key(r);
            }
        }
    }
    NNET_LOOP_DONE();
    unsigned ties = 0, taken = 0;
    const uint32_t kth =
        kth_largest_key<CONFIG_T::n_in, CONFIG_T::lanes>(key, hist, CONFIG_T::k, ties);
Select:
    for (unsigned i = 0; i < STEPS; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned j = i * CONFIG_T::lanes + l;
            if (j < CONFIG_T::n_in) {
                bool kept = key[j] >= kth && key[j] <= KEY_POS_INF;  // NaN keys lie above +inf
                if (CONFIG_T::exact && kept && key[j] == kth) {  // exactly k: lower index first
                    kept = taken < ties;
                    taken += kept;
                }
                y[j] = kept ? x[j] : (typename CONFIG_T::in_t)0;
            }
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// --- max pooling ----------------------------------------------------------------------------------
// LANES output windows per cycle, each window's values read in parallel.
template <class CONFIG_T, class IN_S, class OUT_S> void maxpool2d(IN_S &in, OUT_S &out) {
    const unsigned OHW = CONFIG_T::out_h * CONFIG_T::out_w;
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
    read_all(in, x);
Windows:
    for (unsigned i = 0; i < (CONFIG_T::n_out + CONFIG_T::lanes - 1) / CONFIG_T::lanes; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned p = i * CONFIG_T::lanes + l;
            if (p >= CONFIG_T::n_out) continue;
            const unsigned c = p / OHW, oy = p % OHW / CONFIG_T::out_w, ox = p % CONFIG_T::out_w;
            const unsigned origin =
                (c * CONFIG_T::in_h + oy * CONFIG_T::stride_h) * CONFIG_T::in_w +
                ox * CONFIG_T::stride_w;
            typename CONFIG_T::in_t m = x[origin];
            for (unsigned a = 0; a < CONFIG_T::pool_h; a++)
                for (unsigned bb = 0; bb < CONFIG_T::pool_w; bb++) {
                    const typename CONFIG_T::in_t v = x[origin + a * CONFIG_T::in_w + bb];
                    if (v > m) m = v;
                }
            y[p] = m;
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// Sparse in, sparse out: absent inputs are zeros, so a window with fewer present values than
// its size also contains a 0. One cycle per (active input, window holding it): the window being
// updated lives in registers (run_p, run_max, run_count) and goes back to RAM when the next
// input hits another window, in the cycle that window is read (two ports, two windows), so the
// carried step is the running max's compare: II = pool_ii (1 in fixed point). Clearing the
// counts and emitting take LANES windows per cycle; Emit takes the registers for run_p.
template <class CONFIG_T, class OUT_S>
void maxpool2d(hls::stream<elem<typename CONFIG_T::in_t> > &in, OUT_S &out) {
    const unsigned STEPS = (CONFIG_T::n_out + CONFIG_T::lanes - 1) / CONFIG_T::lanes;
    typename CONFIG_T::in_t mx[CONFIG_T::n_out];
    uint8_t cnt[CONFIG_T::n_out];
    typename CONFIG_T::out_t y[CONFIG_T::n_out];
ClearCounts:
    for (unsigned i = 0; i < STEPS; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            if (i * CONFIG_T::lanes + l < CONFIG_T::n_out) cnt[i * CONFIG_T::lanes + l] = 0;
        }
    }
    NNET_LOOP_DONE();
    elem<typename CONFIG_T::in_t> e;
    unsigned c = 0;
    int oy0 = 0, oy1 = -1, ox0 = 0, ox1 = -1, oy = 0, ox = 0;
    bool fresh = true;
    unsigned run_p = CONFIG_T::n_out;  // none yet
    typename CONFIG_T::in_t run_max = 0;
    uint8_t run_count = 0;
ActiveInputs:
    for (;;) {
#pragma HLS PIPELINE II = CONFIG_T::pool_ii
#pragma HLS DEPENDENCE variable = mx intra RAW false
#pragma HLS DEPENDENCE variable = cnt intra RAW false
        NNET_TICK(CONFIG_T::pool_ii);
        if (fresh) {
            if (!next_nonzero(in, e)) break;
            c = e.idx / (CONFIG_T::in_h * CONFIG_T::in_w);
            const int yy = (e.idx / CONFIG_T::in_w) % CONFIG_T::in_h;
            const int xx = e.idx % CONFIG_T::in_w;
            // the windows holding (yy, xx): oy0..oy1 x ox0..ox1 (maybe none)
            oy1 = yy / (int)CONFIG_T::stride_h;
            if (oy1 >= (int)CONFIG_T::out_h) oy1 = CONFIG_T::out_h - 1;
            oy0 = yy - (int)CONFIG_T::pool_h + 1 > 0
                      ? (yy - (int)CONFIG_T::pool_h + (int)CONFIG_T::stride_h) / (int)CONFIG_T::stride_h
                      : 0;
            ox1 = xx / (int)CONFIG_T::stride_w;
            if (ox1 >= (int)CONFIG_T::out_w) ox1 = CONFIG_T::out_w - 1;
            ox0 = xx - (int)CONFIG_T::pool_w + 1 > 0
                      ? (xx - (int)CONFIG_T::pool_w + (int)CONFIG_T::stride_w) / (int)CONFIG_T::stride_w
                      : 0;
            oy = oy0;
            ox = ox0;
        }
        if (oy <= oy1 && ox <= ox1) {
            const unsigned p = (c * CONFIG_T::out_h + oy) * CONFIG_T::out_w + ox;
            if (p != run_p) {  // another window: write the run back, read this one
                if (run_p < CONFIG_T::n_out) {
                    mx[run_p] = run_max;
                    cnt[run_p] = run_count;
                }
                run_p = p;
                run_count = cnt[p];
                run_max = run_count ? mx[p] : e.val;
            }
            if (run_count == 0 || e.val > run_max) run_max = e.val;
            run_count++;
        }
        fresh = false;
        if (++ox > ox1) {
            ox = ox0;
            if (++oy > oy1) fresh = true;
        }
        if (oy0 > oy1 || ox0 > ox1) fresh = true;  // in no window: one cycle to pass it
    }
    NNET_LOOP_DONE();
Emit:
    for (unsigned i = 0; i < STEPS; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned p = i * CONFIG_T::lanes + l;
            if (p >= CONFIG_T::n_out) continue;
            const bool run = p == run_p;
            const unsigned count = run ? run_count : cnt[p];
            const typename CONFIG_T::in_t m =
                run ? run_max : count ? mx[p] : (typename CONFIG_T::in_t)0;
            typename CONFIG_T::out_t v = 0;
            if (count == CONFIG_T::pool_h * CONFIG_T::pool_w || (count > 0 && m > 0)) v = m;
            y[p] = v;
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// --- relu -------------------------------------------------------------------------------------------
template <class CONFIG_T, class IN_S, class OUT_S> void relu(IN_S &in, OUT_S &out) {
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_in];
    read_all(in, x);
Lanes:
    for (unsigned i = 0; i < (CONFIG_T::n_in + CONFIG_T::lanes - 1) / CONFIG_T::lanes; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        for (unsigned l = 0; l < CONFIG_T::lanes; l++) {
#pragma HLS UNROLL
            const unsigned j = i * CONFIG_T::lanes + l;
            if (j < CONFIG_T::n_in) y[j] = x[j] > 0 ? x[j] : (typename CONFIG_T::in_t)0;
        }
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// --- softmax / log-softmax (a classifier's last stage) ------------------------------------------
// Over each sample's n values, in float (std::exp / std::log in C simulation, the float cores in
// HLS): the max (a compare per cycle), the sum of exp(x - max) (a float running sum: II = acc_ii,
// the add's latency), then each output. The output is float whatever the input's format.
template <class CONFIG_T, class IN_S, class OUT_S> void softmax(IN_S &in, OUT_S &out) {
    typename CONFIG_T::in_t x[CONFIG_T::n_in];
    float e[CONFIG_T::n_in];
    typename CONFIG_T::out_t y[CONFIG_T::n_in];
    read_all(in, x);
    float top = to_float(x[0]);
Max:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        const float v = to_float(x[i]);
        if (v > top) top = v;
    }
    NNET_LOOP_DONE();
    float total = 0;
ExpSum:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = CONFIG_T::acc_ii
        NNET_TICK(CONFIG_T::acc_ii);
        e[i] = std::exp(to_float(x[i]) - top);
        total += e[i];
    }
    NNET_LOOP_DONE();
    const float log_total = std::log(total);
Outputs:
    for (unsigned i = 0; i < CONFIG_T::n_in; i++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        y[i] = CONFIG_T::log ? to_float(x[i]) - top - log_total : e[i] / total;
    }
    NNET_LOOP_DONE();
    write_all<CONFIG_T::lanes>(y, out);
}

// --- residual blocks: clone and add ---------------------------------------------------------------
// A value with two consumers (a ResNet block's input) is cloned: each beat goes to both output
// streams, one beat per cycle. The top function sizes the FIFO of the branch with fewer stages to
// hold the samples the longer branch works on, so DATAFLOW neither stalls nor deadlocks.
template <class CONFIG_T, class T, int PACK>
void clone_stream(hls::stream<beat<T, PACK> > &in, hls::stream<beat<T, PACK> > &out0,
                  hls::stream<beat<T, PACK> > &out1) {
CloneBeats:
    for (unsigned b = 0; b < CONFIG_T::n_in / PACK; b++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        const beat<T, PACK> x = in.read();
        out0.write(x);
        out1.write(x);
    }
    NNET_LOOP_DONE();
}

// Where the branches meet: the elementwise sum of two dense streams of one pack, PACK lanes per
// beat, summed in accum_t (exact for float and fixed point), then the fused ReLU if any.
template <class CONFIG_T, class A, class B, class O, int PACK>
void residual_add(hls::stream<beat<A, PACK> > &in0, hls::stream<beat<B, PACK> > &in1,
                  hls::stream<beat<O, PACK> > &out) {
AddBeats:
    for (unsigned b = 0; b < CONFIG_T::n_in / PACK; b++) {
#pragma HLS PIPELINE II = 1
        NNET_TICK(1);
        const beat<A, PACK> x = in0.read();
        const beat<B, PACK> y = in1.read();
        beat<O, PACK> z;
        for (int j = 0; j < PACK; j++) {
#pragma HLS UNROLL
            typename CONFIG_T::accum_t sum = (typename CONFIG_T::accum_t)x.v[j];
            sum += (typename CONFIG_T::accum_t)y.v[j];
            if (CONFIG_T::relu && sum < 0) sum = 0;
            z.v[j] = (O)sum;
        }
        out.write(z);
    }
    NNET_LOOP_DONE();
}

// --- AXI <-> streams ------------------------------------------------------------------------------
template <class T, int N, int PACK>
void read_input(const float *in, hls::stream<beat<T, PACK> > &s, int n_samples) {
    NNET_STAGE(0);
    for (int n = 0; n < n_samples; n++) {
        for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
            NNET_TICK(1);
            beat<T, PACK> x;
            for (int j = 0; j < PACK; j++) x.v[j] = (T)in[(long)n * N + b * PACK + j];
            s.write(x);
        }
        NNET_LOOP_DONE();
    }
}

template <class T, int N, int PACK>
void write_output(hls::stream<beat<T, PACK> > &s, float *out, int n_samples) {
    NNET_STAGE(NNET_OUTPUT_STAGE);
    for (int n = 0; n < n_samples; n++) {
        for (int b = 0; b < N / PACK; b++) {
#pragma HLS PIPELINE II = 1
            NNET_TICK(1);
            beat<T, PACK> x = s.read();
            for (int j = 0; j < PACK; j++) out[(long)n * N + b * PACK + j] = to_float(x.v[j]);
        }
        NNET_LOOP_DONE();
    }
}

}  // namespace nnet

#endif
