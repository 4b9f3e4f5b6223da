// Fused Unified Focal loss family on the CPU (schema in registration.cpp).
//
// logits (B, C, N) contiguous, target int64 (B, N) with ignore_index or soft (B, C, N)
// in the logits' dtype, class_params (4, C) float64 rows [fw, g, tw, e] — the maths is
// in unimri_kernels/reference/loss.py. Pass 1 reduces TP, Σp, Σy per (sample, class),
// the focal sum and the valid count over tiles of pixels (deterministic: one partial row
// per tile, reduced in order). Pass 2 recomputes the softmax per tile and writes
// d loss_b / d logits, so autograd's backward is only a scale by grad_output.
// The tile loops are branch-free so that GCC vectorises them, exp/log included (libmvec);
// they are compiled twice (baseline and AVX2+FMA) and picked at run time.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

// Vector variants of exp/log from glibc's libmvec (linked with -lmvec): glibc declares
// them only under -ffast-math, which would also drop the inf/NaN semantics relied on here.
// Every per-element loop below is branch-free so that GCC vectorises it with them.
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float logf(float);
#pragma omp declare simd notinbranch
double log(double);
}

namespace unimri {
namespace {

namespace base {
#include "unified_focal_loss_impl.h"
}  // namespace base

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "unified_focal_loss_impl.h"
}  // namespace avx2
#pragma GCC pop_options

// AVX2+FMA build of the kernels when the CPU has them; UNIMRI_CPU_BASELINE=1 forces the
// baseline build (read once; the tests use it to cover both).
bool cpu_has_avx2_fma() {
  static const bool ok = std::getenv("UNIMRI_CPU_BASELINE") == nullptr && __builtin_cpu_supports("avx2") &&
                         __builtin_cpu_supports("fma");
  return ok;
}

std::tuple<at::Tensor, at::Tensor> unified_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                          const at::Tensor& class_params, double fp_weight,
                                                          double fn_weight, double smooth, int64_t ignore_index,
                                                          bool batch, bool compute_grad) {
  TORCH_CHECK(logits.dim() == 3 && logits.is_contiguous(), "unified_focal_loss_cpu: logits must be contiguous (B, C, N)");
  TORCH_CHECK(logits.is_floating_point(), "unified_focal_loss_cpu: logits must be floating point");
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  if (target.is_floating_point()) {
    TORCH_CHECK(target.sizes() == logits.sizes() && target.scalar_type() == logits.scalar_type() &&
                    target.is_contiguous(),
                "unified_focal_loss_cpu: soft target must be contiguous (B, C, N) in the logits' dtype");
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 2 && target.size(0) == B &&
                    target.size(1) == N && target.is_contiguous(),
                "unified_focal_loss_cpu: index target must be contiguous int64 (B, N)");
  }
  TORCH_CHECK(class_params.scalar_type() == at::kDouble && class_params.dim() == 2 && class_params.size(0) == 4 &&
                  class_params.size(1) == C && class_params.is_contiguous(),
              "unified_focal_loss_cpu: class_params must be contiguous float64 (4, C)");
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unified_focal_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    out = cpu_has_avx2_fma() ? avx2::run<scalar_t, acc_t>(logits, target, class_params, fp_weight, fn_weight,
                                                           smooth, ignore_index, batch, compute_grad)
                             : base::run<scalar_t, acc_t>(logits, target, class_params, fp_weight, fn_weight,
                                                          smooth, ignore_index, batch, compute_grad);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) { m.impl("unified_focal_loss_cpu", &unified_focal_loss_cpu); }

}  // namespace unimri
