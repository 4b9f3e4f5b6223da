// 2x max pooling (kernel 2, stride 2), CPU op entry points (schemas in registration.cpp). The
// kernels are in max_pool_kernel.h, one build per CPU variant (cpu_variant.h), picked at every
// call. Maths: unimri_kernels/reference/max_pool.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu_variant.h"
#include "max_pool.h"
#include "output_pool.h"

namespace unimri {
namespace {

MaxPoolArgs make_args(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && (x.dim() == 4 || x.dim() == 5), op,
              ": x must be a contiguous (B, C, H, W) or (B, C, D, H, W) CPU tensor, got ", x.sizes());
  const bool three_d = x.dim() == 5;
  const int64_t D = three_d ? x.size(2) : 1, H = x.size(-2), W = x.size(-1);
  TORCH_CHECK(x.size(0) * x.size(1) > 0 && H >= 2 && W >= 2 && (!three_d || D >= 2), op,
              ": every pooled dim of x must be >= 2 and B, C >= 1, got ", x.sizes());
  return {x.size(0) * x.size(1), D, H, W, three_d, x.scalar_type()};
}

std::vector<int64_t> pooled_sizes(const at::Tensor& x) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  for (size_t i = 2; i < sizes.size(); ++i) sizes[i] /= 2;
  return sizes;
}

at::Tensor max_pool2x_cpu(const at::Tensor& x) {
  const MaxPoolArgs a = make_args(x, "max_pool2x_cpu");
  at::Tensor out = pooled_empty(pooled_sizes(x), x.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), max_pool2x_forward)(a, x.data_ptr(), out.data_ptr());
  return out;
}

at::Tensor max_pool2x_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x) {
  const MaxPoolArgs a = make_args(x, "max_pool2x_backward_cpu");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(pooled_sizes(x)), "max_pool2x_backward_cpu: grad_out must be ",
              at::IntArrayRef(pooled_sizes(x)), " for x of shape ", x.sizes(), ", got ", grad_out.sizes());
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), max_pool2x_backward)(a, g.data_ptr(), x.data_ptr(), grad_x.data_ptr());
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("max_pool2x_cpu", &max_pool2x_cpu);
  m.impl("max_pool2x_backward_cpu", &max_pool2x_backward_cpu);
}

}  // namespace unimri
