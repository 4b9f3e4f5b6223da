// Vectorised tile kernels of the Unified Focal loss (maths: unimri_kernels/reference/unified_focal_loss.py).
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
// The one-sweep path (index targets, per-pixel state) is in unified_focal_loss_state_kernel.h.

#include "common/vec_rows.h"

namespace {

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

}  // namespace

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
