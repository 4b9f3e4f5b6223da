// Fused grid attention gate (SAS), CPU op entry points (schemas in registration.cpp): one gate,
// and several gates on the same (x, g) run as one (selective attention). The
// kernels are in attention_gate_kernel.h, one build per CPU variant (cpu_variant.h), picked at
// every call. Maths: unimri_kernels/reference/attention_gate.py.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "attention_gate.h"
#include "cpu_variant.h"

namespace unimri {
namespace {

void check_contiguous(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts)
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(),
                "attention_gate_cpu: expects contiguous CPU tensors");
}

using ForwardKernel = decltype(&base::attention_gate_forward);
using BackwardKernel = decltype(&base::attention_gate_backward);

ForwardKernel forward_kernel() { return UNIMRI_KERNEL_FOR(cpu_variant(), attention_gate_forward); }

BackwardKernel backward_kernel() { return UNIMRI_KERNEL_FOR(cpu_variant(), attention_gate_backward); }

// The schemas' flat arguments as one GateArgs; `op` names the op in error messages. Several
// gates (stacked) need theta_weight (gates, Ci, Cx, s, ...).
GateArgs gate_args(const char* op, bool stacked, const at::Tensor& x, const at::Tensor& g,
                   const at::Tensor& theta_weight, const at::Tensor& phi_weight, const at::Tensor& phi_bias,
                   const at::Tensor& psi_weight, const at::Tensor& psi_bias, int64_t subsample, double focal) {
  check_contiguous({&x, &g});
  TORCH_CHECK(!stacked || theta_weight.dim() == x.dim() + 1, op, ": theta_weight must be (gates, Ci, Cx, s, ...)");
  return GateArgs{x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal,
                  stacked ? theta_weight.size(0) : 1};
}

// One gate (kStacked false): theta_weight (Ci, Cx, s, ...); y (B, Cx, *S), alpha (B, 1, *S).
// Gn gates on the same (x, g) (kStacked), parameters stacked: theta_weight (Gn, Ci, Cx, s, ...),
// phi_weight (Gn, Ci, Cg), phi_bias and psi_weight (Gn, Ci), psi_bias (Gn,);
// y (Gn, B, Cx, *S), alpha (B, Gn, *S).
template <bool kStacked>
std::tuple<at::Tensor, at::Tensor> gates_forward_cpu(const at::Tensor& x, const at::Tensor& g,
                                                     const at::Tensor& theta_weight, const at::Tensor& phi_weight,
                                                     const at::Tensor& phi_bias, const at::Tensor& psi_weight,
                                                     const at::Tensor& psi_bias, int64_t subsample, double focal) {
  const GateArgs args = gate_args(kStacked ? "attention_gates_cpu" : "attention_gate_cpu", kStacked, x, g,
                                  theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal);
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // internal BLAS calls use out= buffers
  auto [y, alpha] = forward_kernel()(args, true, nullptr);
  return {kStacked ? y : y.view(x.sizes()), alpha};
}

// The same gates, attention maps only: alpha (B, Gn, *S) (for the folded SAS head, which reads
// x and alpha instead of y).
at::Tensor attention_gates_alpha_cpu(const at::Tensor& x, const at::Tensor& g, const at::Tensor& theta_weight,
                                     const at::Tensor& phi_weight, const at::Tensor& phi_bias,
                                     const at::Tensor& psi_weight, const at::Tensor& psi_bias, int64_t subsample,
                                     double focal) {
  const GateArgs args = gate_args("attention_gates_alpha_cpu", true, x, g, theta_weight, phi_weight, phi_bias,
                                  psi_weight, psi_bias, subsample, focal);
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  return std::get<1>(forward_kernel()(args, false, nullptr));
}

// The same, also returning what the backward would recompute (GateSaved: h, coarse), for
// attention_gates_alpha_backward_cpu's saved_h / saved_coarse.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_gates_alpha_saving_cpu(
    const at::Tensor& x, const at::Tensor& g, const at::Tensor& theta_weight, const at::Tensor& phi_weight,
    const at::Tensor& phi_bias, const at::Tensor& psi_weight, const at::Tensor& psi_bias, int64_t subsample,
    double focal) {
  const GateArgs args = gate_args("attention_gates_alpha_saving_cpu", true, x, g, theta_weight, phi_weight, phi_bias,
                                  psi_weight, psi_bias, subsample, focal);
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  GateSaved saved;
  at::Tensor alpha = std::get<1>(forward_kernel()(args, false, &saved));
  return {alpha, saved.h, saved.coarse};
}

using GateGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The gradients of the gates in `args` from `upstream` (converted to x's dtype here).
GateGrads gates_backward(const GateArgs& args, const GateUpstream& upstream, const GateSaved& saved = {}) {
  const at::Tensor &x = args.x, &grad_y = upstream.grad_y, &grad_alpha = upstream.grad_alpha,
                   &grad_x_in = upstream.grad_x_in;
  check_contiguous({&grad_alpha});
  TORCH_CHECK(!grad_x_in.defined() || (grad_x_in.is_contiguous() && grad_x_in.sizes() == x.sizes()),
              "attention_gate_backward_cpu: grad_x_in must be a contiguous tensor shaped like x ", x.sizes(), ", got ",
              grad_x_in.sizes());
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  TORCH_CHECK(!grad_y.defined() || (grad_y.is_contiguous() && grad_y.numel() == args.gates * x.numel()),
              "attention_gate_backward_cpu: grad_y shape ", grad_y.sizes());
  TORCH_CHECK(grad_alpha.numel() * x.size(1) == args.gates * x.numel(), "attention_gate_backward_cpu: grad_alpha shape ",
              grad_alpha.sizes());
  auto in_x_dtype = [&](const at::Tensor& t) { return t.defined() ? t.to(x.scalar_type()) : t; };
  const GateUpstream converted{in_x_dtype(grad_y), in_x_dtype(grad_alpha), in_x_dtype(grad_x_in)};
  const std::vector<at::Tensor> r = backward_kernel()(args, converted, saved);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

// The gradients of gates_forward_cpu<kStacked>.
template <bool kStacked>
GateGrads gates_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_alpha, const at::Tensor& x,
                             const at::Tensor& g, const at::Tensor& theta_weight, const at::Tensor& phi_weight,
                             const at::Tensor& phi_bias, const at::Tensor& psi_weight, const at::Tensor& psi_bias,
                             int64_t subsample, double focal) {
  return gates_backward(gate_args(kStacked ? "attention_gates_backward_cpu" : "attention_gate_backward_cpu", kStacked,
                                  x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal),
                        GateUpstream{grad_y, grad_alpha, at::Tensor()});
}

// Gradients of attention_gates_alpha_cpu (no y, so no grad_y); grad_x_in (laid out like x), when
// given, is added to grad_x in the kernel's one write of it (another consumer's share of x's
// gradient, e.g. the SAS head's).
GateGrads attention_gates_alpha_backward_cpu(const at::Tensor& grad_alpha, const at::Tensor& x, const at::Tensor& g,
                                             const at::Tensor& theta_weight, const at::Tensor& phi_weight,
                                             const at::Tensor& phi_bias, const at::Tensor& psi_weight,
                                             const at::Tensor& psi_bias, int64_t subsample, double focal,
                                             const std::optional<at::Tensor>& grad_x_in,
                                             const std::optional<at::Tensor>& saved_h,
                                             const std::optional<at::Tensor>& saved_coarse) {
  TORCH_CHECK(saved_h.has_value() == saved_coarse.has_value(),
              "attention_gates_alpha_backward_cpu: saved_h and saved_coarse go together");
  return gates_backward(gate_args("attention_gates_alpha_backward_cpu", true, x, g, theta_weight, phi_weight,
                                  phi_bias, psi_weight, psi_bias, subsample, focal),
                        GateUpstream{at::Tensor(), grad_alpha, grad_x_in.value_or(at::Tensor())},
                        GateSaved{saved_h.value_or(at::Tensor()), saved_coarse.value_or(at::Tensor())});
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("attention_gate_cpu", &gates_forward_cpu<false>);
  m.impl("attention_gate_backward_cpu", &gates_backward_cpu<false>);
  m.impl("attention_gates_cpu", &gates_forward_cpu<true>);
  m.impl("attention_gates_backward_cpu", &gates_backward_cpu<true>);
  m.impl("attention_gates_alpha_cpu", &attention_gates_alpha_cpu);
  m.impl("attention_gates_alpha_backward_cpu", &attention_gates_alpha_backward_cpu);
  m.impl("attention_gates_alpha_saving_cpu", &attention_gates_alpha_saving_cpu);
}

}  // namespace unimri
