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
// the direct SAS route (a few MB at the full-resolution level) so that the backward does not
// recompute them; undefined tensors: recomputed.
struct GateSaved {
  at::Tensor h, coarse;
};

// One call of the gate kernels: `gates` gates on the same (x, g), their parameters stacked along
// a leading gates dimension (one gate may omit it). Inputs contiguous, on the CPU.
struct GateArgs {
  at::Tensor x;             // (B, Cx, *S)
  at::Tensor g;             // (B, Cg, *Sg), any grid of x's rank
  at::Tensor theta_weight;  // (gates, Ci, Cx, s, ..., s)
  at::Tensor phi_weight;    // (gates, Ci, Cg)
  at::Tensor phi_bias;      // (gates, Ci)
  at::Tensor psi_weight;    // (gates, Ci)
  at::Tensor psi_bias;      // (gates,)
  int64_t subsample;        // s
  double focal;             // f of alpha = sigmoid(q)^f
  int64_t gates;
};

// The gradients that reach the gates' backward: grad_y laid out like y (gates, B, Cx, *S), an
// undefined grad_y counting as zero; grad_alpha like alpha (B, gates, *S); grad_x_in, if defined
// (laid out like x), is added to grad_x in the kernel's one write of it.
struct GateUpstream {
  at::Tensor grad_y, grad_alpha, grad_x_in;
};

// Per variant (namespaces base, avx2, avx512). forward: (y (gates, B, Cx, *S), alpha
// (B, gates, *S)), y undefined unless write_y, and `save` filled when given; backward (`saved`
// from the forward or undefined): gradients of x, g, theta_weight, phi_weight, phi_bias,
// psi_weight, psi_bias, each shaped like its input. UNIMRI_GATE_KERNELS(ns, BODY) gives each
// function the body BODY: `;` declares them (UNIMRI_DECLARE_GATE_KERNELS), kernels_stub.h
// defines them as "not compiled".
#define UNIMRI_GATE_KERNELS(ns, BODY)                                                                      \
  namespace ns {                                                                                           \
  std::tuple<at::Tensor, at::Tensor> attention_gate_forward(const GateArgs& args, bool write_y,            \
                                                            GateSaved* save) BODY                          \
  std::vector<at::Tensor> attention_gate_backward(const GateArgs& args, const GateUpstream& upstream,      \
                                                  const GateSaved& saved) BODY                             \
  }
#define UNIMRI_DECLARE_GATE_KERNELS(ns) UNIMRI_GATE_KERNELS(ns, ;)
UNIMRI_DECLARE_GATE_KERNELS(base)
UNIMRI_DECLARE_GATE_KERNELS(avx2)
UNIMRI_DECLARE_GATE_KERNELS(avx512)

}  // namespace unimri
