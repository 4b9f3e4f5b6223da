// Interface between the pointwise (1x1) convolution ops (pointwise_conv.cpp) and their kernels
// (pointwise_conv_kernel.h, compiled once per CPU variant by kernels_<variant>.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace unimri {

// x is (B, Ci, N) contiguous, the output (B, Co, N); weights (Co, Ci) and bias (Co,) in float64.
struct PointwiseArgs {
  int64_t B, Ci, Co, N;
  c10::ScalarType dtype;  // of x and the output
};

// Per variant (namespaces base, avx2, avx512). forward: out = w x + bias (bias may be null); the
// input gradient is forward(grad_out) with w transposed and no bias. weight_grad: grad_w (Co, Ci)
// = sum over b, n of grad_out x^T and grad_b (Co,) = sum of grad_out, accumulated per tile in
// x's compute precision and across tiles in float64, in a fixed order.
#define UNIMRI_POINTWISE_KERNELS(ns, BODY)                                                          \
  namespace ns {                                                                                      \
  void pointwise_conv_forward(const PointwiseArgs& a, const void* x, const double* w, const double* bias, \
                              void* out) BODY                                                             \
  void pointwise_conv_weight_grad(const PointwiseArgs& a, const void* grad_out, const void* x, double* grad_w, \
                                  double* grad_b) BODY                                                    \
  }
#define UNIMRI_DECLARE_POINTWISE_KERNELS(ns) UNIMRI_POINTWISE_KERNELS(ns, ;)
UNIMRI_DECLARE_POINTWISE_KERNELS(base)
UNIMRI_DECLARE_POINTWISE_KERNELS(avx2)
UNIMRI_DECLARE_POINTWISE_KERNELS(avx512)

}  // namespace unimri
