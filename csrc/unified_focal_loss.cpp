// Fused Unified Focal loss family on the CPU (schema in registration.cpp).
//
// logits (B, C, N) contiguous, target int64 (B, N) with ignore_index or soft (B, C, N)
// in the logits' dtype, class_params (4, C) float64 rows [fw, g, tw, e] — the maths is
// in unimri_kernels/reference/loss.py. Pass 1 reduces TP, Σp, Σy per (sample, class),
// the focal sum and the valid count over tiles of pixels (deterministic: one partial row
// per tile, reduced in order). Pass 2 recomputes the softmax per tile and writes
// d loss_b / d logits, so autograd's backward is only a scale by grad_output.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

// Vector variants of exp from glibc's libmvec (linked with -lmvec): glibc declares them
// only under -ffast-math, which would also drop inf/NaN semantics this kernel relies on.
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double exp(double);
}

namespace unimri {
namespace {

inline float vexp(float x) { return expf(x); }
inline double vexp(double x) { return exp(x); }

constexpr int64_t kTile = 256;
constexpr double kTiny = 1e-30;

// base^e for base >= 0, e >= 0, with 0^0 = 1.
template <typename acc_t>
inline acc_t pow_nonneg(acc_t base, acc_t e) {
  if (e == acc_t(0)) return acc_t(1);
  if (base <= acc_t(0)) return acc_t(0);
  return std::exp(e * std::log(base));
}

template <typename scalar_t, typename acc_t>
struct Problem {
  const scalar_t* logits;
  const int64_t* index_target;  // null for soft targets
  const scalar_t* soft_target;  // null for index targets
  const double* params;         // (4, C)
  int64_t B, C, N, ignore_index;

  acc_t y(int64_t b, int64_t c, int64_t i, int64_t label) const {
    if (index_target) return label == c ? acc_t(1) : acc_t(0);
    return static_cast<acc_t>(soft_target[(b * C + c) * N + i]);
  }
  int64_t label(int64_t b, int64_t i) const { return index_target ? index_target[b * N + i] : 0; }
  bool valid(int64_t label) const { return !index_target || label != ignore_index; }

  // Log-softmax of pixels [start, start+n) of sample b into lp[c * kTile + j] and the
  // probabilities into pr[c * kTile + j] (one exp per element; plain loops that GCC
  // vectorises with libmvec under -fno-math-errno).
  void softmax_tile(int64_t b, int64_t start, int64_t n, acc_t* lp, acc_t* pr, acc_t* mx, acc_t* sum) const {
    const scalar_t* zb = logits + b * C * N + start;
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = -std::numeric_limits<acc_t>::infinity();
      sum[j] = acc_t(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = lp + c * kTile;
      const scalar_t* z = zb + c * N;
      for (int64_t j = 0; j < n; ++j) {
        l[j] = static_cast<acc_t>(z[j]);
        mx[j] = std::max(mx[j], l[j]);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = lp + c * kTile;
      acc_t* p = pr + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        l[j] -= mx[j];
        p[j] = vexp(l[j]);
        sum[j] += p[j];
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = std::log(sum[j]);  // reuse mx as log Σ exp(z − max)
      sum[j] = acc_t(1) / sum[j];
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = lp + c * kTile;
      acc_t* p = pr + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        l[j] -= mx[j];
        p[j] *= sum[j];
      }
    }
  }
};

template <typename scalar_t, typename acc_t>
void check_labels(const Problem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n) {
  if (!pr.index_target) return;
  for (int64_t j = 0; j < n; ++j) {
    int64_t t = pr.index_target[b * pr.N + start + j];
    TORCH_CHECK(t == pr.ignore_index || (t >= 0 && t < pr.C), "unified_focal_loss: target label ", t,
                " is outside [0, ", pr.C, ") and is not ignore_index=", pr.ignore_index);
  }
}

// Pass 1 of one tile: adds [TP_c | Σp_c | Σy_c | focal | count] into row (3C + 2).
template <typename scalar_t, typename acc_t>
void stats_tile(const Problem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, acc_t* lp,
                acc_t* prob, acc_t* mx, acc_t* sum, acc_t* row) {
  const int64_t C = pr.C;
  check_labels(pr, b, start, n);
  pr.softmax_tile(b, start, n, lp, prob, mx, sum);
  acc_t focal = 0, count = 0;
  for (int64_t j = 0; j < n; ++j) count += pr.valid(pr.label(b, start + j)) ? 1 : 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t fw = static_cast<acc_t>(pr.params[c]);
    const acc_t g = static_cast<acc_t>(pr.params[C + c]);
    acc_t tp = 0, ps = 0, ys = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t lab = pr.label(b, start + j);
      if (!pr.valid(lab)) continue;
      const acc_t l = lp[c * kTile + j];
      const acc_t p = prob[c * kTile + j];
      const acc_t yv = pr.y(b, c, start + j, lab);
      tp += p * yv;
      ps += p;
      ys += yv;
      if (yv != acc_t(0) && fw != acc_t(0)) focal += fw * yv * pow_nonneg<acc_t>(-std::expm1(l), g) * (-l);
    }
    row[c] += tp;
    row[C + c] += ps;
    row[2 * C + c] += ys;
  }
  row[3 * C] += focal;
  row[3 * C + 1] += count;
}

// Pass 2 of one tile: d loss / d logits from coef (3, C) = [K_TP | K_P | fw/N].
template <typename scalar_t, typename acc_t>
void grad_tile(const Problem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, const acc_t* coef,
               acc_t* lp, acc_t* prob, acc_t* mx, acc_t* sum, acc_t* abuf, scalar_t* grad) {
  const int64_t C = pr.C, N = pr.N;
  pr.softmax_tile(b, start, n, lp, prob, mx, sum);
  acc_t* sum_a = mx;  // free after softmax_tile
  acc_t* sum_pb = sum;
  for (int64_t j = 0; j < n; ++j) sum_a[j] = sum_pb[j] = acc_t(0);
  // abuf holds a_c (rows 0..C) and b_c (rows C..2C).
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = static_cast<acc_t>(pr.params[C + c]);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t lab = pr.label(b, start + j);
      const acc_t l = lp[c * kTile + j];
      const acc_t p = prob[c * kTile + j];
      acc_t a = 0, bb = 0;
      if (pr.valid(lab)) {
        const acc_t yv = pr.y(b, c, start + j, lab);
        if (yv != acc_t(0) && coef[2 * C + c] != acc_t(0)) {
          const acc_t q = -std::expm1(l);
          const acc_t s = q > acc_t(0) ? -l / q : acc_t(1);  // −log p / (1 − p) → 1
          a = coef[2 * C + c] * yv * pow_nonneg<acc_t>(q, g) * (acc_t(-1) - g * p * s);
        }
        bb = coef[c] * yv + coef[C + c];
      }
      abuf[c * kTile + j] = a;
      abuf[(C + c) * kTile + j] = bb;
      sum_a[j] += a;
      sum_pb[j] += p * bb;
    }
  }
  scalar_t* gb = grad + b * C * N + start;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < n; ++j) {
      const bool ok = pr.valid(pr.label(b, start + j));
      const acc_t p = prob[c * kTile + j];
      const acc_t v = abuf[c * kTile + j] - p * sum_a[j] + p * (abuf[(C + c) * kTile + j] - sum_pb[j]);
      gb[c * N + j] = static_cast<scalar_t>(ok ? v : acc_t(0));
    }
}

template <typename scalar_t, typename acc_t>
std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& logits, const at::Tensor& target,
                                       const at::Tensor& class_params, double fp_weight, double fn_weight,
                                       double smooth, int64_t ignore_index, bool batch, bool compute_grad) {
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const bool index = !target.is_floating_point();
  Problem<scalar_t, acc_t> pr{logits.const_data_ptr<scalar_t>(),
                              index ? target.const_data_ptr<int64_t>() : nullptr,
                              index ? nullptr : target.const_data_ptr<scalar_t>(),
                              class_params.const_data_ptr<double>(),
                              B, C, N, ignore_index};
  const int64_t tiles_per_sample = (N + kTile - 1) / kTile;
  const int64_t T = B * tiles_per_sample;
  const int64_t W = 3 * C + 2;
  std::vector<acc_t> partial(static_cast<size_t>(std::max<int64_t>(T, 1) * W), acc_t(0));
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> lp(C * kTile), prob(C * kTile), mx(kTile), sum(kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles_per_sample, start = (t % tiles_per_sample) * kTile;
      stats_tile(pr, b, start, std::min(kTile, N - start), lp.data(), prob.data(), mx.data(), sum.data(),
                 &partial[t * W]);
    }
  });
  // Reduce in tile order (deterministic), then pool over the batch if asked.
  const int64_t R = batch ? 1 : B;
  std::vector<acc_t> stats(static_cast<size_t>(R * W), acc_t(0));
  for (int64_t t = 0; t < T; ++t) {
    acc_t* dst = &stats[(batch ? 0 : t / tiles_per_sample) * W];
    for (int64_t k = 0; k < W; ++k) dst[k] += partial[t * W + k];
  }
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor loss = at::empty({R}, logits.options().dtype(acc_type));
  acc_t* loss_ptr = loss.mutable_data_ptr<acc_t>();
  std::vector<acc_t> coef(static_cast<size_t>(R * 3 * C), acc_t(0));
  const acc_t a = static_cast<acc_t>(fp_weight), be = static_cast<acc_t>(fn_weight);
  const acc_t eps = static_cast<acc_t>(smooth), tiny = static_cast<acc_t>(kTiny);
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* st = &stats[r * W];
    const acc_t count = st[3 * C + 1];
    const acc_t inv_n = count > acc_t(0) ? acc_t(1) / count : acc_t(0);
    acc_t value = st[3 * C] * inv_n;
    acc_t* cf = &coef[r * 3 * C];
    for (int64_t c = 0; c < C; ++c) {
      const acc_t tw = static_cast<acc_t>(class_params.const_data_ptr<double>()[2 * C + c]);
      const acc_t e = static_cast<acc_t>(class_params.const_data_ptr<double>()[3 * C + c]);
      const acc_t fw = static_cast<acc_t>(class_params.const_data_ptr<double>()[c]);
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
  if (!compute_grad) return {loss, at::empty({0}, logits.options())};
  at::Tensor grad = at::empty({B, C, N}, logits.options());
  scalar_t* grad_ptr = grad.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, T, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> lp(C * kTile), prob(C * kTile), mx(kTile), sum(kTile), abuf(2 * C * kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles_per_sample, start = (t % tiles_per_sample) * kTile;
      grad_tile(pr, b, start, std::min(kTile, N - start), &coef[(batch ? 0 : b) * 3 * C], lp.data(), prob.data(),
                mx.data(), sum.data(), abuf.data(), grad_ptr);
    }
  });
  return {loss, grad};
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
    out = run<scalar_t, acc_t>(logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch,
                               compute_grad);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unimri, CPU, m) { m.impl("unified_focal_loss_cpu", &unified_focal_loss_cpu); }

}  // namespace unimri
