// Fused Unified Focal loss family on the CPU (schema in registration.cpp).
//
// logits (B, C, N) contiguous, target int64 (B, N) with ignore_index or soft (B, C, N)
// in the logits' dtype, class_params (4, C) float64 rows [fw, g, tw, e] — the maths is
// in unimri_kernels/reference/unified_focal_loss.py. Pass 1 reduces TP, Σp, Σy per (sample, class),
// the focal sum and the valid count over tiles of pixels (deterministic: one partial row
// per tile, reduced in order) and checks the labels on the way. Then:
// * index targets, fp32/bf16/fp16 logits, C <= kStateMaxClasses (one sweep): pass 1 also
//   writes a per-pixel state and a light pass (no transcendental, no label read) turns it
//   into d loss_b / d logits. unified_focal_loss_cpu runs both; the loss modules call
//   unified_focal_loss_cpu_state in the forward and unified_focal_loss_cpu_finish in the
//   backward, with grad_output folded into the coefficients (no scaling pass).
// * otherwise pass 2 recomputes the softmax per tile and writes d loss_b / d logits, so
//   autograd's backward is only a scale by grad_output.
// The tile kernels (unified_focal_loss_kernel.h) are vectorised with at::vec::Vectorized in
// one build per CPU variant (cpu_variant.h), picked at every call.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu_variant.h"
#include "output_pool.h"
#include "unified_focal_loss.h"

namespace unimri {
namespace {

constexpr double kTiny = 1e-30;
// What the Python losses pass as ignore_index when the user gave None.
constexpr int64_t kNoIgnore = -(int64_t(1) << 31);

// base^e for base >= 0, e >= 0, with 0^0 = 1 (per-class values).
template <typename acc_t>
acc_t pow_nonneg(acc_t base, acc_t e) {
  if (e == acc_t(0)) return acc_t(1);
  if (base <= acc_t(0)) return acc_t(0);
  return std::exp(e * std::log(base));
}

// Raises the ValueError of the Python losses' label check (same wording): the smallest
// offending label if one is negative, else the largest.
[[noreturn]] void raise_bad_label(const LossArgs& args) {
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  for (int64_t i = 0; i < args.B * args.N; ++i) {
    const int64_t v = args.index_target[i];
    if (v == args.ignore_index) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const int64_t bad = lo < 0 ? lo : hi;
  const std::string ignore = args.ignore_index == kNoIgnore ? "None" : std::to_string(args.ignore_index);
  TORCH_CHECK_VALUE(false, "target holds label ", bad, " outside [0, ", args.C, ") (ignore_index=", ignore,
                    "); labels must index the ", args.C, " classes");
}

LossDtype loss_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return LossDtype::kDouble;
    case at::kFloat:
      return LossDtype::kFloat;
    case at::kBFloat16:
      return LossDtype::kBFloat16;
    case at::kHalf:
      return LossDtype::kHalf;
    default:
      TORCH_CHECK_TYPE(false, "unified_focal_loss_cpu: logits must be float16, bfloat16, float32 or float64, got ", t);
  }
}


// Index targets with fp32 accumulation take the one-sweep path (state + light pass).
bool one_sweep(const LossArgs& args) {
  return args.index_target != nullptr && args.dtype != LossDtype::kDouble && args.C <= kStateMaxClasses;
}

// dtype of the one-sweep state: the logits' for 2 classes (it fits the gradient buffer), fp32 otherwise.
LossDtype state_dtype(const LossArgs& args) { return args.C == 2 ? args.dtype : LossDtype::kFloat; }

// Loss (R,) and gradient coefficients (R, 3, C) = [K_TP | K_P | fw/count] from the tile partial sums
// (reduced in tile order: deterministic), R = 1 if batch else B. Raises on out-of-range labels.
template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> finish_stats(const at::Tensor& logits, const LossArgs& args,
                                                const std::vector<acc_t>& partial, double fp_weight,
                                                double fn_weight, double smooth, bool batch) {
  const int64_t B = args.B, C = args.C, T = args.tiles(), W = args.row_width();
  const int64_t R = batch ? 1 : B, tps = args.tiles_per_sample();
  std::vector<acc_t> stats(static_cast<size_t>(R * W), acc_t(0));
  for (int64_t t = 0; t < T; ++t) {
    acc_t* dst = &stats[(batch ? 0 : t / tps) * W];
    for (int64_t k = 0; k < W; ++k) dst[k] += partial[t * W + k];
  }
  if (args.index_target) {
    for (int64_t r = 0; r < R; ++r)
      if (stats[r * W + 3 * C + 2] > acc_t(0)) raise_bad_label(args);
  }
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor loss = at::empty({R}, logits.options().dtype(acc_type));
  at::Tensor coef_t = at::empty({R, 3, C}, logits.options().dtype(acc_type));
  acc_t* loss_ptr = loss.mutable_data_ptr<acc_t>();
  acc_t* coef = coef_t.mutable_data_ptr<acc_t>();
  const acc_t a = static_cast<acc_t>(fp_weight), be = static_cast<acc_t>(fn_weight);
  const acc_t eps = static_cast<acc_t>(smooth), tiny = static_cast<acc_t>(kTiny);
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* st = &stats[r * W];
    const acc_t count = st[3 * C + 1];
    const acc_t inv_n = count > acc_t(0) ? acc_t(1) / count : acc_t(0);
    acc_t value = st[3 * C] * inv_n;
    acc_t* cf = &coef[r * 3 * C];
    for (int64_t c = 0; c < C; ++c) {
      const acc_t fw = static_cast<acc_t>(args.params[c]);
      const acc_t tw = static_cast<acc_t>(args.params[2 * C + c]);
      const acc_t e = static_cast<acc_t>(args.params[3 * C + c]);
      const acc_t tp = st[c], ps = st[C + c], ys = st[2 * C + c];
      const acc_t num = tp + eps;
      const acc_t den = tp + be * (ys - tp) + a * (ps - tp) + eps;
      const acc_t u = acc_t(1) - num / den;
      const acc_t us = std::max(u, tiny);
      value += tw * pow_nonneg(us, e);
      const acc_t dl_dm = u > tiny ? -tw * e * std::pow(us, e - acc_t(1)) : acc_t(0);
      cf[c] = dl_dm * (den - num * (acc_t(1) - a - be)) / (den * den);
      cf[C + c] = dl_dm * (-num * a) / (den * den);
      cf[2 * C + c] = fw * inv_n;
    }
    loss_ptr[r] = value;
  }
  return {loss, coef_t};
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& logits, const LossArgs& args, double fp_weight,
                                       double fn_weight, double smooth, bool batch, bool compute_grad) {
  const CpuVariant variant = cpu_variant();
  std::vector<acc_t> partial(static_cast<size_t>(std::max<int64_t>(args.tiles(), 1) * args.row_width()), acc_t(0));
  UNIMRI_KERNEL_FOR(variant, loss_stats)(args, partial.data());
  auto [loss, coef] = finish_stats(logits, args, partial, fp_weight, fn_weight, smooth, batch);
  if (!compute_grad) return {loss, at::empty({0}, logits.options())};
  at::Tensor grad = pooled_empty({args.B, args.C, args.N}, logits.options());
  UNIMRI_KERNEL_FOR(variant, loss_grad)(args, coef.const_data_ptr(), batch, grad.mutable_data_ptr());
  return {loss, grad};
}

// One-sweep forward: (loss, state, coef); state is undefined unless with_state.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_one_sweep(const at::Tensor& logits, const LossArgs& args,
                                                             double fp_weight, double fn_weight, double smooth,
                                                             bool batch, bool with_state) {
  const CpuVariant variant = cpu_variant();
  at::Tensor state;
  if (with_state) {
    const bool own = state_dtype(args) == args.dtype;
    state = pooled_empty({args.B, args.C, args.N}, logits.options().dtype(own ? logits.scalar_type() : at::kFloat));
  }
  std::vector<float> partial(static_cast<size_t>(std::max<int64_t>(args.tiles(), 1) * args.row_width()), 0.f);
  UNIMRI_KERNEL_FOR(variant, loss_stats_state)(args, partial.data(), with_state ? state.mutable_data_ptr() : nullptr,
                                                state_dtype(args));
  auto [loss, coef] = finish_stats(logits, args, partial, fp_weight, fn_weight, smooth, batch);
  return {loss, state, coef};
}

LossDtype out_dtype_of(at::ScalarType t) {
  const LossDtype d = loss_dtype(t);
  TORCH_CHECK_TYPE(d != LossDtype::kDouble,
                   "unified_focal_loss_cpu_finish: dtype must be float32, bfloat16 or float16");
  return d;
}

// The light pass: gradient (B, C, N) in `dtype` from the one-sweep state, coef (R, 3, C) fp32 and
// scale (R,) (grad_output; null: ones), R = 1 (batch) or B. Written over the state when inplace and
// the dtypes match.
at::Tensor finish_grad_impl(const at::Tensor& state, const at::Tensor& coef, const float* scale,
                            at::ScalarType dtype, bool inplace) {
  const LossDtype out_dtype = out_dtype_of(dtype);
  TORCH_CHECK(state.dim() == 3 && state.is_contiguous() && state.size(1) >= 2 && state.size(1) <= kStateMaxClasses,
              "unified_focal_loss_cpu_finish: state must be a contiguous (B, C, N) one-sweep state");
  const int64_t B = state.size(0), C = state.size(1), N = state.size(2);
  const LossDtype sd = C == 2 ? out_dtype : LossDtype::kFloat;
  TORCH_CHECK(loss_dtype(state.scalar_type()) == sd, "unified_focal_loss_cpu_finish: state dtype ",
              state.scalar_type(), " does not match the output dtype ", dtype, " for ", C, " classes");
  TORCH_CHECK(coef.scalar_type() == at::kFloat && coef.dim() == 3 && coef.size(1) == 3 && coef.size(2) == C &&
                  (coef.size(0) == 1 || coef.size(0) == B) && coef.is_contiguous(),
              "unified_focal_loss_cpu_finish: coef must be contiguous float32 (1 or B, 3, C)");
  const int64_t R = coef.size(0);
  const float* cf = coef.const_data_ptr<float>();
  std::vector<float> scaled(static_cast<size_t>(B * 3 * C));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = R == 1 ? 0 : b;
    const float s = scale == nullptr ? 1.f : scale[r];
    for (int64_t k = 0; k < 3 * C; ++k) scaled[b * 3 * C + k] = cf[r * 3 * C + k] * s;
  }
  at::Tensor out = inplace && state.scalar_type() == dtype ? state : pooled_empty({B, C, N}, state.options().dtype(dtype));
  const LossFinishArgs f{state.const_data_ptr(), sd, out.mutable_data_ptr(), out_dtype, scaled.data(), B, C, N};
  UNIMRI_KERNEL_FOR(cpu_variant(), loss_finish)(f);
  return out;
}

at::Tensor unified_focal_loss_cpu_finish(const at::Tensor& state, const at::Tensor& coef,
                                         const at::Tensor& grad_output, at::ScalarType dtype, bool inplace) {
  TORCH_CHECK(coef.dim() == 3 && grad_output.numel() == coef.size(0), "unified_focal_loss_cpu_finish: grad_output has ",
              grad_output.numel(), " elements, expected one per row of coef");
  const at::Tensor scale = grad_output.to(at::kFloat).contiguous();
  return finish_grad_impl(state, coef, scale.const_data_ptr<float>(), dtype, inplace);
}

LossArgs make_args(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& class_params,
                   int64_t ignore_index) {
  TORCH_CHECK(logits.dim() == 3 && logits.is_contiguous(), "unified_focal_loss_cpu: logits must be contiguous (B, C, N)");
  const LossDtype dtype = loss_dtype(logits.scalar_type());
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const bool index = !target.is_floating_point();
  if (index) {
    TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 2 && target.size(0) == B &&
                    target.size(1) == N && target.is_contiguous(),
                "unified_focal_loss_cpu: index target must be contiguous int64 (B, N)");
  } else {
    TORCH_CHECK(target.sizes() == logits.sizes() && target.scalar_type() == logits.scalar_type() &&
                    target.is_contiguous(),
                "unified_focal_loss_cpu: soft target must be contiguous (B, C, N) in the logits' dtype");
  }
  TORCH_CHECK(class_params.scalar_type() == at::kDouble && class_params.dim() == 2 && class_params.size(0) == 4 &&
                  class_params.size(1) == C && class_params.is_contiguous(),
              "unified_focal_loss_cpu: class_params must be contiguous float64 (4, C)");
  return LossArgs{logits.const_data_ptr(),
                  index ? target.const_data_ptr<int64_t>() : nullptr,
                  index ? nullptr : target.const_data_ptr(),
                  class_params.const_data_ptr<double>(),
                  B, C, N, ignore_index, dtype};
}

std::tuple<at::Tensor, at::Tensor> unified_focal_loss_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                          const at::Tensor& class_params, double fp_weight,
                                                          double fn_weight, double smooth, int64_t ignore_index,
                                                          bool batch, bool compute_grad) {
  const LossArgs args = make_args(logits, target, class_params, ignore_index);
  if (one_sweep(args)) {
    auto [loss, state, coef] = run_one_sweep(logits, args, fp_weight, fn_weight, smooth, batch, compute_grad);
    if (!compute_grad) return {loss, at::empty({0}, logits.options())};
    return {loss, finish_grad_impl(state, coef, nullptr, logits.scalar_type(), true)};
  }
  if (args.dtype == LossDtype::kDouble)
    return run<double>(logits, args, fp_weight, fn_weight, smooth, batch, compute_grad);
  return run<float>(logits, args, fp_weight, fn_weight, smooth, batch, compute_grad);
}

// Forward of the one-sweep path: (loss (R,), state (B, C, N), coef (R, 3, C) fp32). Index targets,
// fp32/bf16/fp16 logits, at most kStateMaxClasses classes; unified_focal_loss_cpu_finish makes
// the gradient, grad_output folded in.
std::tuple<at::Tensor, at::Tensor, at::Tensor> unified_focal_loss_cpu_state(
    const at::Tensor& logits, const at::Tensor& target, const at::Tensor& class_params, double fp_weight,
    double fn_weight, double smooth, int64_t ignore_index, bool batch) {
  const LossArgs args = make_args(logits, target, class_params, ignore_index);
  TORCH_CHECK_VALUE(one_sweep(args), "unified_focal_loss_cpu_state: needs int64 index targets, float32/bfloat16/"
                    "float16 logits and at most ", kStateMaxClasses, " classes");
  return run_one_sweep(logits, args, fp_weight, fn_weight, smooth, batch, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) {
  m.impl("unified_focal_loss_cpu", &unified_focal_loss_cpu);
  m.impl("unified_focal_loss_cpu_state", &unified_focal_loss_cpu_state);
  m.impl("unified_focal_loss_cpu_finish", &unified_focal_loss_cpu_finish);
}

}  // namespace unimri
