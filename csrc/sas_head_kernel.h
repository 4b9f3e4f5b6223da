// Selective-attention head CPU kernels, compiled once per CPU variant by kernels_<variant>.cpp
// inside namespace unimri::<variant>, after unified_focal_loss_kernel.h (load_row, store_row),
// batch_norm_relu_kernel.h (vec_sum) and tile_gemm_kernel.h. The op entry points are in sas_head.cpp. No include
// guard on purpose. Maths: unimri_kernels/ops/sas_head.py and unimri_kernels/reference/sas_head.py.
//
// The head reads the gated inputs y_k = alpha_k * x of K gates through x (B, C, N) and their
// attention maps alpha (B, K, N). Per tile of pixels of one sample, x's rows and alpha's rows
// are converted to acc_t and the tile's gated rows Y (K * C, T) formed in L2; every product of
// the head is then one BLAS call on tile-local operands (tile_gemm_kernel.h), so the (K, B, C, N)
// gated block is never written or read, nor its gradient. Reductions over pixels (moments,
// weight gradients) run in a fixed number of task groups, each accumulating its tiles in
// order, and the groups are summed in float64 in order: the result does not depend on the
// thread count.
namespace {

// Pixels per tile for N pixels per sample: `rows` acc_t rows fit in about 384 KB (L2), the
// sample split into tiles of equal length (no short last tile), a multiple of 2 acc_t vectors
// (load_row converts half/bf16 a whole reduced vector, 2 acc_t vectors, at a time).
template <typename acc_t>
int64_t sas_head_tile(int64_t rows, int64_t N) {
  constexpr int64_t V2 = 2 * Vectorized<acc_t>::size();
  const int64_t most = std::clamp<int64_t>(393216 / (static_cast<int64_t>(sizeof(acc_t)) * rows), 64, 4096);
  const int64_t tiles = (N + most - 1) / most, even = (N + tiles - 1) / tiles;
  return (even + V2 - 1) / V2 * V2;
}

// One tile of one sample: x's rows (C, T), alpha's rows (K, T) as acc_t (zero-padded to whole
// vectors) and the gated rows Y (K * C, T), y_k = alpha_k * x.
template <typename acc_t>
struct HeadTile {
  int64_t b, p0, n, nv;  // sample, first pixel, pixels, pixels rounded up to whole vectors
  acc_t *x, *alpha, *y;
};

template <typename scalar_t, typename acc_t>
void load_head_tile(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, int64_t task, int64_t tiles,
                    int64_t T, acc_t* buf, HeadTile<acc_t>& t) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  t.b = task / tiles;
  t.p0 = (task % tiles) * T;
  t.n = std::min(T, a.N - t.p0);
  t.nv = (t.n + V - 1) / V * V;
  t.x = buf;
  t.alpha = buf + a.C * T;
  t.y = t.alpha + a.K * T;
  for (int64_t c = 0; c < a.C; ++c) load_row(x + (t.b * a.C + c) * a.N + t.p0, t.x + c * T, t.n);
  for (int64_t k = 0; k < a.K; ++k) load_row(alpha + (t.b * a.K + k) * a.N + t.p0, t.alpha + k * T, t.n);
  for (int64_t k = 0; k < a.K; ++k)
    for (int64_t c = 0; c < a.C; ++c)
      for (int64_t j = 0; j < t.nv; j += V)
        (Vec::loadu(t.alpha + k * T + j) * Vec::loadu(t.x + c * T + j)).store(t.y + (k * a.C + c) * T + j);
}

// Rows of one sample's (rows, N) block at the tile's pixels, as acc_t, into buf (rows, T).
template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* src, int64_t rows, int64_t N, const HeadTile<acc_t>& t, int64_t T, acc_t* buf) {
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

// dst[i] += sum of row i of rows (count, T) over nv pixels (padded with zeros).
template <typename acc_t>
void add_row_sums(const acc_t* rows, int64_t count, int64_t T, int64_t nv, acc_t* dst) {
  using Vec = Vectorized<acc_t>;
  for (int64_t i = 0; i < count; ++i) {
    Vec s(0);
    for (int64_t j = 0; j < nv; j += Vec::size()) s = s + Vec::loadu(rows + i * T + j);
    dst[i] += static_cast<acc_t>(vec_sum(s));
  }
}

template <typename T>
std::vector<T> as_vector(const double* src, int64_t count) {
  return std::vector<T>(src, src + count);
}

// Sums fn(t, T, extra, dst) over every tile in float64: fn adds the tile's share into dst, its
// group's acc_t partials of `size` values; extra is the tile's buffer after x, alpha and the
// gated rows (extra_rows rows of T).
template <typename scalar_t, typename Fn>
std::vector<double> reduce_tiles(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, int64_t extra_rows,
                                 int64_t size, Fn&& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t head = a.C + a.K + a.K * a.C, rows = head + extra_rows;
  const int64_t T = sas_head_tile<acc_t>(rows, a.N), tiles = (a.N + T - 1) / T, tasks = a.B * tiles;
  std::vector<acc_t> part(std::min<int64_t>(tasks, 64) * size, acc_t(0));
  const int64_t groups = for_task_groups(tasks, [&](int64_t g, int64_t task) {
    thread_local std::vector<acc_t> buf;
    buf.resize(rows * T);
    HeadTile<acc_t> t;
    load_head_tile(a, x, alpha, task, tiles, T, buf.data(), t);
    fn(t, T, buf.data() + head * T, part.data() + g * size);
  });
  std::vector<double> total(size);
  reduce_groups(part, groups, size, total.data());
  return total;
}

// Calls fn(t, T, extra) for every tile, tiles in parallel (extra as in reduce_tiles).
template <typename scalar_t, typename Fn>
void for_each_tile(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, int64_t extra_rows, Fn&& fn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t head = a.C + a.K + a.K * a.C, rows = head + extra_rows;
  const int64_t T = sas_head_tile<acc_t>(rows, a.N), tiles = (a.N + T - 1) / T;
  at::parallel_for(0, a.B * tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> buf(rows * T);
    HeadTile<acc_t> t;
    for (int64_t task = t0; task < t1; ++task) {
      load_head_tile(a, x, alpha, task, tiles, T, buf.data(), t);
      fn(t, T, buf.data() + head * T);
    }
  });
}

template <typename scalar_t>
void sas_moments_impl(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, double* sum, double* gram) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t size = a.K * a.C + a.K * a.C * a.C;  // sums (K, C), then Gram matrices (K, C, C)
  const std::vector<double> total =
      reduce_tiles(a, x, alpha, 0, size, [&](const HeadTile<acc_t>& t, int64_t T, acc_t*, acc_t* dst) {
        add_row_sums(t.y, a.K * a.C, T, t.nv, dst);
        for (int64_t k = 0; k < a.K; ++k) {
          const acc_t* yk = t.y + k * a.C * T;
          tile_gemm(false, true, a.C, a.C, t.nv, yk, T, yk, T, acc_t(1), dst + a.K * a.C + k * a.C * a.C, a.C);
        }
      });
  std::copy(total.begin(), total.begin() + a.K * a.C, sum);
  std::copy(total.begin() + a.K * a.C, total.end(), gram);
}

template <typename scalar_t>
void sas_apply_impl(const SasHeadArgs& a, const scalar_t* x, const scalar_t* alpha, const double* mat,
                    const double* bias, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  // (Co, K * C): gate k's matrix in columns [k * C, (k + 1) * C)
  std::vector<acc_t> m(a.Co * a.K * a.C);
  for (int64_t k = 0; k < a.K; ++k)
    for (int64_t o = 0; o < a.Co; ++o)
      for (int64_t c = 0; c < a.C; ++c) m[(o * a.K + k) * a.C + c] = static_cast<acc_t>(mat[(k * a.Co + o) * a.C + c]);
  const std::vector<acc_t> c = as_vector<acc_t>(bias, a.Co);
  for_each_tile(a, x, alpha, a.Co, [&](const HeadTile<acc_t>& t, int64_t T, acc_t* ot) {
    tile_gemm(false, false, a.Co, t.nv, a.K * a.C, m.data(), a.K * a.C, t.y, T, acc_t(0), ot, T);
    for (int64_t o = 0; o < a.Co; ++o) {
      const Vec co(c[o]);
      for (int64_t j = 0; j < t.nv; j += Vec::size()) (Vec::loadu(ot + o * T + j) + co).store(ot + o * T + j);
      store_row(ot + o * T, out + (t.b * a.Co + o) * a.N + t.p0, t.n);
    }
  });
}

template <typename scalar_t>
void sas_weight_grad_impl(const SasHeadArgs& a, const scalar_t* gp, const scalar_t* x, const scalar_t* alpha,
                          double* grad_a, double* grad_c) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t size = a.Co * a.K * a.C + a.Co;  // (Co, K * C), then the sums of grad_p (Co)
  const std::vector<double> total =
      reduce_tiles(a, x, alpha, a.Co, size, [&](const HeadTile<acc_t>& t, int64_t T, acc_t* gt, acc_t* dst) {
        load_rows(gp + t.b * a.Co * a.N, a.Co, a.N, t, T, gt);
        tile_gemm(false, true, a.Co, a.K * a.C, t.nv, gt, T, t.y, T, acc_t(1), dst, a.K * a.C);
        add_row_sums(gt, a.Co, T, t.nv, dst + a.Co * a.K * a.C);
      });
  for (int64_t k = 0; k < a.K; ++k)
    for (int64_t o = 0; o < a.Co; ++o)
      for (int64_t c = 0; c < a.C; ++c) grad_a[(k * a.Co + o) * a.C + c] = total[(o * a.K + k) * a.C + c];
  std::copy(total.begin() + a.Co * a.K * a.C, total.end(), grad_c);
}

template <typename scalar_t>
void sas_input_grad_impl(const SasHeadArgs& a, const scalar_t* gp, const scalar_t* x, const scalar_t* alpha,
                         const double* at_mat, const double* d_mat, const double* e_vec, scalar_t* grad_x,
                         scalar_t* grad_alpha) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const std::vector<acc_t> atm = as_vector<acc_t>(at_mat, a.K * a.C * a.Co), d = as_vector<acc_t>(d_mat, a.K * a.C * a.C),
                           e = as_vector<acc_t>(e_vec, a.K * a.C);
  // extra rows: grad_p (Co), grad y of every gate (K * C), grad_x (C), grad_alpha (K)
  for_each_tile(a, x, alpha, a.Co + a.K * a.C + a.C + a.K, [&](const HeadTile<acc_t>& t, int64_t T, acc_t* gt) {
    acc_t *gy = gt + a.Co * T, *gx = gy + a.K * a.C * T, *ga = gx + a.C * T;
    load_rows(gp + t.b * a.Co * a.N, a.Co, a.N, t, T, gt);
    // grad y_k (C, T) = at_k grad_p + d_k y_k (+ e_k below), all gates' first terms at once
    tile_gemm(false, false, a.K * a.C, t.nv, a.Co, atm.data(), a.Co, gt, T, acc_t(0), gy, T);
    for (int64_t k = 0; k < a.K; ++k)
      tile_gemm(false, false, a.C, t.nv, a.C, d.data() + k * a.C * a.C, a.C, t.y + k * a.C * T, T, acc_t(1),
                gy + k * a.C * T, T);
    for (int64_t k = 0; k < a.K; ++k) {
      acc_t* gak = ga + k * T;
      for (int64_t c = 0; c < a.C; ++c) {
        const acc_t *gyr = gy + (k * a.C + c) * T, *xr = t.x + c * T, *ar = t.alpha + k * T;
        acc_t* gxr = gx + c * T;
        const Vec ek(e[k * a.C + c]);
        for (int64_t j = 0; j < t.nv; j += V) {
          const Vec g = Vec::loadu(gyr + j) + ek;
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
    sas_moments_impl<scalar_t>(a, static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(alpha), sum, gram);
  });
}

void sas_head_apply(const SasHeadArgs& a, const void* x, const void* alpha, const double* mat, const double* bias,
                    void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_apply_cpu", [&] {
    sas_apply_impl<scalar_t>(a, static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(alpha), mat, bias,
                             static_cast<scalar_t*>(out));
  });
}

void sas_head_weight_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,
                          double* grad_a, double* grad_c) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_weight_grad_cpu", [&] {
    sas_weight_grad_impl<scalar_t>(a, static_cast<const scalar_t*>(grad_p), static_cast<const scalar_t*>(x),
                                   static_cast<const scalar_t*>(alpha), grad_a, grad_c);
  });
}

void sas_head_input_grad(const SasHeadArgs& a, const void* grad_p, const void* x, const void* alpha,
                         const double* at, const double* d, const double* e, void* grad_x, void* grad_alpha) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "sas_head_input_grad_cpu", [&] {
    sas_input_grad_impl<scalar_t>(a, static_cast<const scalar_t*>(grad_p), static_cast<const scalar_t*>(x),
                                  static_cast<const scalar_t*>(alpha), at, d, e, static_cast<scalar_t*>(grad_x),
                                  static_cast<scalar_t*>(grad_alpha));
  });
}
