// Stand-in for ap_int.h (tvm-sparse C simulation without Xilinx headers): the generated code
// uses fixed-point types only, so this just provides ap_fixed.h.
#ifndef TVM_SPARSE_AP_INT_COMPAT_H_
#define TVM_SPARSE_AP_INT_COMPAT_H_
#include "ap_fixed.h"
#endif
