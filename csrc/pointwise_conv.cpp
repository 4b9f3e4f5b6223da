// Pointwise (1x1) convolution, CPU op entry points (schemas in registration.cpp). The kernels
// are in pointwise_conv_kernel.h, one build per CPU variant (cpu_variant.h), picked at every
// call. Maths: unimri_kernels/reference/pointwise_conv.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu_variant.h"
#include "output_pool.h"
#include "pointwise_conv.h"

namespace unimri {
namespace {

PointwiseArgs make_args(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 3, op,
              ": x must be a contiguous (B, C_in, *S) CPU tensor, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), op, ": weight must be (C_out, ", x.size(1),
              "), got ", weight.sizes());
  const int64_t B = x.size(0), Ci = x.size(1);
  TORCH_CHECK(B * Ci > 0 && weight.size(0) > 0, op, ": x and weight must not be empty");
  return {B, Ci, weight.size(0), x.numel() / (B * Ci), x.scalar_type()};
}

std::vector<int64_t> out_sizes(const at::Tensor& x, int64_t channels) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes[1] = channels;
  return sizes;
}

at::Tensor pointwise_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const PointwiseArgs a = make_args(x, weight, "pointwise_conv_cpu");
  const at::Tensor w = weight.detach().to(at::kDouble).contiguous();
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == a.Co, "pointwise_conv_cpu: bias must be (", a.Co, "), got ", bias->sizes());
    b = bias->detach().to(at::kDouble).contiguous();
  }
  at::Tensor out = pooled_empty(out_sizes(x, a.Co), x.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), pointwise_conv_forward)(a, x.data_ptr(), w.data_ptr<double>(), b.defined() ? b.data_ptr<double>() : nullptr,
                   out.data_ptr());
  return out;
}

// (grad_x, grad_weight (C_out, C_in), grad_bias (C_out,)); the last two float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv_backward_cpu(const at::Tensor& grad_out,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& weight) {
  const PointwiseArgs a = make_args(x, weight, "pointwise_conv_backward_cpu");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_sizes(x, a.Co)), "pointwise_conv_backward_cpu: grad_out must be ",
              at::IntArrayRef(out_sizes(x, a.Co)), ", got ", grad_out.sizes());
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  const at::Tensor wt = weight.detach().to(at::kDouble).t().contiguous();  // (C_in, C_out)
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), pointwise_conv_forward)({a.B, a.Co, a.Ci, a.N, a.dtype}, g.data_ptr(),
                                                          wt.data_ptr<double>(), nullptr, grad_x.data_ptr());
  at::Tensor grad_w = at::empty({a.Co, a.Ci}, x.options().dtype(at::kDouble));
  at::Tensor grad_b = at::empty({a.Co}, x.options().dtype(at::kDouble));
  UNIMRI_KERNEL_FOR(cpu_variant(), pointwise_conv_weight_grad)(a, g.data_ptr(), x.data_ptr(), grad_w.data_ptr<double>(),
                                                              grad_b.data_ptr<double>());
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("pointwise_conv_cpu", &pointwise_conv_cpu);
  m.impl("pointwise_conv_backward_cpu", &pointwise_conv_backward_cpu);
}

}  // namespace unimri
