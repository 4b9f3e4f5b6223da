// Selective-attention head, CPU op entry points (schemas in registration.cpp): the passes of
// the folded SAS head over x and the gates' attention maps, without the gated inputs
// alpha_k * x. The kernels are in sas_head_kernel.h, one build per CPU variant
// (cpu_variant.h), picked at every call. The (C, C) algebra around them is in
// unimri_kernels/ops/sas_head.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu_variant.h"
#include "output_pool.h"
#include "sas_head.h"

namespace unimri {

namespace {

// Checks x (B, C, *S) and alpha (B, K, *S) (contiguous CPU tensors of one dtype, same grid).
SasHeadArgs make_args(const at::Tensor& x, const at::Tensor& alpha, int64_t out_channels, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 3, op,
              ": x must be a contiguous (B, C, *S) CPU tensor, got ", x.sizes());
  TORCH_CHECK(alpha.device().is_cpu() && alpha.is_contiguous() && alpha.dim() == x.dim() &&
                  alpha.size(0) == x.size(0) && alpha.sizes().slice(2) == x.sizes().slice(2),
              op, ": alpha must be a contiguous (B, K, *S) CPU tensor on x's grid ", x.sizes(), ", got ",
              alpha.sizes());
  TORCH_CHECK(alpha.scalar_type() == x.scalar_type(), op, ": alpha must have x's dtype ", x.scalar_type(), ", got ",
              alpha.scalar_type());
  const int64_t B = x.size(0), C = x.size(1), K = alpha.size(1);
  TORCH_CHECK(B * C * K > 0 && x.numel() > 0, op, ": x and alpha must not be empty");
  return {B, C, K, out_channels < 0 ? C : out_channels, x.numel() / (B * C), x.scalar_type()};
}

at::TensorOptions f64() { return at::TensorOptions().dtype(at::kDouble); }

at::Tensor f64_contiguous(const at::Tensor& t, at::IntArrayRef sizes, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == sizes, op, ": ", name, " must be ", sizes, ", got ", t.sizes());
  return t.detach().to(at::kDouble).contiguous();
}

std::vector<int64_t> with_channels(const at::Tensor& x, int64_t channels) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes[1] = channels;
  return sizes;
}

// The checked arguments of a backward pass for grad_p (B, C_out, *S), and grad_p in x's dtype,
// contiguous.
std::tuple<SasHeadArgs, at::Tensor> grad_args(const at::Tensor& grad_p, const at::Tensor& x, const at::Tensor& alpha,
                                              const char* op) {
  TORCH_CHECK(grad_p.dim() == x.dim(), op, ": grad_p must be (B, C_out, *S), got ", grad_p.sizes());
  const SasHeadArgs a = make_args(x, alpha, grad_p.size(1), op);
  TORCH_CHECK(grad_p.sizes() == at::IntArrayRef(with_channels(x, a.Co)), op, ": grad_p shape ", grad_p.sizes());
  return {a, grad_p.to(x.scalar_type()).contiguous()};
}

// (sum (K, C), gram (K, C, C)) of y_k = alpha_k * x over batch and pixels, float64.
std::tuple<at::Tensor, at::Tensor> sas_head_moments_cpu(const at::Tensor& x, const at::Tensor& alpha) {
  const SasHeadArgs a = make_args(x, alpha, -1, "sas_head_moments_cpu");
  at::Tensor sum = at::empty({a.K, a.C}, f64()), gram = at::empty({a.K, a.C, a.C}, f64());
  UNIMRI_KERNEL_FOR(cpu_variant(), sas_head_moments)(a, x.data_ptr(), alpha.data_ptr(), sum.data_ptr<double>(),
                                                      gram.data_ptr<double>());
  return {sum, gram};
}

// c + sum_k mat_k (alpha_k * x): (B, C_out, *S) in x's dtype; mat (K, C_out, C), c (C_out,).
at::Tensor sas_head_apply_cpu(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& mat,
                              const at::Tensor& bias) {
  TORCH_CHECK(mat.dim() == 3, "sas_head_apply_cpu: mat must be (K, C_out, C), got ", mat.sizes());
  const SasHeadArgs a = make_args(x, alpha, mat.size(1), "sas_head_apply_cpu");
  const at::Tensor m = f64_contiguous(mat, {a.K, a.Co, a.C}, "sas_head_apply_cpu", "mat");
  const at::Tensor c = f64_contiguous(bias, {a.Co}, "sas_head_apply_cpu", "bias");
  at::Tensor out = pooled_empty(with_channels(x, a.Co), x.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), sas_head_apply)(a, x.data_ptr(), alpha.data_ptr(), m.data_ptr<double>(),
                                                    c.data_ptr<double>(), out.data_ptr());
  return out;
}

// (grad_mat (K, C_out, C), grad_bias (C_out,)) of sas_head_apply_cpu for grad_p (B, C_out, *S),
// float64.
std::tuple<at::Tensor, at::Tensor> sas_head_weight_grad_cpu(const at::Tensor& grad_p, const at::Tensor& x,
                                                            const at::Tensor& alpha) {
  const auto [a, g] = grad_args(grad_p, x, alpha, "sas_head_weight_grad_cpu");
  at::Tensor grad_mat = at::empty({a.K, a.Co, a.C}, f64()), grad_bias = at::empty({a.Co}, f64());
  UNIMRI_KERNEL_FOR(cpu_variant(), sas_head_weight_grad)(a, g.data_ptr(), x.data_ptr(), alpha.data_ptr(),
                                                          grad_mat.data_ptr<double>(), grad_bias.data_ptr<double>());
  return {grad_mat, grad_bias};
}

// (grad_x (B, C, *S), grad_alpha (B, K, *S)) in x's dtype from grad_y_k = at_k grad_p + d_k y_k
// + e_k: at (K, C, C_out), d (K, C, C), e (K, C).
std::tuple<at::Tensor, at::Tensor> sas_head_input_grad_cpu(const at::Tensor& grad_p, const at::Tensor& x,
                                                           const at::Tensor& alpha, const at::Tensor& at_mat,
                                                           const at::Tensor& d, const at::Tensor& e) {
  const auto [a, g] = grad_args(grad_p, x, alpha, "sas_head_input_grad_cpu");
  const at::Tensor atc = f64_contiguous(at_mat, {a.K, a.C, a.Co}, "sas_head_input_grad_cpu", "at");
  const at::Tensor dc = f64_contiguous(d, {a.K, a.C, a.C}, "sas_head_input_grad_cpu", "d");
  const at::Tensor ec = f64_contiguous(e, {a.K, a.C}, "sas_head_input_grad_cpu", "e");
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  at::Tensor grad_alpha = pooled_empty(alpha.sizes(), alpha.options());
  UNIMRI_KERNEL_FOR(cpu_variant(), sas_head_input_grad)(a, g.data_ptr(), x.data_ptr(), alpha.data_ptr(),
                                                         atc.data_ptr<double>(), dc.data_ptr<double>(),
                                                         ec.data_ptr<double>(), grad_x.data_ptr(),
                                                         grad_alpha.data_ptr());
  return {grad_x, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("sas_head_moments_cpu", &sas_head_moments_cpu);
  m.impl("sas_head_apply_cpu", &sas_head_apply_cpu);
  m.impl("sas_head_weight_grad_cpu", &sas_head_weight_grad_cpu);
  m.impl("sas_head_input_grad_cpu", &sas_head_input_grad_cpu);
}

}  // namespace unimri
