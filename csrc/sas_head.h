// Interface between the selective-attention head ops (sas_head.cpp) and their kernels
// (sas_head_kernel.h, compiled once per CPU variant by kernels_<variant>.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace unimri {

// x (B, C, N) and alpha (B, K, N) contiguous, in `dtype`; grad_p and the head's output
// (B, Co, N). The gated inputs y_k = alpha_k * x (K, B, C, N) are never materialised. Small
// matrices are float64 (row-major, gate-major); kernels compute in x's compute precision
// (float32 for half/bf16) per tile of pixels and reduce tiles in float64 in a fixed order.
struct SasHeadArgs {
  int64_t B, C, K, Co, N;
  c10::ScalarType dtype;
};

// Per variant (namespaces base, avx2, avx512):
// moments: sum (K, C) = sum_{b,n} y_k and gram (K, C, C) = sum_{b,n} y_k y_k^T.
// apply: out (B, Co, N) = c + sum_k a_k y_k, a (K, Co, C), c (Co,).
// weight_grad: grad_a (K, Co, C) = sum_{b,n} grad_p y_k^T and grad_c (Co,) = sum grad_p.
// input_grad: with grad_y_k = at_k grad_p + d_k y_k + e_k (at (K, C, Co), d (K, C, C),
//   e (K, C)), grad_x (B, C, N) = sum_k alpha_k grad_y_k and
//   grad_alpha (B, K, N) = sum_c x grad_y_k, each written once in dtype.
#define UNIMRI_SAS_HEAD_KERNELS(ns, BODY)                                                              \
  namespace ns {                                                                                         \
  void sas_head_moments(const SasHeadArgs& a, const void* x, const void* alpha, double* sum, double* gram) BODY \
  void sas_head_apply(const SasHeadArgs& a, const void* x, const void* alpha, const double* mat,         \
                      const double* bias, void* out) BODY                                                    \
  void sas_head_weight_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,  \
                            double* grad_a, double* grad_c) BODY                                             \
  void sas_head_input_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,   \
                           const double* at, const double* d, const double* e, void* grad_x,             \
                           void* grad_alpha) BODY                                                            \
  }
#define UNIMRI_DECLARE_SAS_HEAD_KERNELS(ns) UNIMRI_SAS_HEAD_KERNELS(ns, ;)
UNIMRI_DECLARE_SAS_HEAD_KERNELS(base)
UNIMRI_DECLARE_SAS_HEAD_KERNELS(avx2)
UNIMRI_DECLARE_SAS_HEAD_KERNELS(avx512)

}  // namespace unimri
