// The one place where unimri's C++ schemas are defined: the single TORCH_LIBRARY(unimri, m) block
// below. The registration rule for every op: its schema here, its CPU implementation registered
// with TORCH_LIBRARY_IMPL(unimri, CPU, m) at the end of its own <op>.cpp, next to the code; no
// file opens a TORCH_LIBRARY_FRAGMENT. The queries about the build itself (CPU variant, output
// pool, tile products) have no kernel file and are defined here with their implementation.
// The public, autograd- and compile-aware ops are the Python custom ops of
// unimri_kernels/ops, which call these for CPU tensors.
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu_variant.h"
#include "output_pool.h"
#include "tile_gemm.h"

TORCH_LIBRARY(unimri, m) {
  // Unified Focal loss family, both passes fused (see csrc/unified_focal_loss.cpp).
  m.def(
      "unified_focal_loss_cpu(Tensor logits, Tensor target, Tensor class_params, "
      "float fp_weight, float fn_weight, float smooth, int ignore_index, bool batch, "
      "bool compute_grad) -> (Tensor, Tensor)");
  // Its one-sweep halves (index targets, fp32/bf16/fp16): forward -> (loss, state, coef), and
  // the gradient from them with grad_output folded in.
  m.def(
      "unified_focal_loss_cpu_state(Tensor logits, Tensor target, Tensor class_params, "
      "float fp_weight, float fn_weight, float smooth, int ignore_index, bool batch) -> (Tensor, Tensor, Tensor)");
  m.def(
      "unified_focal_loss_cpu_finish(Tensor(a!) state, Tensor coef, Tensor grad_output, ScalarType dtype, "
      "bool inplace) -> Tensor");
  // Attention gate (SAS), forward and backward (see csrc/attention_gate.cpp).
  m.def(
      "attention_gate_cpu(Tensor x, Tensor g, Tensor theta_weight, Tensor phi_weight, "
      "Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, int subsample, float focal) -> (Tensor, Tensor)");
  m.def(
      "attention_gate_backward_cpu(Tensor grad_y, Tensor grad_alpha, Tensor x, Tensor g, "
      "Tensor theta_weight, Tensor phi_weight, Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, "
      "int subsample, float focal) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Several gates on the same (x, g), parameters stacked along a leading gates dimension.
  m.def(
      "attention_gates_cpu(Tensor x, Tensor g, Tensor theta_weight, Tensor phi_weight, "
      "Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, int subsample, float focal) -> (Tensor, Tensor)");
  m.def(
      "attention_gates_backward_cpu(Tensor grad_y, Tensor grad_alpha, Tensor x, Tensor g, "
      "Tensor theta_weight, Tensor phi_weight, Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, "
      "int subsample, float focal) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same, attention maps only (no y = alpha * x; for the folded SAS head), and its gradients.
  m.def(
      "attention_gates_alpha_cpu(Tensor x, Tensor g, Tensor theta_weight, Tensor phi_weight, "
      "Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, int subsample, float focal) -> Tensor");
  m.def(
      "attention_gates_alpha_backward_cpu(Tensor grad_alpha, Tensor x, Tensor g, "
      "Tensor theta_weight, Tensor phi_weight, Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, "
      "int subsample, float focal, Tensor? grad_x_in=None, Tensor? saved_h=None, Tensor? saved_coarse=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The alpha-only forward also returning what its backward would recompute (saved_h,
  // saved_coarse: csrc/attention_gate.h, GateSaved), for the direct SAS route (unimri_kernels.dispatch.route).
  m.def(
      "attention_gates_alpha_saving_cpu(Tensor x, Tensor g, Tensor theta_weight, Tensor phi_weight, "
      "Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, int subsample, float focal) -> (Tensor, Tensor, Tensor)");
  // Batch norm + ReLU fused (see csrc/batch_norm_relu.cpp): (out, mean, var), updating the
  // running statistics in training when given; and the gradients of x, weight and bias (the
  // last two float64).
  m.def(
      "batch_norm_relu_cpu(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float factor, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_relu_backward_cpu(Tensor grad_out, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, "
      "Tensor var, float eps, bool batch_stats) -> (Tensor, Tensor, Tensor)");
  // 2x max pooling (kernel 2, stride 2) of (B, C, H, W) or (B, C, D, H, W), and its gradient,
  // recomputed from x (see csrc/max_pool.cpp).
  m.def("max_pool2x_cpu(Tensor x) -> Tensor");
  m.def("max_pool2x_backward_cpu(Tensor grad_out, Tensor x) -> Tensor");
  // Pointwise (1x1) convolution of (B, C_in, *S) by weight (C_out, C_in) (+ bias), and its
  // gradients of x, weight and bias (the last two float64) (see csrc/pointwise_conv.cpp).
  m.def("pointwise_conv_cpu(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("pointwise_conv_backward_cpu(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)");
  // The passes of the folded selective-attention head over x (B, C, *S) and the gates'
  // attention maps alpha (B, K, *S), never materialising alpha_k * x (see csrc/sas_head.cpp):
  // moments -> (sum, gram), apply -> out, and the backward's weight and input gradients.
  m.def("sas_head_moments_cpu(Tensor x, Tensor alpha) -> (Tensor, Tensor)");
  m.def("sas_head_apply_cpu(Tensor x, Tensor alpha, Tensor mat, Tensor bias) -> Tensor");
  m.def("sas_head_weight_grad_cpu(Tensor grad_p, Tensor x, Tensor alpha) -> (Tensor, Tensor)");
  m.def(
      "sas_head_input_grad_cpu(Tensor grad_p, Tensor x, Tensor alpha, Tensor at, Tensor d, Tensor e) "
      "-> (Tensor, Tensor)");
  // The CPU kernel build in use now and every one this machine runs (csrc/cpu_variant.h).
  m.def("cpu_variant() -> str", [] { return std::string(unimri::cpu_variant_name(unimri::cpu_variant())); });
  m.def("cpu_variants() -> str[]", [] { return unimri::supported_cpu_variants(); });
  // The pool of recycled output blocks (csrc/output_pool.h): {free bytes held, blocks held,
  // hits, misses}, and giving every free block back to the system.
  m.def("cpu_pool_stats() -> int[]", [] { return unimri::cpu_pool_stats(); });
  m.def("cpu_pool_release() -> ()", [] { unimri::cpu_pool_release(); });
  m.def("cpu_pool_empty(int[] size, ScalarType dtype) -> Tensor",
        [](std::vector<int64_t> size, c10::ScalarType dtype) {
          return unimri::pooled_empty(size, at::TensorOptions().dtype(dtype).device(at::kCPU));
        });
  // Whether the kernels' tile products call the BLAS directly (else at::mm), and whether they
  // multiply bf16/fp16 tiles in that type (else as float32).
  m.def("tile_gemm_uses_blas() -> bool", [] { return unimri::tile_gemm_uses_blas(); });
  m.def("tile_gemm_half_products(ScalarType dtype) -> str", [](c10::ScalarType dtype) -> std::string {
    switch (unimri::tile_gemm_half_products(dtype)) {
      case unimri::HalfProducts::kAlways:
        return "always";
      case unimri::HalfProducts::kWherePaying:
        return "where_paying";
      default:
        return "never";
    }
  });
}
