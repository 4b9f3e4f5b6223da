// 2x max pooling (kernel 2, stride 2, no padding) CPU kernels, compiled once per CPU variant by
// kernels_<variant>.cpp inside namespace unimri::<variant>. The op entry points are in max_pool.cpp.
// No include guard on purpose. Maths: unimri_kernels/reference/max_pool.py (nn.MaxPool2d/3d).
//
// One output row reads its window rows (2 in 2D, 4 in 3D); along W a window's two columns are
// neighbours, split into even / odd lanes by deinterleave2. The backward recomputes which
// element each window picked from x (nothing else is saved; PyTorch saves int64 indices) and
// writes both columns of every window row back with interleave2, so grad_x is written once.
#include "common/interleave.h"
#include "common/vec_rows.h"

namespace {

// Pointers to the window rows of output row `r` (flattened over planes, Do, Ho), in the order
// nn.MaxPool scans them (d, then h).
template <typename T>
C10_ALWAYS_INLINE int64_t window_rows(const MaxPoolArgs& a, T* base, int64_t r, T** rows) {
  const int64_t ho = r % a.Ho(), dp = r / a.Ho();  // dp: plane * Do + do
  const int64_t d0 = a.pool_depth ? (dp % a.Do()) * 2 : dp % a.Do(), p = dp / a.Do();
  T* plane = base + p * a.D * a.H * a.W;
  int64_t n = 0;
  for (int64_t dd = 0; dd < (a.pool_depth ? 2 : 1); ++dd)
    for (int64_t dh = 0; dh < 2; ++dh) rows[n++] = plane + ((d0 + dd) * a.H + 2 * ho + dh) * a.W;
  return n;
}

// The window row at `in` for outputs [i, i + n): its even and odd columns, as acc_t (lanes past n
// read 0 and are never stored).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE std::pair<Vectorized<acc_t>, Vectorized<acc_t>> window_columns(const scalar_t* in, int64_t i, int64_t n) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  return at::vec::deinterleave2(load_vec<scalar_t, acc_t>(in + 2 * i, std::min(V, 2 * n)),
                                load_vec<scalar_t, acc_t>(in + 2 * i + V, std::max<int64_t>(0, 2 * n - V)));
}

// fn(r, in, R) for every output row r (planes * Do * Ho of them) with the pointers `in` to its R
// window rows of x, in parallel; about 8K outputs per task. R (2 in 2D, 4 in 3D) reaches fn as a
// std::integral_constant, so the loops over window rows unroll and the candidates stay in registers.
template <typename scalar_t, typename Fn>
void for_output_rows(const MaxPoolArgs& a, const scalar_t* x, Fn&& fn) {
  const auto rows = [&](auto R) {
    at::parallel_for(0, a.planes * a.Do() * a.Ho(), std::max<int64_t>(1, 8192 / a.Wo()), [&](int64_t r0, int64_t r1) {
      const scalar_t* in[R];
      for (int64_t r = r0; r < r1; ++r) {
        window_rows(a, x, r, in);
        fn(r, in, R);
      }
    });
  };
  if (a.pool_depth)
    rows(std::integral_constant<int64_t, 4>{});
  else
    rows(std::integral_constant<int64_t, 2>{});
}

template <typename scalar_t>
void max_pool_forward_impl(const MaxPoolArgs& a, const scalar_t* x, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t Wo = a.Wo();
  for_output_rows(a, x, [&](int64_t r, const scalar_t* const* in, auto R) {
    for (int64_t i = 0; i < Wo; i += V) {
      const int64_t n = std::min(V, Wo - i);
      Vec m;
      for (int64_t k = 0; k < R; ++k) {
        const auto [even, odd] = window_columns<scalar_t, acc_t>(in[k], i, n);
        const Vec row = at::vec::maximum(even, odd);  // NaN-propagating, as nn.MaxPool
        m = k == 0 ? row : at::vec::maximum(m, row);
      }
      store_vec<scalar_t, acc_t>(m, out + r * Wo + i, n);
    }
  });
}

template <typename scalar_t>
void max_pool_backward_impl(const MaxPoolArgs& a, const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_x) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t Wo = a.Wo();
  const Vec zero(0);
  for_output_rows(a, x, [&](int64_t r, const scalar_t* const* in, auto R) {
    constexpr int64_t C = 2 * decltype(R)::value;
    scalar_t* gin[R];
    Vec v[C];
    window_rows(a, grad_x, r, gin);
    for (int64_t i = 0; i < Wo; i += V) {
      const int64_t n = std::min(V, Wo - i);
      // candidates in nn.MaxPool's scan order: row k's even column is 2k, its odd column 2k + 1
      for (int64_t k = 0; k < R; ++k) std::tie(v[2 * k], v[2 * k + 1]) = window_columns<scalar_t, acc_t>(in[k], i, n);
      Vec m = v[0];
      for (int64_t c = 1; c < C; ++c) m = at::vec::maximum(m, v[c]);
      // nn.MaxPool keeps the first maximum (a later element wins only when greater or NaN):
      // the first candidate equal to m, or where m is NaN, the last NaN
      Vec pick(static_cast<acc_t>(C - 1)), pick_nan(0);
      for (int64_t c = C - 1; c >= 0; --c) pick = Vec::blendv(pick, Vec(static_cast<acc_t>(c)), v[c] == m);
      for (int64_t c = 0; c < C; ++c) pick_nan = Vec::blendv(pick_nan, Vec(static_cast<acc_t>(c)), v[c].isnan());
      pick = Vec::blendv(pick, pick_nan, m.isnan());
      const Vec g = load_vec<scalar_t, acc_t>(grad_out + r * Wo + i, n);
      for (int64_t k = 0; k < R; ++k) {
        const auto [lo, hi] = at::vec::interleave2(Vec::blendv(zero, g, pick == Vec(static_cast<acc_t>(2 * k))),
                                                   Vec::blendv(zero, g, pick == Vec(static_cast<acc_t>(2 * k + 1))));
        store_vec<scalar_t, acc_t>(lo, gin[k] + 2 * i, std::min(V, 2 * n));
        if (2 * n > V) store_vec<scalar_t, acc_t>(hi, gin[k] + 2 * i + V, 2 * n - V);
      }
    }
    if (a.W % 2)
      for (int64_t k = 0; k < R; ++k) gin[k][a.W - 1] = scalar_t(0);
  });
  // rows and depth slices no window covers (odd H or D) get no gradient
  const int64_t Dc = a.pool_depth ? 2 * a.Do() : a.D, Hc = 2 * a.Ho();
  if (Hc == a.H && Dc == a.D) return;
  at::parallel_for(0, a.planes * a.D, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      scalar_t* slice = grad_x + s * a.H * a.W;
      const int64_t from = (s % a.D) >= Dc ? 0 : Hc;
      std::fill(slice + from * a.W, slice + a.H * a.W, scalar_t(0));
    }
  });
}

}  // namespace

void max_pool2x_forward(const MaxPoolArgs& a, const void* x, void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "max_pool2x_cpu", [&] {
    max_pool_forward_impl<scalar_t>(a, static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out));
  });
}

void max_pool2x_backward(const MaxPoolArgs& a, const void* grad_out, const void* x, void* grad_x) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "max_pool2x_backward_cpu", [&] {
    max_pool_backward_impl<scalar_t>(a, static_cast<const scalar_t*>(grad_out), static_cast<const scalar_t*>(x),
                                     static_cast<scalar_t*>(grad_x));
  });
}
