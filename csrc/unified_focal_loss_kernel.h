// Vectorised tile kernels of the Unified Focal loss (maths: unimri_kernels/reference/loss.py).
// Included by kernels_<variant>.cpp inside namespace unimri::<variant> after the variant has set
// CPU_CAPABILITY (and the ISA flags), so at::vec::Vectorized has that variant's width and its
// exp/log are Sleef's. No include guard on purpose.
//
// Per pixel, with e_k = exp(z_k − max z) and S = Σ e_k:
//   log p_c = (z_c − max) − log1p(r), r = Σ e_k − 1 summed without the max term (accurate as p → 1),
//   1 − p_c = (Σ_{k≠c} e_k) / S, summed without cancellation, so (1 − p)^γ and
//   −log p / (1 − p) (→ 1 as p → 1) stay accurate where the naive forms lose every digit.
// Pass 1 (loss_stats) reduces TP, Σp, Σy per class, the focal sum, the valid count and the
// number of out-of-range labels per tile. Pass 2 (loss_grad) recomputes the softmax per tile and
// writes a_k − p_k Σa + p_k (b_k − Σ p b), a = dFocal/dlog p, b = dTversky/dp.

namespace {

using at::vec::Vectorized;

// Tile buffers of one thread, kLossTile pixels per row (a multiple of every vector width).
template <typename acc_t>
struct LossTile {
  std::vector<acc_t> shifted, e, lp, p, y, a, bb;  // C rows each
  std::vector<acc_t> lse, valid, label, sum_a, sum_pb;  // one row each
  explicit LossTile(int64_t C)
      : shifted(C * kLossTile), e(C * kLossTile), lp(C * kLossTile), p(C * kLossTile), y(C * kLossTile),
        a(C * kLossTile), bb(C * kLossTile), lse(kLossTile), valid(kLossTile), label(kLossTile),
        sum_a(kLossTile), sum_pb(kLossTile) {}
};

// dst[0, n) = src[0, n) as acc_t, zero up to the next multiple of the vector width.
template <typename scalar_t, typename acc_t>
void load_row(const scalar_t* src, acc_t* dst, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else {
    constexpr int64_t V = Vectorized<scalar_t>::size();  // 2 float vectors per reduced vector
    for (int64_t j = 0; j < n; j += V) {
      const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(
          Vectorized<scalar_t>::loadu(src + j, static_cast<int>(std::min<int64_t>(V, n - j))));
      lo.store(dst + j);
      hi.store(dst + j + Vec::size());
    }
  }
  const int64_t padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  std::fill(dst + n, dst + padded, acc_t(0));
}

template <typename scalar_t, typename acc_t>
void store_row(const acc_t* src, scalar_t* dst, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else {
    constexpr int64_t V = Vectorized<scalar_t>::size();
    for (int64_t j = 0; j < n; j += V) {
      const Vectorized<scalar_t> out =
          at::vec::convert_from_float<scalar_t>(Vec::loadu(src + j), Vec::loadu(src + j + Vec::size()));
      out.store(dst + j, static_cast<int>(std::min<int64_t>(V, n - j)));
    }
  }
}

// Vec::size() values (fewer at a tail: the rest read as 0) as acc_t.
template <typename scalar_t, typename acc_t>
Vectorized<acc_t> load_vec(const scalar_t* src, int64_t count) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return count >= Vec::size() ? Vec::loadu(src) : Vec::loadu(src, static_cast<int>(count));
  } else {
    Vec out;
    if (count >= Vec::size()) {
      at::vec::load_to_float<scalar_t>(src, out);
    } else {
      scalar_t tmp[Vec::size()] = {};
      std::copy(src, src + count, tmp);
      at::vec::load_to_float<scalar_t>(tmp, out);
    }
    return out;
  }
}

template <typename scalar_t, typename acc_t>
void store_vec(const Vectorized<acc_t>& v, scalar_t* dst, int64_t count) {
  using Vec = Vectorized<acc_t>;
  const int n = static_cast<int>(std::min<int64_t>(count, Vec::size()));
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(dst, n);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(dst, n);
  }
}

// e^x: ATen's inline polynomial (20 ulp) for fp32, Sleef's (1 ulp) for fp64.
template <typename acc_t>
Vectorized<acc_t> fast_exp(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// atanh(t) / t = Σ t^2k / (2k + 1) for t <= 1/3, to t^14 (relative error < 2e-8): with
// t = u / (2 + u), log1p(u) = 2 t · atanh(t) / t, accurate relative to u as u -> 0.
inline Vectorized<float> atanh_over_t(const Vectorized<float>& t2) {
  using Vec = Vectorized<float>;
  Vec poly(1.f / 15);
  for (const float k : {1.f / 13, 1.f / 11, 1.f / 9, 1.f / 7, 1.f / 5, 1.f / 3, 1.f}) poly = at::vec::fmadd(poly, t2, Vec(k));
  return poly;
}

template <typename scalar_t, typename acc_t>
struct LossProblem {
  using Vec = Vectorized<acc_t>;
  const scalar_t* logits;
  const int64_t* index_target;
  const scalar_t* soft_target;
  const double* params;
  int64_t B, C, N, ignore_index;

  // Labels of pixels [start, start + n) as acc_t (−1: ignored or out of range) and their
  // validity; returns how many labels were outside [0, C) and not ignore_index.
  int64_t load_labels(int64_t b, int64_t start, int64_t n, LossTile<acc_t>& t) const {
    const int64_t* lab = index_target + b * N + start;
    acc_t* lf = t.label.data();
    acc_t* valid = t.valid.data();
    int64_t bad = 0;
    const uint64_t classes = static_cast<uint64_t>(C);
    for (int64_t j = 0; j < n; ++j) {  // branch-free: the compiler vectorises it
      const int64_t v = lab[j];
      const bool in_range = static_cast<uint64_t>(v) < classes, ignored = v == ignore_index;
      bad += static_cast<int64_t>(!in_range & !ignored);
      const bool ok = in_range & !ignored;  // ignore_index wins, even inside [0, C)
      lf[j] = ok ? static_cast<acc_t>(v) : acc_t(-1);
      valid[j] = ok ? acc_t(1) : acc_t(0);
    }
    const int64_t padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
    std::fill(lf + n, lf + padded, acc_t(-1));
    std::fill(valid + n, valid + padded, acc_t(0));
    return bad;
  }

  // Labels of pixels [start, start + n) as float, −1 where ignored or out of range (also in the
  // padding up to whole vectors); returns how many were outside [0, C) and not ignore_index.
  int64_t load_labels(int64_t b, int64_t start, int64_t n, float* lf) const {
    const int64_t* lab = index_target + b * N + start;
    int64_t bad = 0;
    const uint64_t classes = static_cast<uint64_t>(C);
    for (int64_t j = 0; j < n; ++j) {  // branch-free, vectorised; ok labels fit in int32
      const int64_t v = lab[j];
      const bool in_range = static_cast<uint64_t>(v) < classes, ignored = v == ignore_index;
      bad += static_cast<int64_t>(!in_range & !ignored);
      lf[j] = in_range & !ignored ? static_cast<float>(static_cast<int32_t>(v)) : -1.f;
    }
    const int64_t padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
    std::fill(lf + n, lf + padded, -1.f);
    return bad;
  }

  // Softmax of pixels [start, start + n) of sample b (rows shifted, e, lp, p and lse), the target
  // rows y and the validity of each pixel. Returns the number of bad labels. Lanes past n are
  // padding: zero logits, y = 0, valid = 0, so every sum over them adds 0.
  int64_t load(int64_t b, int64_t start, int64_t n, LossTile<acc_t>& t) const {
    const int64_t nv = (n + Vec::size() - 1) / Vec::size() * Vec::size();
    for (int64_t c = 0; c < C; ++c)
      load_row(logits + (b * C + c) * N + start, t.shifted.data() + c * kLossTile, n);
    for (int64_t j = 0; j < nv; j += Vec::size()) {
      Vec mx = Vec::loadu(t.shifted.data() + j);
      for (int64_t c = 1; c < C; ++c) mx = at::vec::maximum(mx, Vec::loadu(t.shifted.data() + c * kLossTile + j));
      // r = Σ e_k − 1 without the max term: ones counts the maxima (ties add exactly 1 each).
      Vec r(acc_t(0)), ones(acc_t(-1));
      const Vec one(acc_t(1));
      for (int64_t c = 0; c < C; ++c) {
        acc_t* sh = t.shifted.data() + c * kLossTile + j;
        const Vec s = Vec::loadu(sh) - mx;
        const Vec e = fast_exp(s);
        s.store(sh);
        e.store(t.e.data() + c * kLossTile + j);
        const Vec is_one = e == one;
        r = r + Vec::blendv(e, Vec(acc_t(0)), is_one);
        ones = ones + (is_one & one);
      }
      r = r + ones;
      const Vec lse = r.log1p();
      const Vec inv = one / (one + r);
      lse.store(t.lse.data() + j);
      for (int64_t c = 0; c < C; ++c) {
        (Vec::loadu(t.shifted.data() + c * kLossTile + j) - lse).store(t.lp.data() + c * kLossTile + j);
        (Vec::loadu(t.e.data() + c * kLossTile + j) * inv).store(t.p.data() + c * kLossTile + j);
      }
    }
    int64_t bad = 0;
    if (index_target) {
      bad = load_labels(b, start, n, t);
      for (int64_t c = 0; c < C; ++c) {
        const Vec cf(static_cast<acc_t>(c));
        acc_t* y = t.y.data() + c * kLossTile;
        for (int64_t j = 0; j < nv; j += Vec::size()) Vec::loadu(t.label.data() + j).eq(cf).store(y + j);
      }
    } else {
      std::fill(t.valid.begin(), t.valid.begin() + n, acc_t(1));
      std::fill(t.valid.begin() + n, t.valid.begin() + nv, acc_t(0));
      for (int64_t c = 0; c < C; ++c) load_row(soft_target + (b * C + c) * N + start, t.y.data() + c * kLossTile, n);
    }
    return bad;
  }

  // log(1 − p_c) of the tile's vector at j: log Σ_{k≠c} e_k − lse (−inf where p_c = 1).
  Vec log_one_minus_p(const LossTile<acc_t>& t, int64_t c, int64_t j) const {
    Vec others(acc_t(0));
    for (int64_t k = 0; k < C; ++k)
      if (k != c) others = others + Vec::loadu(t.e.data() + k * kLossTile + j);
    return others.log() - Vec::loadu(t.lse.data() + j);
  }
};

template <typename acc_t>
acc_t hsum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](const Vectorized<acc_t>& x, const Vectorized<acc_t>& y) { return x + y; },
                                        v);
}

// Pass 1 of one tile: adds [TP_c | Σp_c | Σy_c | focal | count | bad] into row.
template <typename scalar_t, typename acc_t>
void stats_tile(const LossProblem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, LossTile<acc_t>& t,
                acc_t* row) {
  using Vec = Vectorized<acc_t>;
  const int64_t C = pr.C, nv = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  const int64_t bad = pr.load(b, start, n, t);
  const acc_t* valid = t.valid.data();
  Vec count(acc_t(0)), focal(acc_t(0));
  for (int64_t j = 0; j < nv; j += Vec::size()) count = count + Vec::loadu(valid + j);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t fw = static_cast<acc_t>(pr.params[c]);
    const Vec g(static_cast<acc_t>(pr.params[C + c]));
    const bool has_focal = fw != acc_t(0), has_gamma = pr.params[C + c] != 0.0;
    const acc_t* lp = t.lp.data() + c * kLossTile;
    const acc_t* p = t.p.data() + c * kLossTile;
    const acc_t* y = t.y.data() + c * kLossTile;
    Vec tp(acc_t(0)), ps(acc_t(0)), ys(acc_t(0)), fc(acc_t(0));
    for (int64_t j = 0; j < nv; j += Vec::size()) {
      const Vec pv = Vec::loadu(p + j), yv = Vec::loadu(y + j);
      tp = at::vec::fmadd(pv, yv, tp);
      ps = at::vec::fmadd(pv, Vec::loadu(valid + j), ps);
      ys = ys + yv;
      if (has_focal) {
        Vec term = yv * (Vec(acc_t(0)) - Vec::loadu(lp + j));
        if (has_gamma) term = term * fast_exp(g * pr.log_one_minus_p(t, c, j));
        fc = fc + term;
      }
    }
    row[c] += hsum(tp);
    row[C + c] += hsum(ps);
    row[2 * C + c] += hsum(ys);
    row[3 * C] += fw * hsum(fc);
  }
  row[3 * C + 1] += hsum(count);
  row[3 * C + 2] += static_cast<acc_t>(bad);
}

// Pass 2 of one tile: d loss / d logits from coef (3, C) = [K_TP | K_P | fw/count].
template <typename scalar_t, typename acc_t>
void grad_tile(const LossProblem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, const acc_t* coef,
               LossTile<acc_t>& t, scalar_t* grad) {
  using Vec = Vectorized<acc_t>;
  const int64_t C = pr.C, N = pr.N, nv = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  pr.load(b, start, n, t);
  const Vec zero(acc_t(0)), one(acc_t(1));
  std::fill(t.sum_a.begin(), t.sum_a.begin() + nv, acc_t(0));
  std::fill(t.sum_pb.begin(), t.sum_pb.begin() + nv, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const Vec g(static_cast<acc_t>(pr.params[C + c]));
    const bool has_gamma = pr.params[C + c] != 0.0;
    const Vec k_tp(coef[c]), k_p(coef[C + c]), fw_n(coef[2 * C + c]);
    const acc_t* lp = t.lp.data() + c * kLossTile;
    const acc_t* p = t.p.data() + c * kLossTile;
    const acc_t* y = t.y.data() + c * kLossTile;
    acc_t* a = t.a.data() + c * kLossTile;
    acc_t* bb = t.bb.data() + c * kLossTile;
    for (int64_t j = 0; j < nv; j += Vec::size()) {
      const Vec pv = Vec::loadu(p + j), yv = Vec::loadu(y + j), valid = Vec::loadu(t.valid.data() + j);
      Vec av = zero - fw_n * yv;
      if (has_gamma && coef[2 * C + c] != acc_t(0)) {
        // a = fw/count · y · (1 − p)^γ · (−1 − γ p s), s = −log p / (1 − p) → 1 as p → 1
        const Vec log_q = pr.log_one_minus_p(t, c, j);
        const Vec q = fast_exp(log_q);
        const Vec neg_lp = zero - Vec::loadu(lp + j);
        const Vec s = Vec::blendv(one, neg_lp / Vec::blendv(one, q, q > zero), q > zero);
        av = fw_n * yv * fast_exp(g * log_q) * (zero - one - g * pv * s);
      }
      const Vec bv = valid * at::vec::fmadd(k_tp, yv, k_p);
      av.store(a + j);
      bv.store(bb + j);
      (Vec::loadu(t.sum_a.data() + j) + av).store(t.sum_a.data() + j);
      at::vec::fmadd(pv, bv, Vec::loadu(t.sum_pb.data() + j)).store(t.sum_pb.data() + j);
    }
  }
  acc_t* out = t.shifted.data();  // free after load: one output row at a time
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* p = t.p.data() + c * kLossTile;
    const acc_t* a = t.a.data() + c * kLossTile;
    const acc_t* bb = t.bb.data() + c * kLossTile;
    for (int64_t j = 0; j < nv; j += Vec::size()) {
      const Vec pv = Vec::loadu(p + j);
      const Vec inner = Vec::loadu(a + j) - pv * Vec::loadu(t.sum_a.data() + j) +
                        pv * (Vec::loadu(bb + j) - Vec::loadu(t.sum_pb.data() + j));
      (Vec::loadu(t.valid.data() + j) * inner).store(out + j);
    }
    store_row(out, grad + (b * C + c) * N + start, n);
  }
}

// C = 2, all in registers: d = z1 − z0, u = e^{−|d|}; the larger class has log p = −log1p(u),
// p = 1 / (1 + u), the smaller log p = −|d| − log1p(u), p = u / (1 + u); 1 − p_c = p_{1−c}.
// s_c = −log p_c / (1 − p_c) (the focal gradient's ratio, → 1 as p_c → 1) in closed form:
// larger: log1p(u) (1 + u) / u, smaller: (|d| + log1p(u)) (1 + u). For fp32 one division gives
// 1 / (1 + u), the atanh series variable t = u / (2 + u) and log1p(u) / u.
template <typename acc_t>
struct BinarySoftmax {
  Vectorized<acc_t> lp[2], p[2], s[2];
  Vectorized<acc_t> small, larger1;  // min(p_0, p_1) and the mask of lanes where class 1 is the larger
  BinarySoftmax(const Vectorized<acc_t>& z0, const Vectorized<acc_t>& z1) {
    using Vec = Vectorized<acc_t>;
    const Vec zero(acc_t(0)), one(acc_t(1)), d = z1 - z0, ad = d.abs();
    const Vec u = fast_exp(zero - ad), one_u = one + u;
    Vec sp, inv, s_large;
    if constexpr (std::is_same_v<acc_t, float>) {
      const Vec two_u = Vec(2.f) + u, r = one / (one_u * two_u);
      inv = two_u * r;
      const Vec t = u * one_u * r, half_log1p_over_t = atanh_over_t(t * t);  // log1p(u) = 2 t · that
      sp = Vec(2.f) * t * half_log1p_over_t;
      s_large = Vec(2.f) * half_log1p_over_t * one_u * one_u * r;  // log1p(u) / u · (1 + u)
    } else {
      inv = one / one_u;
      sp = u.log1p();
      const Vec pos = u > zero;
      s_large = Vec::blendv(one, sp * one_u / Vec::blendv(one, u, pos), pos);
    }
    small = u * inv;
    const Vec s_small = (ad + sp) * one_u;
    const Vec first_larger = d > zero;  // class 1 larger
    larger1 = first_larger;
    lp[1] = Vec::blendv(zero - ad - sp, zero - sp, first_larger);
    lp[0] = Vec::blendv(zero - sp, zero - ad - sp, first_larger);
    p[1] = Vec::blendv(small, inv, first_larger);
    p[0] = Vec::blendv(inv, small, first_larger);
    s[1] = Vec::blendv(s_small, s_large, first_larger);
    s[0] = Vec::blendv(s_large, s_small, first_larger);
  }
};

// Target rows y0, y1 and validity of the vector at j (labels or soft rows already in the tile).
template <typename scalar_t, typename acc_t>
void binary_targets(const LossProblem<scalar_t, acc_t>& pr, const LossTile<acc_t>& t, int64_t b, int64_t start,
                    int64_t j, int64_t count, Vectorized<acc_t>* y, Vectorized<acc_t>& valid) {
  using Vec = Vectorized<acc_t>;
  valid = Vec::loadu(t.valid.data() + j);
  if (pr.index_target) {
    const Vec lab = Vec::loadu(t.label.data() + j);
    y[0] = lab.eq(Vec(acc_t(0)));
    y[1] = lab.eq(Vec(acc_t(1)));
  } else {
    y[0] = load_vec<scalar_t, acc_t>(pr.soft_target + (b * 2) * pr.N + start + j, count);
    y[1] = load_vec<scalar_t, acc_t>(pr.soft_target + (b * 2 + 1) * pr.N + start + j, count);
  }
}

// Labels (index targets) or validity (soft targets) of a tile into t.label / t.valid.
template <typename scalar_t, typename acc_t>
int64_t tile_validity(const LossProblem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, LossTile<acc_t>& t) {
  using Vec = Vectorized<acc_t>;
  if (pr.index_target) return pr.load_labels(b, start, n, t);
  const int64_t nv = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  std::fill(t.valid.begin(), t.valid.begin() + n, acc_t(1));
  std::fill(t.valid.begin() + n, t.valid.begin() + nv, acc_t(0));
  return 0;
}

template <typename scalar_t, typename acc_t>
void binary_stats_tile(const LossProblem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n,
                       LossTile<acc_t>& t, acc_t* row) {
  using Vec = Vectorized<acc_t>;
  const int64_t bad = tile_validity(pr, b, start, n, t);
  const scalar_t* z0 = pr.logits + (b * 2) * pr.N + start;
  const scalar_t* z1 = z0 + pr.N;
  const acc_t fw[2] = {static_cast<acc_t>(pr.params[0]), static_cast<acc_t>(pr.params[1])};
  const acc_t gm[2] = {static_cast<acc_t>(pr.params[2]), static_cast<acc_t>(pr.params[3])};
  const Vec zero(acc_t(0));
  Vec tp[2] = {zero, zero}, ps[2] = {zero, zero}, ys[2] = {zero, zero}, fc[2] = {zero, zero}, count = zero;
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    const BinarySoftmax<acc_t> sm(load_vec<scalar_t, acc_t>(z0 + j, cnt), load_vec<scalar_t, acc_t>(z1 + j, cnt));
    Vec y[2], valid;
    binary_targets(pr, t, b, start, j, cnt, y, valid);
    count = count + valid;
    for (int c = 0; c < 2; ++c) {
      tp[c] = at::vec::fmadd(sm.p[c], y[c], tp[c]);
      ps[c] = at::vec::fmadd(sm.p[c], valid, ps[c]);
      ys[c] = ys[c] + y[c];
      if (fw[c] != acc_t(0)) {
        Vec term = y[c] * (zero - sm.lp[c]);
        if (gm[c] != acc_t(0)) term = term * fast_exp(Vec(gm[c]) * sm.lp[1 - c]);
        fc[c] = fc[c] + term;
      }
    }
  }
  for (int c = 0; c < 2; ++c) {
    row[c] += hsum(tp[c]);
    row[2 + c] += hsum(ps[c]);
    row[4 + c] += hsum(ys[c]);
    row[6] += fw[c] * hsum(fc[c]);
  }
  row[7] += hsum(count);
  row[8] += static_cast<acc_t>(bad);
}

template <typename scalar_t, typename acc_t>
void binary_grad_tile(const LossProblem<scalar_t, acc_t>& pr, int64_t b, int64_t start, int64_t n, const acc_t* coef,
                      LossTile<acc_t>& t, scalar_t* grad) {
  using Vec = Vectorized<acc_t>;
  tile_validity(pr, b, start, n, t);
  const scalar_t* z0 = pr.logits + (b * 2) * pr.N + start;
  const scalar_t* z1 = z0 + pr.N;
  scalar_t* g0 = grad + (b * 2) * pr.N + start;
  scalar_t* g1 = g0 + pr.N;
  const acc_t gm[2] = {static_cast<acc_t>(pr.params[2]), static_cast<acc_t>(pr.params[3])};
  const Vec zero(acc_t(0)), one(acc_t(1));
  const Vec k_tp[2] = {Vec(coef[0]), Vec(coef[1])}, k_p[2] = {Vec(coef[2]), Vec(coef[3])},
            fw_n[2] = {Vec(coef[4]), Vec(coef[5])};
  const bool focal_factor[2] = {gm[0] != acc_t(0) && coef[4] != acc_t(0), gm[1] != acc_t(0) && coef[5] != acc_t(0)};
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    const BinarySoftmax<acc_t> sm(load_vec<scalar_t, acc_t>(z0 + j, cnt), load_vec<scalar_t, acc_t>(z1 + j, cnt));
    Vec y[2], valid, a[2], bb[2];
    binary_targets(pr, t, b, start, j, cnt, y, valid);
    for (int c = 0; c < 2; ++c) {
      a[c] = zero - fw_n[c] * y[c];
      if (focal_factor[c]) {
        // fw/count · y · (1 − p)^γ · (−1 − γ p s), s = −log p / (1 − p) → 1 as p → 1
        const Vec g(gm[c]);
        a[c] = fw_n[c] * y[c] * fast_exp(g * sm.lp[1 - c]) * (zero - one - g * sm.p[c] * sm.s[c]);
      }
      bb[c] = valid * at::vec::fmadd(k_tp[c], y[c], k_p[c]);
    }
    const Vec sum_a = a[0] + a[1], sum_pb = sm.p[0] * bb[0] + sm.p[1] * bb[1];
    store_vec(valid * (a[0] - sm.p[0] * sum_a + sm.p[0] * (bb[0] - sum_pb)), g0 + j, cnt);
    store_vec(valid * (a[1] - sm.p[1] * sum_a + sm.p[1] * (bb[1] - sum_pb)), g1 + j, cnt);
  }
}

// ---- One sweep: index targets, fp32 accumulation (fp32 / bf16 / fp16 logits), C <= 16 ------------
// Pass 1 also writes a per-pixel state of C values from which the gradient follows with no
// transcendental and no label read (loss_finish), so the logits are swept once. With the label L,
// the focal part of the gradient is a_L = (fw_L / count) F_L, F_L = (1 − p_L)^γ_L (−1 − γ_L p_L s_L)
// <= 0 (−1 without a focal factor), and with b_c = K_TP_c y_c + K_P_c the gradient is
//   g_L = a_L (1 − p_L) + p_L (b_L − Σ p b),  g_c = p_c (b_c − a_L − Σ p b) for c ≠ L.
// State (the sign bit carries the flags, so an underflowed −0 keeps them):
//   C = 2: slot 0 = min(p_0, p_1), sign set when class 1 is the less likely; slot 1 = |F_L|, sign
//          set when L = 1. Both probabilities stay exact (the larger is 1 − the smaller) and
//          g_1 = −g_0. Ignored pixels store +0, +0, which give a zero gradient. The state has the
//          logits' dtype and lives in the gradient buffer.
//   C > 2: slot c = p_c for c ≠ L and slot L = F_L with its sign set; p_L = 1 − Σ_{c≠L} p_c (exact
//          where p_L is large, else off by the others' rounding, relative to 1). Ignored pixels
//          store zeros. The state is fp32 (the gradient buffer itself for fp32 logits).
// bf16/fp16 rows are staged in fp32 and converted a row at a time (whole vectors).

// All-ones lanes where v's sign bit is set (−0 included): a blend mask.
inline Vectorized<float> sign_set(const Vectorized<float>& v) {
  using Vec = Vectorized<float>;
  return ((v & Vec(-0.f)) | Vec(1.f)) < Vec(0.f);
}

// How (1 − p_L)^γ is taken: no class has a focal factor; every focal γ is 0.5 (the default: a
// square root, exact to rounding); or exp(γ log(1 − p_L)).
enum class FocalPow { kNone, kSqrt, kExp };

inline FocalPow focal_pow(const double* params, int64_t C) {
  bool any = false, all_half = true;
  for (int64_t c = 0; c < C; ++c) {
    if (params[c] != 0.0 && params[C + c] != 0.0) {
      any = true;
      all_half = all_half && params[C + c] == 0.5;
    }
  }
  return !any ? FocalPow::kNone : all_half ? FocalPow::kSqrt : FocalPow::kExp;
}

struct LabelTile {  // one tile's labels (−1: ignored or out of range) as float, and fp32 staging rows
  std::vector<float> label, stage;
  explicit LabelTile(int64_t stage_rows) : label(kLossTile), stage(stage_rows * kLossTile) {}
};

template <typename scalar_t>
void binary_state_tile(const LossProblem<scalar_t, float>& pr, int64_t b, int64_t start, int64_t n, LabelTile& t,
                       float* row, scalar_t* state) {
  using Vec = Vectorized<float>;
  constexpr bool kStaged = !std::is_same_v<scalar_t, float>;
  const int64_t bad = pr.load_labels(b, start, n, t.label.data());
  const int64_t N = pr.N;
  const scalar_t* z0 = pr.logits + (b * 2) * N + start;
  const scalar_t* z1 = z0 + N;
  scalar_t* st = state == nullptr ? nullptr : state + (b * 2) * N + start;
  float* slot0 = nullptr;  // where the two state rows go: the state itself, or fp32 staging rows
  float* slot1 = nullptr;
  if (st != nullptr) {
    if constexpr (kStaged) {
      slot0 = t.stage.data();
      slot1 = slot0 + kLossTile;
    } else {
      slot0 = st;
      slot1 = st + N;
    }
  }
  const FocalPow pow_mode = focal_pow(pr.params, 2);
  const float fw[2] = {static_cast<float>(pr.params[0]), static_cast<float>(pr.params[1])};
  const Vec zero(0.f), one(1.f), two(2.f), sign(-0.f), fw0(fw[0]), fw1(fw[1]);
  const Vec g0(static_cast<float>(pr.params[2])), g1(static_cast<float>(pr.params[3]));
  Vec tp0 = zero, tp1 = zero, ps0 = zero, ps1 = zero, ys0 = zero, ys1 = zero, count = zero, fc = zero;
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    // Softmax of two classes (see BinarySoftmax): u = e^{−|d|}, the larger class has p = 1 / (1 + u),
    // log p = −log1p(u); the smaller p = u / (1 + u), log p = −|d| − log1p(u).
    const Vec d = load_vec<scalar_t, float>(z1 + j, cnt) - load_vec<scalar_t, float>(z0 + j, cnt);
    const Vec ad = d.abs(), u = fast_exp(zero - ad), one_u = one + u, two_u = two + u;
    const Vec r = one / (one_u * two_u), large = two_u * r, small = u * large;
    const Vec tt = u * one_u * r, h = atanh_over_t(tt * tt), sp = two * tt * h;  // sp = log1p(u)
    const Vec larger1 = d > zero;
    const Vec p0 = Vec::blendv(large, small, larger1), p1 = Vec::blendv(small, large, larger1);
    const Vec lab = Vec::loadu(t.label.data() + j);
    const Vec is0 = lab == zero, is1 = lab == one, y0 = is0 & one, y1 = is1 & one, valid = (lab >= zero) & one;
    tp0 = at::vec::fmadd(p0, y0, tp0);
    tp1 = at::vec::fmadd(p1, y1, tp1);
    ps0 = at::vec::fmadd(p0, valid, ps0);
    ps1 = at::vec::fmadd(p1, valid, ps1);
    ys0 = ys0 + y0;
    ys1 = ys1 + y1;
    count = count + valid;
    // Of the label's class L: m = L is the larger class.
    const Vec m = Vec::blendv(d <= zero, larger1, is1);
    const Vec lp_l = (zero - sp) - Vec::blendv(ad, zero, m);
    const Vec fw_l = Vec::blendv(is0 & fw0, fw1, is1);  // 0 on ignored pixels
    Vec f = zero - one;
    if (pow_mode == FocalPow::kNone) {
      fc = fc - fw_l * lp_l;
    } else {
      const Vec g = Vec::blendv(g0, g1, is1);
      const Vec pw = pow_mode == FocalPow::kSqrt ? Vec::blendv(large, small, m).sqrt()
                                                 : fast_exp(g * ((zero - sp) - Vec::blendv(zero, ad, m)));
      const Vec qg = Vec::blendv(pw, one, g == zero);  // (1 − p_L)^γ; 1 for γ = 0, even at p_L = 1
      fc = fc - fw_l * lp_l * qg;
      if (st != nullptr) {
        // s_L = −log p_L / (1 − p_L): for the larger class log1p(u) (1 + u) / u = 2 h (1 + u)^2 r,
        // for the smaller (|d| + log1p(u)) (1 + u)
        const Vec s_l = Vec::blendv((ad + sp) * one_u, two * h * one_u * one_u * r, m);
        f = qg * (zero - one - g * Vec::blendv(small, large, m) * s_l);
      }
    }
    if (st != nullptr) {
      const Vec labelled = is0 | is1;
      const Vec v0 = (small | Vec::blendv(sign, zero, larger1)) & labelled;
      const Vec v1 = (f.abs() | (is1 & sign)) & labelled;
      if constexpr (kStaged) {
        v0.store(slot0 + j);
        v1.store(slot1 + j);
      } else {
        store_vec(v0, slot0 + j, cnt);
        store_vec(v1, slot1 + j, cnt);
      }
    }
  }
  if constexpr (kStaged) {
    if (st != nullptr) {
      store_row(slot0, st, n);
      store_row(slot1, st + N, n);
    }
  }
  row[0] += hsum(tp0);
  row[1] += hsum(tp1);
  row[2] += hsum(ps0);
  row[3] += hsum(ps1);
  row[4] += hsum(ys0);
  row[5] += hsum(ys1);
  row[6] += hsum(fc);
  row[7] += hsum(count);
  row[8] += static_cast<float>(bad);
}

template <typename scalar_t>
void multi_state_tile(const LossProblem<scalar_t, float>& pr, int64_t b, int64_t start, int64_t n, LabelTile& t,
                      float* row, float* state) {
  using Vec = Vectorized<float>;
  constexpr int64_t K = kStateMaxClasses;
  const int64_t C = pr.C, N = pr.N;
  const int64_t bad = pr.load_labels(b, start, n, t.label.data());
  const scalar_t* z = pr.logits + b * C * N + start;
  float* st = state == nullptr ? nullptr : state + b * C * N + start;
  const FocalPow pow_mode = focal_pow(pr.params, C);
  const Vec zero(0.f), one(1.f), sign(-0.f);
  Vec tp[K], ps[K], ys[K], fw[K], gm[K];
  for (int64_t c = 0; c < C; ++c) {
    tp[c] = ps[c] = ys[c] = zero;
    fw[c] = Vec(static_cast<float>(pr.params[c]));
    gm[c] = Vec(static_cast<float>(pr.params[C + c]));
  }
  Vec count = zero, fc = zero;
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    Vec s[K], e[K], is[K];
    for (int64_t c = 0; c < C; ++c) s[c] = load_vec<scalar_t, float>(z + c * N + j, cnt);
    Vec mx = s[0];
    for (int64_t c = 1; c < C; ++c) mx = at::vec::maximum(mx, s[c]);
    // r = Σ e_k − 1 without the max term: ones counts the maxima (ties add exactly 1 each).
    Vec r = zero, ones(-1.f);
    for (int64_t c = 0; c < C; ++c) {
      s[c] = s[c] - mx;
      e[c] = fast_exp(s[c]);
      const Vec is_one = e[c] == one;
      r = r + Vec::blendv(e[c], zero, is_one);
      ones = ones + (is_one & one);
    }
    r = r + ones;
    const Vec lse = r.log1p(), inv = one / (one + r);
    const Vec lab = Vec::loadu(t.label.data() + j), valid = (lab >= zero) & one;
    // Of the label's class: shifted logit, e, weights; others = Σ_{k≠L} e_k (no cancellation).
    Vec others = zero, s_l = zero, e_l = zero, fw_l = zero, g = zero;
    for (int64_t c = 0; c < C; ++c) {
      is[c] = lab == Vec(static_cast<float>(c));
      const Vec y = is[c] & one, p = e[c] * inv;
      tp[c] = at::vec::fmadd(p, y, tp[c]);
      ps[c] = at::vec::fmadd(p, valid, ps[c]);
      ys[c] = ys[c] + y;
      others = others + Vec::blendv(e[c], zero, is[c]);
      s_l = Vec::blendv(s_l, s[c], is[c]);
      e_l = Vec::blendv(e_l, e[c], is[c]);
      fw_l = Vec::blendv(fw_l, fw[c], is[c]);
      g = Vec::blendv(g, gm[c], is[c]);
    }
    count = count + valid;
    const Vec lp_l = s_l - lse;
    Vec f = zero - one;
    if (pow_mode == FocalPow::kNone) {
      fc = fc - fw_l * lp_l;
    } else {
      const Vec q = others * inv;  // 1 − p_L
      const Vec pw = pow_mode == FocalPow::kSqrt ? q.sqrt() : fast_exp(g * (others.log() - lse));
      const Vec qg = Vec::blendv(pw, one, g == zero);  // (1 − p_L)^γ
      fc = fc - fw_l * lp_l * qg;
      if (st != nullptr) {
        // s = −log p_L / (1 − p_L), limit 1 where 1 − p_L underflows
        const Vec pos = q > zero;
        const Vec s_ratio = Vec::blendv(one, (zero - lp_l) / Vec::blendv(one, q, pos), pos);
        f = qg * (zero - one - g * (e_l * inv) * s_ratio);
      }
    }
    if (st != nullptr) {
      const Vec f_flag = f | sign;
      for (int64_t c = 0; c < C; ++c)
        store_vec(Vec::blendv(e[c] * inv * valid, f_flag, is[c]), st + c * N + j, cnt);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    row[c] += hsum(tp[c]);
    row[C + c] += hsum(ps[c]);
    row[2 * C + c] += hsum(ys[c]);
  }
  row[3 * C] += hsum(fc);
  row[3 * C + 1] += hsum(count);
  row[3 * C + 2] += static_cast<float>(bad);
}

// Light pass, C = 2: g_L = p_O (a_L + p_L (K_TP_L + K_P_L − K_P_O)), g_O = −g_L (O the other class).
// In place is safe: each tile reads its state before writing (staged rows are stored at the end).
template <typename state_t>
void binary_finish(const state_t* st, state_t* out, int64_t N, int64_t n, const float* cf, float* stage) {
  using Vec = Vectorized<float>;
  constexpr bool kStaged = !std::is_same_v<state_t, float>;
  float* o0 = nullptr;  // the output rows, or fp32 staging rows
  float* o1 = nullptr;
  if constexpr (kStaged) {
    o0 = stage;
    o1 = stage + kLossTile;
  } else {
    o0 = out;
    o1 = out + N;
  }
  const Vec zero(0.f), one(1.f), sign(-0.f);
  const Vec d0(cf[0] + cf[2] - cf[3]), d1(cf[1] + cf[3] - cf[2]), fwn0(cf[4]), fwn1(cf[5]);
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    const Vec v0 = load_vec<state_t, float>(st + j, cnt), v1 = load_vec<state_t, float>(st + N + j, cnt);
    const Vec lab1 = sign_set(v1), f = v1 | sign;  // f = F_L <= 0
    const Vec small_not_l = sign_set(v0) ^ lab1;    // the less likely class is not L
    const Vec p_small = v0.abs(), p_large = one - p_small;
    const Vec p_l = Vec::blendv(p_small, p_large, small_not_l), p_o = Vec::blendv(p_large, p_small, small_not_l);
    const Vec g_l = p_o * at::vec::fmadd(Vec::blendv(fwn0, fwn1, lab1), f, p_l * Vec::blendv(d0, d1, lab1));
    const Vec g0 = Vec::blendv(g_l, zero - g_l, lab1);
    if constexpr (kStaged) {
      g0.store(o0 + j);
      (zero - g0).store(o1 + j);
    } else {
      store_vec(g0, o0 + j, cnt);
      store_vec(zero - g0, o1 + j, cnt);
    }
  }
  if constexpr (kStaged) {
    store_row(o0, out, n);
    store_row(o1, out + N, n);
  }
}

// Light pass, C > 2 (state fp32; a bf16/fp16 gradient is staged).
template <typename out_t>
void multi_finish(const float* st, out_t* out, int64_t C, int64_t N, int64_t n, const float* cf, float* stage) {
  using Vec = Vectorized<float>;
  constexpr int64_t K = kStateMaxClasses;
  constexpr bool kStaged = !std::is_same_v<out_t, float>;
  const Vec zero(0.f), one(1.f);
  for (int64_t j = 0; j < n; j += Vec::size()) {
    const int64_t cnt = n - j;
    Vec p[K], is[K];
    Vec p_others = zero, a = zero, k_tp = zero, k_p = zero, dot = zero;  // k_tp, k_p: the label's
    for (int64_t c = 0; c < C; ++c) {
      const Vec v = load_vec<float, float>(st + c * N + j, cnt);
      is[c] = sign_set(v);
      p[c] = Vec::blendv(v, zero, is[c]);
      a = a + (is[c] & (v * Vec(cf[2 * C + c])));
      k_tp = k_tp + (is[c] & Vec(cf[c]));
      k_p = k_p + (is[c] & Vec(cf[C + c]));
      p_others = p_others + p[c];
      dot = at::vec::fmadd(p[c], Vec(cf[C + c]), dot);
    }
    const Vec p_l = one - p_others, sum_pb = at::vec::fmadd(p_l, k_tp + k_p, dot), a_q = a * p_others;
    for (int64_t c = 0; c < C; ++c) {
      const Vec kp(cf[C + c]);
      const Vec g = Vec::blendv(p[c] * (kp - a - sum_pb), a_q + p_l * (k_tp + kp - sum_pb), is[c]);
      if constexpr (kStaged) {
        g.store(stage + c * kLossTile + j);
      } else {
        store_vec(g, out + c * N + j, cnt);
      }
    }
  }
  if constexpr (kStaged) {
    for (int64_t c = 0; c < C; ++c) store_row(stage + c * kLossTile, out + c * N, n);
  }
}

template <typename scalar_t, typename acc_t>
LossProblem<scalar_t, acc_t> problem(const LossArgs& args) {
  return {static_cast<const scalar_t*>(args.logits), args.index_target,
          static_cast<const scalar_t*>(args.soft_target), args.params, args.B, args.C, args.N, args.ignore_index};
}

template <typename scalar_t, typename acc_t>
void stats_all(const LossArgs& args, acc_t* partial) {
  const LossProblem<scalar_t, acc_t> pr = problem<scalar_t, acc_t>(args);
  const int64_t tps = args.tiles_per_sample(), W = args.row_width();
  at::parallel_for(0, args.tiles(), 1, [&](int64_t begin, int64_t end) {
    LossTile<acc_t> tile(args.C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tps, start = (t % tps) * kLossTile;
      const int64_t n = std::min(kLossTile, args.N - start);
      if (args.C == 2)
        binary_stats_tile(pr, b, start, n, tile, partial + t * W);
      else
        stats_tile(pr, b, start, n, tile, partial + t * W);
    }
  });
}

template <typename scalar_t, typename acc_t>
void grad_all(const LossArgs& args, const acc_t* coef, bool batch, scalar_t* grad) {
  const LossProblem<scalar_t, acc_t> pr = problem<scalar_t, acc_t>(args);
  const int64_t tps = args.tiles_per_sample();
  at::parallel_for(0, args.tiles(), 1, [&](int64_t begin, int64_t end) {
    LossTile<acc_t> tile(args.C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tps, start = (t % tps) * kLossTile;
      const int64_t n = std::min(kLossTile, args.N - start);
      const acc_t* cf = coef + (batch ? 0 : b) * 3 * args.C;
      if (args.C == 2)
        binary_grad_tile(pr, b, start, n, cf, tile, grad);
      else
        grad_tile(pr, b, start, n, cf, tile, grad);
    }
  });
}

template <typename scalar_t, bool kBinary>
void stats_state_all(const LossArgs& args, float* partial, void* state) {
  const LossProblem<scalar_t, float> pr = problem<scalar_t, float>(args);
  const int64_t tps = args.tiles_per_sample(), W = args.row_width();
  at::parallel_for(0, args.tiles(), 1, [&](int64_t begin, int64_t end) {
    LabelTile tile(kBinary && !std::is_same_v<scalar_t, float> && state != nullptr ? 2 : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tps, start = (t % tps) * kLossTile;
      const int64_t n = std::min(kLossTile, args.N - start);
      if constexpr (kBinary) {
        binary_state_tile(pr, b, start, n, tile, partial + t * W, static_cast<scalar_t*>(state));
      } else {
        multi_state_tile(pr, b, start, n, tile, partial + t * W, static_cast<float*>(state));
      }
    }
  });
}

template <typename scalar_t>
void stats_state_dispatch(const LossArgs& args, float* partial, void* state) {
  if (args.C == 2) return stats_state_all<scalar_t, true>(args, partial, state);
  stats_state_all<scalar_t, false>(args, partial, state);
}

template <typename state_t, typename out_t>
void finish_all(const LossFinishArgs& f) {
  const int64_t tps = (f.N + kLossTile - 1) / kLossTile;
  const state_t* state = static_cast<const state_t*>(f.state);
  out_t* out = static_cast<out_t*>(f.out);
  at::parallel_for(0, f.B * tps, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> stage(std::is_same_v<out_t, float> ? 0 : f.C * kLossTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / tps, start = (t % tps) * kLossTile;
      const int64_t n = std::min(kLossTile, f.N - start), off = b * f.C * f.N + start;
      const float* cf = f.coef + b * 3 * f.C;
      if constexpr (std::is_same_v<state_t, out_t>) {
        if (f.C == 2) {
          binary_finish(state + off, out + off, f.N, n, cf, stage.data());
          continue;
        }
      }
      if constexpr (std::is_same_v<state_t, float>) {
        multi_finish(state + off, out + off, f.C, f.N, n, cf, stage.data());
      }
    }
  });
}

}  // namespace

void loss_stats_state(const LossArgs& args, float* partial, void* state, LossDtype state_dtype) {
  TORCH_CHECK(args.index_target != nullptr && args.C <= kStateMaxClasses && args.dtype != LossDtype::kDouble,
              "loss_stats_state: index targets, fp32/bf16/fp16 logits and at most ", kStateMaxClasses, " classes");
  TORCH_CHECK(state == nullptr || state_dtype == (args.C == 2 ? args.dtype : LossDtype::kFloat),
              "loss_stats_state: the state has the logits' dtype for 2 classes, fp32 otherwise");
  switch (args.dtype) {
    case LossDtype::kFloat:
      return stats_state_dispatch<float>(args, partial, state);
    case LossDtype::kBFloat16:
      return stats_state_dispatch<c10::BFloat16>(args, partial, state);
    case LossDtype::kHalf:
      return stats_state_dispatch<c10::Half>(args, partial, state);
    case LossDtype::kDouble:
      break;
  }
}

void loss_finish(const LossFinishArgs& f) {
  TORCH_CHECK(f.C <= kStateMaxClasses && (f.C == 2 ? f.state_dtype == f.out_dtype : f.state_dtype == LossDtype::kFloat),
              "loss_finish: state and output dtypes do not match the one-sweep layout");
  switch (f.out_dtype) {
    case LossDtype::kFloat:
      return finish_all<float, float>(f);
    case LossDtype::kBFloat16:
      if (f.C == 2) return finish_all<c10::BFloat16, c10::BFloat16>(f);
      return finish_all<float, c10::BFloat16>(f);
    case LossDtype::kHalf:
      if (f.C == 2) return finish_all<c10::Half, c10::Half>(f);
      return finish_all<float, c10::Half>(f);
    case LossDtype::kDouble:
      TORCH_CHECK(false, "loss_finish: no fp64 one-sweep path");
  }
}

void loss_stats(const LossArgs& args, void* partial) {
  switch (args.dtype) {
    case LossDtype::kDouble:
      return stats_all<double, double>(args, static_cast<double*>(partial));
    case LossDtype::kFloat:
      return stats_all<float, float>(args, static_cast<float*>(partial));
    case LossDtype::kBFloat16:
      return stats_all<c10::BFloat16, float>(args, static_cast<float*>(partial));
    case LossDtype::kHalf:
      return stats_all<c10::Half, float>(args, static_cast<float*>(partial));
  }
}

void loss_grad(const LossArgs& args, const void* coef, bool batch, void* grad) {
  switch (args.dtype) {
    case LossDtype::kDouble:
      return grad_all<double, double>(args, static_cast<const double*>(coef), batch, static_cast<double*>(grad));
    case LossDtype::kFloat:
      return grad_all<float, float>(args, static_cast<const float*>(coef), batch, static_cast<float*>(grad));
    case LossDtype::kBFloat16:
      return grad_all<c10::BFloat16, float>(args, static_cast<const float*>(coef), batch,
                                            static_cast<c10::BFloat16*>(grad));
    case LossDtype::kHalf:
      return grad_all<c10::Half, float>(args, static_cast<const float*>(coef), batch, static_cast<c10::Half*>(grad));
  }
}
