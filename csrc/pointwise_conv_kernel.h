// Pointwise (1x1) convolution CPU kernels for few output channels (segmentation heads),
// compiled once per CPU variant by kernels_<variant>.cpp inside namespace unimri::<variant>.
// The op entry points are in pointwise_conv.cpp.
// No include guard on purpose. Maths: unimri_kernels/reference/pointwise_conv.py.
//
// Work is split into (sample, tile of pixels) tasks; a tile's Ci input rows (converted to
// acc_t for half/bf16) stay in L1 while every output row is accumulated from them with vector
// FMAs, so x is read once and the output written once. oneDNN's 1x1 convolution with 2 output
// channels runs far below memory speed on NCHW tensors (it reorders them).
#include "common/vec_rows.h"

namespace {

// Pixels per task: the tile's rows of acc_t fit in about 32 KB; a multiple of 2 acc_t vectors
// (load_row converts half/bf16 rows a whole reduced vector, 2 acc_t vectors, at a time).
template <typename acc_t>
int64_t pointwise_tile(int64_t rows) {
  constexpr int64_t V2 = 2 * Vectorized<acc_t>::size();
  const int64_t t = std::clamp<int64_t>(32768 / (static_cast<int64_t>(sizeof(acc_t)) * rows), 64, 2048);
  return std::max<int64_t>(V2, t / V2 * V2);
}

// Rows [0, rows) of (rows, N) at column p0, n columns, as acc_t pointers: the rows themselves
// for acc_t data, else converted into buf (rows * T, zero-padded to whole vectors).
template <typename scalar_t, typename acc_t>
void tile_rows(const scalar_t* src, int64_t rows, int64_t N, int64_t p0, int64_t n, int64_t T, acc_t* buf,
               const acc_t** out) {
  for (int64_t i = 0; i < rows; ++i) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      out[i] = src + i * N + p0;
    } else {
      load_row(src + i * N + p0, buf + i * T, n);
      out[i] = buf + i * T;
    }
  }
}

template <typename scalar_t>
void pointwise_forward_impl(const PointwiseArgs& a, const scalar_t* x, const double* w, const double* bias,
                            scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t T = pointwise_tile<acc_t>(a.Ci), tiles = (a.N + T - 1) / T;
  std::vector<acc_t> wf(w, w + a.Co * a.Ci), bf(a.Co, acc_t(0));
  if (bias) std::copy(bias, bias + a.Co, bf.begin());
  at::parallel_for(0, a.B * tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : a.Ci * T);
    std::vector<const acc_t*> rows(a.Ci);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, a.N - p0);
      tile_rows<scalar_t, acc_t>(x + b * a.Ci * a.N, a.Ci, a.N, p0, n, T, buf.data(), rows.data());
      for (int64_t o = 0; o < a.Co; ++o) {
        scalar_t* dst = out + (b * a.Co + o) * a.N + p0;
        const acc_t* wo = wf.data() + o * a.Ci;
        for (int64_t j = 0; j < n; j += V) {
          const int64_t cnt = std::min(V, n - j);
          Vec acc(bf[o]);
          for (int64_t i = 0; i < a.Ci; ++i) acc = at::vec::fmadd(Vec(wo[i]), load_vec<acc_t, acc_t>(rows[i] + j, cnt), acc);
          store_vec<scalar_t, acc_t>(acc, dst + j, cnt);
        }
      }
    }
  });
}

template <typename scalar_t>
void pointwise_weight_grad_impl(const PointwiseArgs& a, const scalar_t* g, const scalar_t* x, double* grad_w,
                                double* grad_b) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t T = pointwise_tile<acc_t>(a.Ci + a.Co), tiles = (a.N + T - 1) / T;
  const int64_t per_task = a.Co * a.Ci + a.Co;
  std::vector<double> part(a.B * tiles * per_task);
  at::parallel_for(0, a.B * tiles, 1, [&](int64_t t0, int64_t t1) {
    const bool convert = !std::is_same_v<scalar_t, acc_t>;
    std::vector<acc_t> xbuf(convert ? a.Ci * T : 0), gbuf(convert ? a.Co * T : 0);
    std::vector<const acc_t*> xr(a.Ci), gr(a.Co);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / tiles, p0 = (task % tiles) * T, n = std::min(T, a.N - p0);
      tile_rows<scalar_t, acc_t>(x + b * a.Ci * a.N, a.Ci, a.N, p0, n, T, xbuf.data(), xr.data());
      tile_rows<scalar_t, acc_t>(g + b * a.Co * a.N, a.Co, a.N, p0, n, T, gbuf.data(), gr.data());
      double* dst = part.data() + task * per_task;
      for (int64_t o = 0; o < a.Co; ++o) {
        Vec sum_g(0);
        for (int64_t j = 0; j < n; j += V) sum_g = sum_g + load_vec<acc_t, acc_t>(gr[o] + j, std::min(V, n - j));
        dst[a.Co * a.Ci + o] = vec_sum(sum_g);
        for (int64_t i = 0; i < a.Ci; ++i) {
          Vec acc(0);
          for (int64_t j = 0; j < n; j += V) {
            const int64_t cnt = std::min(V, n - j);
            acc = at::vec::fmadd(load_vec<acc_t, acc_t>(gr[o] + j, cnt), load_vec<acc_t, acc_t>(xr[i] + j, cnt), acc);
          }
          dst[o * a.Ci + i] = vec_sum(acc);
        }
      }
    }
  });
  std::fill(grad_w, grad_w + a.Co * a.Ci, 0.0);
  std::fill(grad_b, grad_b + a.Co, 0.0);
  for (int64_t task = 0; task < a.B * tiles; ++task) {
    const double* src = part.data() + task * per_task;
    for (int64_t k = 0; k < a.Co * a.Ci; ++k) grad_w[k] += src[k];
    for (int64_t o = 0; o < a.Co; ++o) grad_b[o] += src[a.Co * a.Ci + o];
  }
}

}  // namespace

void pointwise_conv_forward(const PointwiseArgs& a, const void* x, const double* w, const double* bias, void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "pointwise_conv_cpu", [&] {
    pointwise_forward_impl<scalar_t>(a, static_cast<const scalar_t*>(x), w, bias, static_cast<scalar_t*>(out));
  });
}

void pointwise_conv_weight_grad(const PointwiseArgs& a, const void* grad_out, const void* x, double* grad_w,
                                double* grad_b) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "pointwise_conv_backward_cpu", [&] {
    pointwise_weight_grad_impl<scalar_t>(a, static_cast<const scalar_t*>(grad_out), static_cast<const scalar_t*>(x),
                                         grad_w, grad_b);
  });
}
