// One-sweep tile kernels of the Unified Focal loss (index targets, fp32 accumulation, at most
// kStateMaxClasses classes): pass 1 also writes a per-pixel state, and a light pass turns it into
// the gradient. Compiled once per CPU variant by kernels_<variant>.cpp inside namespace
// unimri::<variant>, after unified_focal_loss_kernel.h (LossProblem, the tile passes it shares).
// No include guard on purpose. Maths: unimri_kernels/reference/unified_focal_loss.py.
#include "common/vec_rows.h"

namespace {

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

