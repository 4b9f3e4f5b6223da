// Interface between the batch norm + ReLU ops (batch_norm_relu.cpp) and their kernels
// (batch_norm_relu_kernel.h, compiled once per CPU variant by kernels_<variant>.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <cmath>
#include <cstdint>

namespace unimri {

struct BnReluArgs {
  int64_t B, C, N;      // x is (B, C, N) contiguous
  c10::ScalarType dtype;
  const double* weight;  // (C,) or null (no affine scale: 1)
  const double* bias;    // (C,) or null (no affine shift: 0)
  double eps;
  bool batch_stats;      // statistics of this batch (training), else the given mean / var
};

// scale = weight / sqrt(var + eps), shift = bias - mean * scale, per channel.
inline void bn_relu_affine(const BnReluArgs& a, const double* mean, const double* var, double* scale,
                           double* shift) {
  for (int64_t c = 0; c < a.C; ++c) {
    scale[c] = (a.weight ? a.weight[c] : 1.0) / std::sqrt(var[c] + a.eps);
    shift[c] = (a.bias ? a.bias[c] : 0.0) - mean[c] * scale[c];
  }
}

// Per variant (namespaces base, avx2, avx512). forward: out = relu(bn(x)); with batch_stats,
// mean and var (biased) are written, else read; scale and shift (C,) are written.
// backward: grad_x (x's dtype), grad_weight and grad_bias (C,).
#define UNIMRI_BN_RELU_KERNELS(ns, BODY)                                                                  \
  namespace ns {                                                                                            \
  void batch_norm_relu_forward(const BnReluArgs& a, const void* x, void* out, double* mean, double* var,    \
                               double* scale, double* shift) BODY                                               \
  void batch_norm_relu_backward(const BnReluArgs& a, const void* grad_out, const void* x, const double* mean, \
                                const double* var, void* grad_x, double* grad_weight, double* grad_bias) BODY   \
  }
#define UNIMRI_DECLARE_BN_RELU_KERNELS(ns) UNIMRI_BN_RELU_KERNELS(ns, ;)
UNIMRI_DECLARE_BN_RELU_KERNELS(base)
UNIMRI_DECLARE_BN_RELU_KERNELS(avx2)
UNIMRI_DECLARE_BN_RELU_KERNELS(avx512)

}  // namespace unimri
