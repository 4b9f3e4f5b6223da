// Batch norm + ReLU fused, CPU op entry points (schemas in registration.cpp). The kernels are
// in batch_norm_relu_kernel.h, one build per CPU variant (cpu_variant.h), picked at every
// call. Maths: unimri_kernels/reference/batch_norm_relu.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "batch_norm_relu.h"
#include "cpu_variant.h"
#include "output_pool.h"

namespace unimri {
namespace {

at::Tensor as_double(const std::optional<at::Tensor>& t, int64_t C, const char* name) {
  if (!t.has_value() || !t->defined()) return {};
  TORCH_CHECK(t->numel() == C, "batch_norm_relu_cpu: ", name, " must have ", C, " values, got ", t->sizes());
  return t->detach().to(at::kDouble).contiguous();
}

const double* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; }

BnReluArgs make_args(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps, bool batch_stats) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 2,
              "batch_norm_relu_cpu: x must be a contiguous (B, C, ...) CPU tensor, got ", x.sizes());
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(B * C > 0, "batch_norm_relu_cpu: x is empty");
  return {B, C, x.numel() / (B * C), x.scalar_type(), ptr(w), ptr(b), eps, batch_stats};
}

// training: the batch's statistics, and running_mean / running_var (when given) move towards
// them by `factor` (nn.BatchNorm's momentum; the unbiased variance) in place. Otherwise the
// running statistics normalise. Returns (out, mean, biased var), the last two float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, bool training,
    double factor, double eps) {
  const int64_t C = x.dim() >= 2 ? x.size(1) : 0;
  const at::Tensor w = as_double(weight, C, "weight"), b = as_double(bias, C, "bias");
  const bool has_running = running_mean.has_value() && running_mean->defined();
  TORCH_CHECK(has_running == (running_var.has_value() && running_var->defined()),
              "batch_norm_relu_cpu: give both running_mean and running_var or neither");
  TORCH_CHECK(training || has_running, "batch_norm_relu_cpu: evaluation needs running_mean and running_var");
  const BnReluArgs a = make_args(x, w, b, eps, training);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({C}, x.options().dtype(at::kDouble));
    var = at::empty({C}, x.options().dtype(at::kDouble));
  } else {  // copies: the returned statistics must not alias the inputs
    mean = as_double(running_mean, C, "running_mean").clone();
    var = as_double(running_var, C, "running_var").clone();
  }
  at::Tensor out = pooled_empty(x.sizes(), x.options());
  std::vector<double> scale(C), shift(C);
  UNIMRI_KERNEL_FOR(cpu_variant(), batch_norm_relu_forward)(a, x.data_ptr(), out.data_ptr(), mean.data_ptr<double>(), var.data_ptr<double>(), scale.data(),
      shift.data());
  if (training && has_running) {
    at::NoGradGuard no_grad;
    const double n = static_cast<double>(a.B * a.N);
    TORCH_CHECK(running_mean->numel() == C && running_var->numel() == C,
                "batch_norm_relu_cpu: running statistics must have ", C, " values");
    running_mean->mul_(1.0 - factor).add_(mean.to(running_mean->scalar_type()), factor);
    running_var->mul_(1.0 - factor).add_(var.mul(n / std::max(n - 1.0, 1.0)).to(running_var->scalar_type()), factor);
  }
  return {out, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_relu_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    bool batch_stats) {
  const int64_t C = x.dim() >= 2 ? x.size(1) : 0;
  const at::Tensor w = as_double(weight, C, "weight"), b = as_double(bias, C, "bias");
  const at::Tensor m = as_double(mean, C, "mean"), vr = as_double(var, C, "var");
  const BnReluArgs a = make_args(x, w, b, eps, batch_stats);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "batch_norm_relu_backward_cpu: grad_out shape ", grad_out.sizes());
  const at::Tensor g = grad_out.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  at::Tensor grad_w = at::empty({C}, x.options().dtype(at::kDouble)), grad_b = at::empty({C}, x.options().dtype(at::kDouble));
  UNIMRI_KERNEL_FOR(cpu_variant(), batch_norm_relu_backward)(a, g.data_ptr(), x.data_ptr(), m.data_ptr<double>(), vr.data_ptr<double>(), grad_x.data_ptr(),
      grad_w.data_ptr<double>(), grad_b.data_ptr<double>());
  return {grad_x, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("batch_norm_relu_cpu", &batch_norm_relu_cpu);
  m.impl("batch_norm_relu_backward_cpu", &batch_norm_relu_backward_cpu);
}

}  // namespace unimri
