// Stand-in for Vitis HLS's hls_stream.h, for C simulation with plain g++ (tvm-sparse).
// Used only when the Xilinx headers (or the open-source ap_types copy) are not on the include
// path: the build puts this directory last (-idirafter). An unbounded FIFO, as in Vitis csim.
#ifndef TVM_SPARSE_HLS_STREAM_COMPAT_H_
#define TVM_SPARSE_HLS_STREAM_COMPAT_H_

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>

namespace hls {

template <class T> class stream {
  public:
    stream() {}
    explicit stream(const char *name) : name_(name) {}
    stream(const stream &) = delete;
    stream &operator=(const stream &) = delete;

    void write(const T &v) { q_.push_back(v); }
    void operator<<(const T &v) { write(v); }
    T read() {
        if (q_.empty()) {
            std::fprintf(stderr, "hls::stream '%s' read while empty (dataflow deadlock)\n",
                         name_.c_str());
            std::abort();
        }
        T v = q_.front();
        q_.pop_front();
        return v;
    }
    void operator>>(T &v) { v = read(); }
    bool read_nb(T &v) {
        if (q_.empty()) return false;
        v = read();
        return true;
    }
    bool empty() const { return q_.empty(); }
    bool full() const { return false; }
    size_t size() const { return q_.size(); }

  private:
    std::string name_;
    std::deque<T> q_;
};

}  // namespace hls

#endif
