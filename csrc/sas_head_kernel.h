// Selective-attention head CPU kernels, compiled once per CPU variant by kernels_<variant>.cpp
// inside namespace unimri::<variant>, after tile_gemm_kernel.h. The op entry points are in sas_head.cpp. No include
// guard on purpose. Maths: unimri_kernels/ops/sas_head.py and unimri_kernels/reference/sas_head.py.
//
// The head reads the gated inputs y_k = alpha_k * x of K gates through x (B, C, N) and their
// attention maps alpha (B, K, N). Per tile of pixels of one sample, x's rows and alpha's rows
// are converted to acc_t and the tile's gated rows Y (K * C, T) formed in L2; every product of
// the head is then one BLAS call on tile-local operands (tile_gemm_kernel.h), so the (K, B, C, N)
// gated block is never written or read, nor its gradient (the input-gradient pass needs no
// gated rows at all: d_k y_k = alpha_k (d_k x), one product for every gate). Reductions over
// pixels (moments, weight gradients) run in a fixed number of task groups, each accumulating its tiles in
// order, and the groups are summed in float64 in order: the result does not depend on the
// thread count.
#include "common/vec_rows.h"

namespace {

// Pixels per tile for N pixels per sample: a tile of `bytes` per pixel fits in about 384 KB
// (L2), the sample split into tiles of equal length (no short last tile), a multiple of 2 acc_t
// vectors (load_row converts half/bf16 a whole reduced vector, 2 acc_t vectors, at a time).
template <typename acc_t>
int64_t sas_head_tile(int64_t bytes, int64_t N) {
  constexpr int64_t V2 = 2 * Vectorized<acc_t>::size();
  const int64_t most = std::clamp<int64_t>(393216 / bytes, 64, 4096);
  const int64_t tiles = (N + most - 1) / most, even = (N + tiles - 1) / tiles;
  return (even + V2 - 1) / V2 * V2;
}

// The rows a pass needs per tile beyond the head's own: `acc` rows of acc_t and `prod` rows of
// prod_t (the type the tile products read); gated false: the tile's products read x rather
// than the gated rows (then y holds x's rows as prod_t).
struct ExtraRows {
  int64_t acc = 0, prod = 0;
  bool gated = true;
};

// Rows of y in a tile: the gated rows (K * C), x's rows (C) where prod_t is not acc_t, or none
// (y is x itself).
template <typename acc_t, typename prod_t>
int64_t y_rows(const SasHeadArgs& a, const ExtraRows& extra) {
  return extra.gated ? a.K * a.C : (std::is_same_v<acc_t, prod_t> ? 0 : a.C);
}

// One tile of one sample: x's rows (C, T), alpha's rows (K, T) as acc_t (zero-padded to whole
// vectors), the gated rows Y (K * C, T), y_k = alpha_k * x, as prod_t (scalar_t itself for
// bf16/fp16 when the BLAS multiplies them, else acc_t), and the pass's extra rows.
template <typename acc_t, typename prod_t>
struct HeadTile {
  int64_t b, p0, n, nv;  // sample, first pixel, pixels, pixels rounded up to whole vectors
  acc_t *x, *alpha, *acc;
  prod_t *y, *prod;
};

// A thread's buffers for tiles of T pixels.
template <typename acc_t, typename prod_t>
struct HeadBuffers {
  std::vector<acc_t> acc;
  std::vector<prod_t> prod;

  void fit(const SasHeadArgs& a, const ExtraRows& extra, int64_t T, HeadTile<acc_t, prod_t>& t) {
    const int64_t ys = y_rows<acc_t, prod_t>(a, extra);
    acc.resize((a.C + a.K + extra.acc) * T);
    prod.resize((ys + extra.prod) * T);
    t.x = acc.data();
    t.alpha = t.x + a.C * T;
    t.acc = t.alpha + a.K * T;
    t.y = prod.data();
    if constexpr (std::is_same_v<acc_t, prod_t>) {
      if (!extra.gated) t.y = t.x;
    }
    t.prod = prod.data() + ys * T;
  }
};

template <typename acc_t, typename prod_t>
int64_t head_tile_length(const SasHeadArgs& a, const ExtraRows& extra) {
  const int64_t bytes = static_cast<int64_t>(sizeof(acc_t)) * (a.C + a.K + extra.acc) +
                        static_cast<int64_t>(sizeof(prod_t)) * (y_rows<acc_t, prod_t>(a, extra) + extra.prod);
  return sas_head_tile<acc_t>(bytes, a.N);
}

// y (nv) = alpha * x as prod_t, from acc_t rows of T >= nv rounded up to 2 vectors.
template <typename acc_t, typename prod_t>
void gated_row(const acc_t* alpha, const acc_t* x, int64_t nv, prod_t* y) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  if constexpr (std::is_same_v<prod_t, acc_t>) {
    for (int64_t j = 0; j < nv; j += V) (Vec::loadu(alpha + j) * Vec::loadu(x + j)).store(y + j);
  } else {
    for (int64_t j = 0; j < nv; j += 2 * V) {
      const Vec lo = Vec::loadu(alpha + j) * Vec::loadu(x + j);
      const Vec hi = Vec::loadu(alpha + j + V) * Vec::loadu(x + j + V);
      at::vec::convert_from_float<prod_t>(lo, hi).store(y + j, static_cast<int>(std::min<int64_t>(2 * V, nv - j)));
    }
  }
}

template <typename scalar_t, typename acc_t, typename prod_t>
void load_head_tile(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, bool gated, int64_t task,
                    int64_t tiles, int64_t T, HeadTile<acc_t, prod_t>& t) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  t.b = task / tiles;
  t.p0 = (task % tiles) * T;
  t.n = std::min(T, a.N - t.p0);
  t.nv = (t.n + V - 1) / V * V;
  for (int64_t c = 0; c < a.C; ++c) load_row(x + (t.b * a.C + c) * a.N + t.p0, t.x + c * T, t.n);
  for (int64_t k = 0; k < a.K; ++k) load_row(alpha + (t.b * a.K + k) * a.N + t.p0, t.alpha + k * T, t.n);
  if (gated) {
    for (int64_t k = 0; k < a.K; ++k)
      for (int64_t c = 0; c < a.C; ++c) gated_row(t.alpha + k * T, t.x + c * T, t.nv, t.y + (k * a.C + c) * T);
  } else if constexpr (!std::is_same_v<acc_t, prod_t>) {
    for (int64_t c = 0; c < a.C; ++c) load_row(x + (t.b * a.C + c) * a.N + t.p0, t.y + c * T, t.n);
  }
}

// Rows of one sample's (rows, N) block at the tile's pixels, as row_t (zero-padded to whole
// vectors), into buf (rows, T).
template <typename scalar_t, typename row_t, typename acc_t, typename prod_t>
void load_rows(const scalar_t* src, int64_t rows, int64_t N, const HeadTile<acc_t, prod_t>& t, int64_t T, row_t* buf) {
  for (int64_t i = 0; i < rows; ++i) load_row(src + i * N + t.p0, buf + i * T, t.n);
}

// Tasks (sample, tile) split into a fixed number of groups; fn(group, task) visits a group's
// tasks in order, groups in parallel. Returns the number of groups.
template <typename Fn>
int64_t for_task_groups(int64_t tasks, Fn&& fn) {
  const int64_t groups = std::min<int64_t>(tasks, 64);
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t task = g * tasks / groups; task < (g + 1) * tasks / groups; ++task) fn(g, task);
  });
  return groups;
}

// Sums the groups' partials (groups, size) in order, in float64, into dst (size).
template <typename acc_t>
void reduce_groups(const std::vector<acc_t>& part, int64_t groups, int64_t size, double* dst) {
  std::fill(dst, dst + size, 0.0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t i = 0; i < size; ++i) dst[i] += static_cast<double>(part[g * size + i]);
}

// dst[i] += sum of row i of rows (count, T) over nv pixels (zero beyond the tile's pixels).
template <typename row_t, typename acc_t>
void add_row_sums(const row_t* rows, int64_t count, int64_t T, int64_t nv, acc_t* dst) {
  using Vec = Vectorized<acc_t>;
  for (int64_t i = 0; i < count; ++i) {
    Vec s(0);
    if constexpr (std::is_same_v<row_t, acc_t>) {
      for (int64_t j = 0; j < nv; j += Vec::size()) s = s + Vec::loadu(rows + i * T + j);
    } else {
      constexpr int64_t V = Vectorized<row_t>::size();
      for (int64_t j = 0; j < nv; j += V) {
        const auto [lo, hi] = at::vec::convert_to_float<row_t>(
            Vectorized<row_t>::loadu(rows + i * T + j, static_cast<int>(std::min<int64_t>(V, nv - j))));
        s = s + lo + hi;
      }
    }
    dst[i] += static_cast<acc_t>(vec_sum(s));
  }
}

template <typename T>
std::vector<T> as_vector(const double* src, int64_t count) {
  std::vector<T> out(count);
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<T>(src[i]);
  return out;
}

// Sums fn(t, T, dst) over every tile in float64: fn adds the tile's share into dst, its
// group's acc_t partials of `size` values.
template <typename scalar_t, typename prod_t, typename Fn>
std::vector<double> reduce_tiles(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha,
                                 const ExtraRows& extra, int64_t size, Fn&& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = head_tile_length<acc_t, prod_t>(a, extra), tiles = (a.N + T - 1) / T, tasks = a.B * tiles;
  std::vector<acc_t> part(std::min<int64_t>(tasks, 64) * size, acc_t(0));
  const int64_t groups = for_task_groups(tasks, [&](int64_t g, int64_t task) {
    thread_local HeadBuffers<acc_t, prod_t> buf;
    HeadTile<acc_t, prod_t> t;
    buf.fit(a, extra, T, t);
    load_head_tile(a, x, alpha, extra.gated, task, tiles, T, t);
    fn(t, T, part.data() + g * size);
  });
  std::vector<double> total(size);
  reduce_groups(part, groups, size, total.data());
  return total;
}

// Calls fn(t, T) for every tile, tiles in parallel.
template <typename scalar_t, typename prod_t, typename Fn>
void for_each_tile(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, const ExtraRows& extra, Fn&& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = head_tile_length<acc_t, prod_t>(a, extra), tiles = (a.N + T - 1) / T;
  at::parallel_for(0, a.B * tiles, 1, [&](int64_t t0, int64_t t1) {
    HeadBuffers<acc_t, prod_t> buf;
    HeadTile<acc_t, prod_t> t;
    buf.fit(a, extra, T, t);
    for (int64_t task = t0; task < t1; ++task) {
      load_head_tile(a, x, alpha, extra.gated, task, tiles, T, t);
      fn(t, T);
    }
  });
}

template <typename scalar_t, typename prod_t>
void sas_moments_impl(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, double* sum, double* gram) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t size = a.K * a.C + a.K * a.C * a.C;  // sums (K, C), then Gram matrices (K, C, C)
  const std::vector<double> total =
      reduce_tiles<scalar_t, prod_t>(a, x, alpha, {}, size, [&](const HeadTile<acc_t, prod_t>& t, int64_t T, acc_t* dst) {
        add_row_sums(t.y, a.K * a.C, T, t.nv, dst);
        for (int64_t k = 0; k < a.K; ++k) {
          const prod_t* yk = t.y + k * a.C * T;
          tile_gemm(false, true, a.C, a.C, t.nv, yk, T, yk, T, acc_t(1), dst + a.K * a.C + k * a.C * a.C, a.C);
        }
      });
  std::copy(total.begin(), total.begin() + a.K * a.C, sum);
  std::copy(total.begin() + a.K * a.C, total.end(), gram);
}

template <typename scalar_t, typename prod_t>
void sas_apply_impl(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, const double* mat,
                    const double* bias, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  // (Co, K * C): gate k's matrix in columns [k * C, (k + 1) * C)
  std::vector<prod_t> m(a.Co * a.K * a.C);
  for (int64_t k = 0; k < a.K; ++k)
    for (int64_t o = 0; o < a.Co; ++o)
      for (int64_t c = 0; c < a.C; ++c) m[(o * a.K + k) * a.C + c] = static_cast<prod_t>(mat[(k * a.Co + o) * a.C + c]);
  const std::vector<acc_t> c = as_vector<acc_t>(bias, a.Co);
  for_each_tile<scalar_t, prod_t>(a, x, alpha, {a.Co, 0}, [&](const HeadTile<acc_t, prod_t>& t, int64_t T) {
    acc_t* ot = t.acc;
    tile_gemm(false, false, a.Co, t.nv, a.K * a.C, m.data(), a.K * a.C, t.y, T, acc_t(0), ot, T);
    for (int64_t o = 0; o < a.Co; ++o) {
      const Vec co(c[o]);
      for (int64_t j = 0; j < t.nv; j += Vec::size()) (Vec::loadu(ot + o * T + j) + co).store(ot + o * T + j);
      store_row(ot + o * T, out + (t.b * a.Co + o) * a.N + t.p0, t.n);
    }
  });
}

template <typename scalar_t, typename prod_t>
void sas_weight_grad_impl(const SasHeadArgs& a, const scalar_t* gp, const scalar_t* x, const scalar_t* alpha,
                          double* grad_a, double* grad_c) {
  using acc_t = at::opmath_type<scalar_t>;
  // grad_a transposed, (K * C, Co) (MKL forms it faster with the many rows first), then the
  // sums of grad_p (Co)
  const int64_t size = a.K * a.C * a.Co + a.Co;
  const std::vector<double> total = reduce_tiles<scalar_t, prod_t>(
      a, x, alpha, {0, a.Co}, size, [&](const HeadTile<acc_t, prod_t>& t, int64_t T, acc_t* dst) {
        prod_t* gt = t.prod;
        load_rows(gp + t.b * a.Co * a.N, a.Co, a.N, t, T, gt);
        tile_gemm(false, true, a.K * a.C, a.Co, t.nv, t.y, T, gt, T, acc_t(1), dst, a.Co);
        add_row_sums(gt, a.Co, T, t.nv, dst + a.K * a.C * a.Co);
      });
  for (int64_t k = 0; k < a.K; ++k)
    for (int64_t o = 0; o < a.Co; ++o)
      for (int64_t c = 0; c < a.C; ++c) grad_a[(k * a.Co + o) * a.C + c] = total[(k * a.C + c) * a.Co + o];
  std::copy(total.begin() + a.K * a.C * a.Co, total.end(), grad_c);
}

template <typename scalar_t, typename prod_t>
void sas_input_grad_impl(const SasHeadArgs& a, const scalar_t* gp, const scalar_t* x, const scalar_t* alpha,
                         const double* at_mat, const double* d_mat, const double* e_vec, scalar_t* grad_x,
                         scalar_t* grad_alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const std::vector<prod_t> atm = as_vector<prod_t>(at_mat, a.K * a.C * a.Co), d = as_vector<prod_t>(d_mat, a.K * a.C * a.C);
  const std::vector<acc_t> e = as_vector<acc_t>(e_vec, a.K * a.C);
  // extra rows: the two terms of grad y below for every gate (2 K C), grad_x (C), grad_alpha
  // (K); grad_p (Co) as prod_t. The products read x, not the gated rows (d_k y_k = alpha_k d_k x).
  const ExtraRows extra{2 * a.K * a.C + a.C + a.K, a.Co, false};
  for_each_tile<scalar_t, prod_t>(a, x, alpha, extra, [&](const HeadTile<acc_t, prod_t>& t, int64_t T) {
    acc_t *gy = t.acc, *dx = gy + a.K * a.C * T, *gx = dx + a.K * a.C * T, *ga = gx + a.C * T;
    prod_t* gt = t.prod;
    load_rows(gp + t.b * a.Co * a.N, a.Co, a.N, t, T, gt);
    // grad y_k (C, T) = at_k grad_p + alpha_k d_k x + e_k; the products of all gates at once:
    // gy = at grad_p (K C, T), dx = d x (K C, T) with d (K C, C)
    tile_gemm(false, false, a.K * a.C, t.nv, a.Co, atm.data(), a.Co, gt, T, acc_t(0), gy, T);
    tile_gemm(false, false, a.K * a.C, t.nv, a.C, d.data(), a.C, t.y, T, acc_t(0), dx, T);
    for (int64_t k = 0; k < a.K; ++k) {
      acc_t* gak = ga + k * T;
      for (int64_t c = 0; c < a.C; ++c) {
        const acc_t *gyr = gy + (k * a.C + c) * T, *dxr = dx + (k * a.C + c) * T, *xr = t.x + c * T,
                    *ar = t.alpha + k * T;
        acc_t* gxr = gx + c * T;
        const Vec ek(e[k * a.C + c]);
        for (int64_t j = 0; j < t.nv; j += V) {
          const Vec g = at::vec::fmadd(Vec::loadu(ar + j), Vec::loadu(dxr + j), Vec::loadu(gyr + j) + ek);
          const Vec gprev = k == 0 ? Vec(0) : Vec::loadu(gxr + j);
          const Vec aprev = c == 0 ? Vec(0) : Vec::loadu(gak + j);
          at::vec::fmadd(Vec::loadu(ar + j), g, gprev).store(gxr + j);
          at::vec::fmadd(Vec::loadu(xr + j), g, aprev).store(gak + j);
        }
      }
    }
    for (int64_t c = 0; c < a.C; ++c) store_row(gx + c * T, grad_x + (t.b * a.C + c) * a.N + t.p0, t.n);
    for (int64_t k = 0; k < a.K; ++k) store_row(ga + k * T, grad_alpha + (t.b * a.K + k) * a.N + t.p0, t.n);
  });
}

}  // namespace

void sas_head_moments(const SasHeadArgs& a, const void* x, const void* alpha, double* sum, double* gram) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_moments_cpu", [&] {
    with_product_type<scalar_t>(a.N, [&](auto p) {
      sas_moments_impl<scalar_t, decltype(p)>(a, static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(alpha),
                                              sum, gram);
    });
  });
}

void sas_head_apply(const SasHeadArgs& a, const void* x, const void* alpha, const double* mat, const double* bias,
                    void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_apply_cpu", [&] {
    with_product_type<scalar_t>(a.K * a.C, [&](auto p) {
      sas_apply_impl<scalar_t, decltype(p)>(a, static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(alpha),
                                            mat, bias, static_cast<scalar_t*>(out));
    });
  });
}

void sas_head_weight_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,
                          double* grad_a, double* grad_c) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_weight_grad_cpu", [&] {
    with_product_type<scalar_t>(a.N, [&](auto p) {
      sas_weight_grad_impl<scalar_t, decltype(p)>(a, static_cast<const scalar_t*>(grad_p),
                                                  static_cast<const scalar_t*>(x),
                                                  static_cast<const scalar_t*>(alpha), grad_a, grad_c);
    });
  });
}

void sas_head_input_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,
                         const double* at, const double* d, const double* e, void* grad_x, void* grad_alpha) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_input_grad_cpu", [&] {
    with_product_type<scalar_t>(std::min(a.C, a.Co), [&](auto p) {
      sas_input_grad_impl<scalar_t, decltype(p)>(a, static_cast<const scalar_t*>(grad_p),
                                                 static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(alpha),
                                                 at, d, e, static_cast<scalar_t*>(grad_x),
                                                 static_cast<scalar_t*>(grad_alpha));
    });
  });
}
