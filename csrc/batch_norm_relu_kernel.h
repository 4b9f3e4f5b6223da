// Batch norm + ReLU CPU kernels, compiled once per CPU variant by kernels_<variant>.cpp
// (cpu_variant.h) inside namespace unimri::<variant>. The op entry points are in batch_norm_relu.cpp.
// No include guard on purpose. Maths: unimri_kernels/reference/batch_norm_relu.py.
//
// x is (B, C, N) contiguous. Work is split over the B * C rows (parallel); per-channel sums
// are reduced over b in order afterwards (deterministic).
// Forward: one read of x for the statistics (shifted by the channel's first value, so
//   E[(x - k)^2] - E[x - k]^2 keeps its digits), one read of x and one write of
//   out = max(x * scale + shift, 0). PyTorch's batch norm then ReLU reads x three times and
//   out twice, and writes twice.
// Backward: the ReLU mask is recomputed from x (nothing but x is saved); one read of
//   (grad_out, x) for sum g' and sum g' (x - mean), with g' = grad_out * [out > 0], and one
//   read of (grad_out, x) with one write of grad_x.
#include "common/vec_rows.h"

namespace {

constexpr int64_t kBnrBlock = 2048;  // elements of a row converted to acc_t at a time

template <typename scalar_t, typename acc_t, typename Fn>
void for_row_blocks(const scalar_t* row, int64_t n, acc_t* buf, Fn&& fn) {
  for (int64_t j = 0; j < n; j += kBnrBlock) {
    const int64_t len = std::min(kBnrBlock, n - j);
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      fn(row + j, j, len);
    } else {
      load_row(row + j, buf, len);
      fn(static_cast<const acc_t*>(buf), j, len);
    }
  }
}

// Per-row sums {sum (x - k), sum (x - k)^2} with k = x[0, c, 0]; mean and biased variance.
template <typename scalar_t>
void bnr_stats(const scalar_t* x, int64_t B, int64_t C, int64_t N, double* mean, double* var) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  std::vector<double> sums(2 * B * C);
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> buf(kBnrBlock + Vec::size());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const acc_t k = static_cast<acc_t>(x[c * N]);
      double s = 0, ss = 0;
      for_row_blocks<scalar_t, acc_t>(x + r * N, N, buf.data(), [&](const acc_t* v, int64_t, int64_t len) {
        Vec vs(0), vss(0);
        const Vec vk(k);
        int64_t i = 0;
        for (; i + Vec::size() <= len; i += Vec::size()) {
          const Vec d = Vec::loadu(v + i) - vk;
          vs = vs + d;
          vss = at::vec::fmadd(d, d, vss);
        }
        double ts = vec_sum(vs), tss = vec_sum(vss);
        for (; i < len; ++i) {
          const double d = static_cast<double>(v[i]) - static_cast<double>(k);
          ts += d;
          tss += d * d;
        }
        s += ts;
        ss += tss;
      });
      sums[2 * r] = s;
      sums[2 * r + 1] = ss;
    }
  });
  const double n = static_cast<double>(B * N);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0, ss = 0;
    for (int64_t b = 0; b < B; ++b) {
      s += sums[2 * (b * C + c)];
      ss += sums[2 * (b * C + c) + 1];
    }
    const double shifted = s / n;
    mean[c] = static_cast<double>(static_cast<acc_t>(x[c * N])) + shifted;
    var[c] = std::max(ss / n - shifted * shifted, 0.0);
  }
}

// out = max(x * scale[c] + shift[c], 0).
template <typename scalar_t>
void bnr_apply(const scalar_t* x, int64_t B, int64_t C, int64_t N, const double* scale,
               const double* shift, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> buf(kBnrBlock + Vec::size()), res(kBnrBlock + Vec::size());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const Vec vs(static_cast<acc_t>(scale[c])), vt(static_cast<acc_t>(shift[c])), zero(0);
      scalar_t* dst = out + r * N;
      for_row_blocks<scalar_t, acc_t>(x + r * N, N, buf.data(), [&](const acc_t* v, int64_t j, int64_t len) {
        acc_t* o = std::is_same_v<scalar_t, acc_t> ? reinterpret_cast<acc_t*>(dst + j) : res.data();
        int64_t i = 0;
        for (; i + Vec::size() <= len; i += Vec::size())
          at::vec::maximum(at::vec::fmadd(Vec::loadu(v + i), vs, vt), zero).store(o + i);
        for (; i < len; ++i) o[i] = std::max(v[i] * static_cast<acc_t>(scale[c]) + static_cast<acc_t>(shift[c]), acc_t(0));
        if constexpr (!std::is_same_v<scalar_t, acc_t>) store_row(o, dst + j, len);
      });
    }
  });
}

// Per channel: sum g' and sum g' (x - mean), g' = grad_out * [x * scale + shift > 0].
template <typename scalar_t>
void bnr_grad_sums(const scalar_t* g, const scalar_t* x, int64_t B, int64_t C, int64_t N,
                   const double* scale, const double* shift, const double* mean, double* sum_g,
                   double* sum_gx) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  std::vector<double> sums(2 * B * C);
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> gbuf(kBnrBlock + Vec::size()), xbuf(kBnrBlock + Vec::size());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const acc_t sc = static_cast<acc_t>(scale[c]), sh = static_cast<acc_t>(shift[c]),
                  mu = static_cast<acc_t>(mean[c]);
      const Vec vs(sc), vt(sh), vm(mu), zero(0);
      double s = 0, sx = 0;
      const scalar_t* grow = g + r * N;
      for_row_blocks<scalar_t, acc_t>(x + r * N, N, xbuf.data(), [&](const acc_t* v, int64_t j, int64_t len) {
        const acc_t* gv;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          gv = grow + j;
        } else {
          load_row(grow + j, gbuf.data(), len);
          gv = gbuf.data();
        }
        Vec a(0), b(0);
        int64_t i = 0;
        for (; i + Vec::size() <= len; i += Vec::size()) {
          const Vec xv = Vec::loadu(v + i);
          const Vec gm = Vec::blendv(zero, Vec::loadu(gv + i), at::vec::fmadd(xv, vs, vt) > zero);
          a = a + gm;
          b = at::vec::fmadd(gm, xv - vm, b);
        }
        double ta = vec_sum(a), tb = vec_sum(b);
        for (; i < len; ++i) {
          const acc_t gm = v[i] * sc + sh > acc_t(0) ? gv[i] : acc_t(0);
          ta += gm;
          tb += static_cast<double>(gm) * static_cast<double>(v[i] - mu);
        }
        s += ta;
        sx += tb;
      });
      sums[2 * r] = s;
      sums[2 * r + 1] = sx;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    sum_g[c] = 0;
    sum_gx[c] = 0;
    for (int64_t b = 0; b < B; ++b) {
      sum_g[c] += sums[2 * (b * C + c)];
      sum_gx[c] += sums[2 * (b * C + c) + 1];
    }
  }
}

// grad_x = g' * k1[c] - k2[c] - (x - mean[c]) * k3[c], g' as in bnr_grad_sums.
template <typename scalar_t>
void bnr_grad_input(const scalar_t* g, const scalar_t* x, int64_t B, int64_t C, int64_t N,
                    const double* scale, const double* shift, const double* mean, const double* k1,
                    const double* k2, const double* k3, scalar_t* gx) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  at::parallel_for(0, B * C, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> gbuf(kBnrBlock + Vec::size()), xbuf(kBnrBlock + Vec::size()),
        res(kBnrBlock + Vec::size());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const acc_t sc = static_cast<acc_t>(scale[c]), sh = static_cast<acc_t>(shift[c]),
                  mu = static_cast<acc_t>(mean[c]), a1 = static_cast<acc_t>(k1[c]),
                  a2 = static_cast<acc_t>(k2[c]), a3 = static_cast<acc_t>(k3[c]);
      const Vec vs(sc), vt(sh), vm(mu), v1(a1), v2(a2), v3(a3), zero(0);
      const scalar_t* grow = g + r * N;
      scalar_t* dst = gx + r * N;
      for_row_blocks<scalar_t, acc_t>(x + r * N, N, xbuf.data(), [&](const acc_t* v, int64_t j, int64_t len) {
        const acc_t* gv;
        acc_t* o;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          gv = grow + j;
          o = dst + j;
        } else {
          load_row(grow + j, gbuf.data(), len);
          gv = gbuf.data();
          o = res.data();
        }
        int64_t i = 0;
        for (; i + Vec::size() <= len; i += Vec::size()) {
          const Vec xv = Vec::loadu(v + i);
          const Vec gm = Vec::blendv(zero, Vec::loadu(gv + i), at::vec::fmadd(xv, vs, vt) > zero);
          (gm * v1 - v2 - (xv - vm) * v3).store(o + i);
        }
        for (; i < len; ++i) {
          const acc_t gm = v[i] * sc + sh > acc_t(0) ? gv[i] : acc_t(0);
          o[i] = gm * a1 - a2 - (v[i] - mu) * a3;
        }
        if constexpr (!std::is_same_v<scalar_t, acc_t>) store_row(o, dst + j, len);
      });
    }
  });
}

}  // namespace

void batch_norm_relu_forward(const BnReluArgs& a, const void* x, void* out, double* mean, double* var,
                             double* scale, double* shift) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "batch_norm_relu_cpu", [&] {
    const scalar_t* xp = static_cast<const scalar_t*>(x);
    if (a.batch_stats) bnr_stats(xp, a.B, a.C, a.N, mean, var);
    bn_relu_affine(a, mean, var, scale, shift);
    bnr_apply(xp, a.B, a.C, a.N, scale, shift, static_cast<scalar_t*>(out));
  });
}

void batch_norm_relu_backward(const BnReluArgs& a, const void* grad_out, const void* x, const double* mean,
                              const double* var, void* grad_x, double* grad_weight, double* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "batch_norm_relu_backward_cpu", [&] {
    const scalar_t* gp = static_cast<const scalar_t*>(grad_out);
    const scalar_t* xp = static_cast<const scalar_t*>(x);
    std::vector<double> scale(a.C), shift(a.C), sg(a.C), sgx(a.C), k1(a.C), k2(a.C), k3(a.C);
    bn_relu_affine(a, mean, var, scale.data(), shift.data());
    bnr_grad_sums(gp, xp, a.B, a.C, a.N, scale.data(), shift.data(), mean, sg.data(), sgx.data());
    const double n = static_cast<double>(a.B * a.N);
    for (int64_t c = 0; c < a.C; ++c) {
      const double invstd = 1.0 / std::sqrt(var[c] + a.eps), w = a.weight ? a.weight[c] : 1.0;
      grad_weight[c] = sgx[c] * invstd;
      grad_bias[c] = sg[c];
      k1[c] = w * invstd;
      k2[c] = a.batch_stats ? w * invstd * sg[c] / n : 0.0;
      k3[c] = a.batch_stats ? w * invstd * invstd * invstd * sgx[c] / n : 0.0;
    }
    bnr_grad_input(gp, xp, a.B, a.C, a.N, scale.data(), shift.data(), mean, k1.data(), k2.data(), k3.data(),
                   static_cast<scalar_t*>(grad_x));
  });
}
