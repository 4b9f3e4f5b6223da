// Kernel body of csrc/unified_focal_loss.cpp, included twice by it: once for baseline
// x86-64 and once under `#pragma GCC target("avx2,fma")` (chosen at run time), each time
// inside its own namespace. No include guard on purpose.
inline float vexp(float x) { return expf(x); }
inline double vexp(double x) { return exp(x); }
inline float vlog(float x) { return logf(x); }
inline double vlog(double x) { return log(x); }

constexpr int64_t kTile = 256;
constexpr double kTiny = 1e-30;

// 1 − e^l for l ≤ 0, accurate near 0 (series) without a scalar expm1 call.
template <typename T>
inline T neg_expm1(T l) {
  const T poly = l * (T(1) + l * (T(0.5) + l * (T(1.0 / 6) + l * (T(1.0 / 24) + l * (T(1.0 / 120) + l * (
                     T(1.0 / 720) + l * (T(1.0 / 5040) + l * T(1.0 / 40320))))))));
  const T one_minus_e = T(1) - vexp(l);  // unconditional: a call inside ?: blocks vectorisation
  return l > T(-0.1) ? -poly : one_minus_e;
}

// base^e for base >= 0, e >= 0, with 0^0 = 1 (scalar; used on per-class values).
template <typename acc_t>
inline acc_t pow_nonneg(acc_t base, acc_t e) {
  if (e == acc_t(0)) return acc_t(1);
  if (base <= acc_t(0)) return acc_t(0);
  return std::exp(e * std::log(base));
}

// Per-thread buffers of one tile of kTile pixels: C rows of kTile each, or one row.
template <typename acc_t>
struct Tile {
  std::vector<acc_t> lp, prob, y, a, bb;  // log p, p, target, focal / Tversky gradient terms
  std::vector<acc_t> mx, sum, valid;      // per pixel
  explicit Tile(int64_t C)
      : lp(C * kTile), prob(C * kTile), y(C * kTile), a(C * kTile), bb(C * kTile), mx(kTile), sum(kTile),
        valid(kTile) {}
};

template <typename scalar_t, typename acc_t>
struct Problem {
  const scalar_t* logits;
  const int64_t* index_target;  // null for soft targets
  const scalar_t* soft_target;  // null for index targets
  const double* params;         // (4, C)
  int64_t B, C, N, ignore_index;

  void check_labels(int64_t b, int64_t start, int64_t n) const {
    if (!index_target) return;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = index_target[b * N + start + j];
      TORCH_CHECK(t == ignore_index || (t >= 0 && t < C), "unified_focal_loss: target label ", t,
                  " is outside [0, ", C, ") and is not ignore_index=", ignore_index);
    }
  }

  // Softmax (log p and p) of pixels [start, start+n) of sample b, the target rows y and
  // the validity of each pixel, all as acc_t.
  void load(int64_t b, int64_t start, int64_t n, Tile<acc_t>& t) const {
    const scalar_t* zb = logits + b * C * N + start;
    acc_t* mx = t.mx.data();
    acc_t* sum = t.sum.data();
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = -std::numeric_limits<acc_t>::infinity();
      sum[j] = acc_t(0);
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = t.lp.data() + c * kTile;
      const scalar_t* z = zb + c * N;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const acc_t v = static_cast<acc_t>(z[j]);
        l[j] = v;
        mx[j] = v > mx[j] ? v : mx[j];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = t.lp.data() + c * kTile;
      acc_t* p = t.prob.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        l[j] -= mx[j];
        p[j] = vexp(l[j]);
        sum[j] += p[j];
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      mx[j] = vlog(sum[j]);  // reuse mx as log Σ exp(z − max)
      sum[j] = acc_t(1) / sum[j];
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t* l = t.lp.data() + c * kTile;
      acc_t* p = t.prob.data() + c * kTile;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        l[j] -= mx[j];
        p[j] *= sum[j];
      }
    }
    acc_t* valid = t.valid.data();
    if (index_target) {
      const int64_t* lab = index_target + b * N + start;
      // Labels as acc_t with −1 for ignored pixels (branch-free: random labels would
      // mispredict, and baseline x86-64 has no vector int64 compare), then float compares.
      const int64_t ignore = ignore_index;
      acc_t* labf = t.a.data();  // scratch, overwritten later by pass 2
      for (int64_t j = 0; j < n; ++j) {
        const acc_t ig = static_cast<acc_t>(lab[j] == ignore);
        labf[j] = static_cast<acc_t>(lab[j]) * (acc_t(1) - ig) - ig;
      }
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) valid[j] = static_cast<acc_t>(labf[j] >= acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        acc_t* y = t.y.data() + c * kTile;
        const acc_t cf = static_cast<acc_t>(c);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] = static_cast<acc_t>(labf[j] == cf);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) valid[j] = acc_t(1);
      for (int64_t c = 0; c < C; ++c) {
        acc_t* y = t.y.data() + c * kTile;
        const scalar_t* src = soft_target + (b * C + c) * N + start;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] = static_cast<acc_t>(src[j]);
      }
    }
  }
};

// Pass 1 of one tile: adds [TP_c | Σp_c | Σy_c | focal | count] into row (3C + 2).
template <typename scalar_t, typename acc_t>
void stats_tile(const Problem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, Tile<acc_t>& t,
                acc_t* row) {
  const int64_t C = pr.C;
  pr.check_labels(b, start, n);
  pr.load(b, start, n, t);
  const acc_t* valid = t.valid.data();
  acc_t count = 0, focal = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t j = 0; j < n; ++j) count += valid[j];
  for (int64_t c = 0; c < C; ++c) {
    const acc_t fw = static_cast<acc_t>(pr.params[c]);
    const acc_t g = static_cast<acc_t>(pr.params[C + c]);
    const acc_t* l = t.lp.data() + c * kTile;
    const acc_t* p = t.prob.data() + c * kTile;
    const acc_t* y = t.y.data() + c * kTile;
    acc_t tp = 0, ps = 0, ys = 0, fc = 0;
#pragma omp simd reduction(+ : tp, ps, ys)
    for (int64_t j = 0; j < n; ++j) {
      tp += p[j] * y[j];
      ps += p[j] * valid[j];
      ys += y[j];
    }
    if (fw != acc_t(0) && g != acc_t(0)) {
#pragma omp simd reduction(+ : fc)
      for (int64_t j = 0; j < n; ++j) fc += y[j] * vexp(g * vlog(neg_expm1(l[j]))) * (-l[j]);
    } else if (fw != acc_t(0)) {
#pragma omp simd reduction(+ : fc)
      for (int64_t j = 0; j < n; ++j) fc += y[j] * (-l[j]);
    }
    focal += fw * fc;
    row[c] += tp;
    row[C + c] += ps;
    row[2 * C + c] += ys;
  }
  row[3 * C] += focal;
  row[3 * C + 1] += count;
}

// Pass 2 of one tile: d loss / d logits from coef (3, C) = [K_TP | K_P | fw/N]:
// a_c = dF/dlog p_c, b_c = dT/dp_c, grad_k = a_k − p_k Σa + p_k (b_k − Σ p b).
template <typename scalar_t, typename acc_t>
void grad_tile(const Problem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, const acc_t* coef,
               Tile<acc_t>& t, scalar_t* grad) {
  const int64_t C = pr.C, N = pr.N;
  pr.load(b, start, n, t);
  acc_t* sum_a = t.mx.data();  // free after load
  acc_t* sum_pb = t.sum.data();
  const acc_t* valid = t.valid.data();
  for (int64_t j = 0; j < n; ++j) sum_a[j] = sum_pb[j] = acc_t(0);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t g = static_cast<acc_t>(pr.params[C + c]);
    const acc_t k_tp = coef[c], k_p = coef[C + c], fw_n = coef[2 * C + c];
    const acc_t* l = t.lp.data() + c * kTile;
    const acc_t* p = t.prob.data() + c * kTile;
    const acc_t* y = t.y.data() + c * kTile;
    acc_t* a = t.a.data() + c * kTile;
    acc_t* bb = t.bb.data() + c * kTile;
    if (fw_n != acc_t(0) && g != acc_t(0)) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const acc_t q = neg_expm1(l[j]);
        const acc_t s = q > acc_t(0) ? -l[j] / (q > acc_t(0) ? q : acc_t(1)) : acc_t(1);  // −log p/(1−p) → 1
        a[j] = fw_n * y[j] * vexp(g * vlog(q)) * (acc_t(-1) - g * p[j] * s);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) a[j] = -fw_n * y[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      bb[j] = valid[j] * (k_tp * y[j] + k_p);
      sum_a[j] += a[j];
      sum_pb[j] += p[j] * bb[j];
    }
  }
  scalar_t* gb = grad + b * C * N + start;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* p = t.prob.data() + c * kTile;
    const acc_t* a = t.a.data() + c * kTile;
    const acc_t* bb = t.bb.data() + c * kTile;
    scalar_t* out = gb + c * N;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
      out[j] = static_cast<scalar_t>(valid[j] * (a[j] - p[j] * sum_a[j] + p[j] * (bb[j] - sum_pb[j])));
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
    Tile<acc_t> tile(C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles_per_sample, start = (t % tiles_per_sample) * kTile;
      stats_tile(pr, b, start, std::min(kTile, N - start), tile, &partial[t * W]);
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
    Tile<acc_t> tile(C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tiles_per_sample, start = (t % tiles_per_sample) * kTile;
      grad_tile(pr, b, start, std::min(kTile, N - start), &coef[(batch ? 0 : b) * 3 * C], tile, grad_ptr);
    }
  });
  return {loss, grad};
}

