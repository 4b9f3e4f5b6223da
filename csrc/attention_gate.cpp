// Fused grid attention gate (SAS), CPU op entry points (schemas in registration.cpp). The
// kernels are in attention_gate_kernel.h, one build per CPU variant (cpu_variant.h), picked at
// every call. Maths: unimri_kernels/reference/attention_gate.py.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

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

std::tuple<at::Tensor, at::Tensor> attention_gate_cpu(const at::Tensor& x, const at::Tensor& g,
                                                      const at::Tensor& theta_weight,
                                                      const at::Tensor& phi_weight,
                                                      const at::Tensor& phi_bias,
                                                      const at::Tensor& psi_weight,
                                                      const at::Tensor& psi_bias,
                                                      int64_t subsample, double focal) {
  check_contiguous({&x, &g});
  at::AutoDispatchBelowADInplaceOrView no_autograd;  // internal BLAS calls use out= buffers
  const CpuVariant v = cpu_variant();
  if (v == CpuVariant::kAvx512)
    return avx512::attention_gate_forward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal);
  if (v == CpuVariant::kAvx2)
    return avx2::attention_gate_forward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal);
  return base::attention_gate_forward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
attention_gate_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_alpha,
                            const at::Tensor& x, const at::Tensor& g,
                            const at::Tensor& theta_weight, const at::Tensor& phi_weight,
                            const at::Tensor& phi_bias, const at::Tensor& psi_weight,
                            const at::Tensor& psi_bias, int64_t subsample, double focal) {
  check_contiguous({&grad_y, &grad_alpha, &x, &g});
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "attention_gate_backward_cpu: grad_y shape");
  TORCH_CHECK(grad_alpha.numel() * x.size(1) == x.numel(), "attention_gate_backward_cpu: grad_alpha shape");
  const at::Tensor gy = grad_y.to(x.scalar_type()), ga = grad_alpha.to(x.scalar_type());
  const CpuVariant v = cpu_variant();
  auto run = v == CpuVariant::kAvx512 ? &avx512::attention_gate_backward
             : v == CpuVariant::kAvx2 ? &avx2::attention_gate_backward
                                      : &base::attention_gate_backward;
  const std::vector<at::Tensor> r =
      run(gy, ga, x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("attention_gate_cpu", &attention_gate_cpu);
  m.impl("attention_gate_backward_cpu", &attention_gate_backward_cpu);
}

}  // namespace unimri
