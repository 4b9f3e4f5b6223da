// Interface between the attention gate ops (attention_gate.cpp) and their kernels
// (attention_gate_kernel.h, compiled once per CPU variant by kernels_<variant>.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace unimri {

// What the gates' forward computes and their backward needs again, in the compute dtype (fp32
// for bf16/fp16): the tiles' inter-channel activations h = relu(theta x + phi g + b_phi)
// (B * tiles * Gn * Ci * TILE) and the coarse attention [a; sigmoid(q)] (2, Gn, B, Nc). Kept by
// the eager SAS route (a few MB at the full-resolution level) so that the backward does not
// recompute them; undefined tensors: recomputed.
struct GateSaved {
  at::Tensor h, coarse;
};

// Per variant (namespaces base, avx2, avx512), for `gates` gates on the same (x, g) whose
// parameters are stacked along their first dimension. forward: (y (gates, B, Cx, *S),
// alpha (B, gates, *S)), y undefined unless write_y, and `save` filled when given; backward
// (grad_y, grad_alpha laid out like y, alpha; an undefined grad_y is zero; grad_x_in, if
// defined, is added to grad_x; `saved` from the forward or undefined): gradients of
// x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, each shaped like its input.
// Inputs contiguous, on the CPU.
#define UNIMRI_DECLARE_GATE_KERNELS(ns)                                                                           \
  namespace ns {                                                                                                  \
  std::tuple<at::Tensor, at::Tensor> attention_gate_forward(                                                      \
      const at::Tensor& x, const at::Tensor& g, const at::Tensor& theta_weight, const at::Tensor& phi_weight,     \
      const at::Tensor& phi_bias, const at::Tensor& psi_weight, const at::Tensor& psi_bias, int64_t subsample,    \
      double focal, int64_t gates, bool write_y, GateSaved* save);                                                \
  std::vector<at::Tensor> attention_gate_backward(                                                                \
      const at::Tensor& grad_y, const at::Tensor& grad_alpha, const at::Tensor& x, const at::Tensor& g,           \
      const at::Tensor& theta_weight, const at::Tensor& phi_weight, const at::Tensor& phi_bias,                   \
      const at::Tensor& psi_weight, const at::Tensor& psi_bias, int64_t subsample, double focal,                 \
      int64_t gates, const at::Tensor& grad_x_in, const GateSaved& saved);                                        \
  }
UNIMRI_DECLARE_GATE_KERNELS(base)
UNIMRI_DECLARE_GATE_KERNELS(avx2)
UNIMRI_DECLARE_GATE_KERNELS(avx512)
#undef UNIMRI_DECLARE_GATE_KERNELS

}  // namespace unimri
