// Attention gate (SAS) CPU kernels, compiled once per CPU variant by kernels_<variant>.cpp
// (cpu_variant.h) inside namespace unimri::<variant>; the op entry points are in
// attention_gate.cpp. No include guard on purpose. Maths: unimri_kernels/reference/attention_gate.py.
//
// 2D inputs are handled as 3D with depth 1 (patch depth 1, identity resampling along depth).
// Gn gates on the same (x, g) run together (selective attention): their theta and phi weights
// are stacked into one (Gn * Ci)-row matrix, so x's patches and g are gathered once, one GEMM
// gives every gate's pre-activation, and the backward sums the gates' patch and g gradients
// in that GEMM and their alpha * grad_y terms in the one write of grad_x. Layouts: coarse a
// (Gn, B, Nc); y and grad_y (Gn, B, Cx, *S); alpha and grad_alpha (B, Gn, *S).
// Forward:
//   pass 1, per tile of TILE coarse pixels (parallel over batch x tiles): gather the x
//     patches (K = Cx * s^d rows) and g (resampled to the coarse grid in-tile) into
//     tile-local buffers, pre = W_theta @ patch + W_phi @ g (BLAS, tile_gemm_kernel.h), then
//     q = psi . relu(pre + b_phi) + b_psi, a = sigmoid(q)^f. Only a (Gn, B, Nc) leaves the
//     tile: the (B, Gn * Ci, Nc) inter-channel tensor is never materialised.
//   pass 2, per fine row (parallel): alpha = resample(a), y = alpha * x for every channel
//     (y only when asked for: the folded SAS head reads x and alpha instead, csrc/sas_head.cpp).
// Backward (the custom ops save only the inputs and recompute the forward once per tile; the
// eager routes keep the forward's h and coarse attention, GateSaved, and skip A's recomputation):
//   A. per tile: pre, h = relu(pre + b_phi) (kept in a transient (B, tiles, Gn * Ci, TILE)
//      buffer for B), sigmoid, a; per gate, d alpha = grad_alpha + sum_c grad_y * x on the
//      tile's patch pixels (in x's order, read straight from x and grad_y), folded into d a
//      by the resampling adjoint (per-thread d a, reduced in thread order). Pixels outside
//      every patch get the same in a row pass.
//   B. per tile: d q = d a * f * a * (1 - sigmoid); grads of psi, b_psi, b_phi;
//      d pre = d q * psi * [h > 0]; W grads and patch / g grads by BLAS; grad_x on the
//      patch pixels = W_theta^T d pre + sum_k resample(a_k) * grad_y_k, written once.
// grad_x_in, when defined (laid out like x), is added to grad_x in its one write. An undefined
// grad_y counts as zero (alpha-only forward: the head returns grad_alpha and its
// share of grad_x itself).
// Outputs and buffers of >= 1 MiB come from the pool of recycled blocks (output_pool.h).
// All arithmetic is in at::opmath_type (fp32 for fp16/bf16, fp64 for fp64), except that the
// GEMM operands of bf16/fp16 gates (x patches, g, d pre, theta and phi) stay in that type where
// MKL multiplies it (float32 accumulation; tile_gemm_half_products in tile_gemm.h).
namespace {

// Linear resampling along one axis with F.interpolate(align_corners=False) semantics
// (ATen's compute_source_index_and_lambda): output index o reads i0, i1 with weights l0, l1.
template <typename acc_t>
struct LinearAxis {
  std::vector<int64_t> i0, i1;
  std::vector<acc_t> l0, l1;
  LinearAxis(int64_t in, int64_t out) : i0(out), i1(out), l0(out), l1(out) {
    const acc_t ratio = static_cast<acc_t>(in) / static_cast<acc_t>(out);
    for (int64_t o = 0; o < out; ++o) {
      if (in == out) {
        i0[o] = i1[o] = o;
        l0[o] = 1;
        l1[o] = 0;
        continue;
      }
      acc_t src = ratio * (static_cast<acc_t>(o) + static_cast<acc_t>(0.5)) - static_cast<acc_t>(0.5);
      if (src < 0) src = 0;
      const int64_t idx = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
      const acc_t lam = std::min(std::max(src - static_cast<acc_t>(idx), acc_t(0)), acc_t(1));
      i0[o] = idx;
      i1[o] = idx + (idx < in - 1 ? 1 : 0);
      l1[o] = lam;
      l0[o] = acc_t(1) - lam;
    }
  }
};

struct Geometry {
  int64_t Gn;                    // gates sharing x and g
  int64_t B, Cx, Cg, Ci, s, sd;  // Ci per gate; sd: patch depth (s in 3D, 1 in 2D)
  int64_t D, H, W;               // x grid
  int64_t Dc, Hc, Wc;            // coarse grid (theta x)
  int64_t Dg, Hg, Wg;            // g grid
  int64_t N() const { return D * H * W; }
  int64_t Nc() const { return Dc * Hc * Wc; }
  int64_t Ng() const { return Dg * Hg * Wg; }
  int64_t K() const { return Cx * sd * s * s; }
  int64_t CiT() const { return Gn * Ci; }  // pre-activation rows of all gates
  bool g_same() const { return Dg == Dc && Hg == Hc && Wg == Wc; }
  bool a_same() const { return Dc == D && Hc == H && Wc == W; }
  int64_t tile() const {
    const int64_t rows = std::max<int64_t>(std::max(K(), Cg), 1);
    return std::max<int64_t>(64, std::min<int64_t>(1024, 65536 / rows));
  }
};

Geometry make_geometry(const at::Tensor& x, const at::Tensor& g, const at::Tensor& theta_weight,
                       const at::Tensor& phi_weight, int64_t subsample, int64_t gates) {
  TORCH_CHECK(x.dim() == 4 || x.dim() == 5, "attention_gate_cpu: x must be 4D or 5D, got ", x.sizes());
  TORCH_CHECK(g.dim() == x.dim(), "attention_gate_cpu: g must have x's rank, got ", g.sizes());
  TORCH_CHECK(subsample >= 1, "attention_gate_cpu: subsample must be >= 1");
  TORCH_CHECK(gates >= 1 && theta_weight.dim() >= 1 && theta_weight.size(0) % gates == 0,
              "attention_gate_cpu: theta_weight ", theta_weight.sizes(), " does not hold ", gates, " gates");
  const bool three = x.dim() == 5;
  Geometry G{};
  G.Gn = gates;
  G.B = x.size(0);
  G.Cx = x.size(1);
  G.Cg = g.size(1);
  G.Ci = theta_weight.numel() / std::max<int64_t>(gates * x.size(1) * (three ? subsample : 1) *
                                                   subsample * subsample, 1);
  G.s = subsample;
  G.sd = three ? subsample : 1;
  G.D = three ? x.size(2) : 1;
  G.H = x.size(-2);
  G.W = x.size(-1);
  G.Dg = three ? g.size(2) : 1;
  G.Hg = g.size(-2);
  G.Wg = g.size(-1);
  G.Dc = G.D / G.sd;
  G.Hc = G.H / G.s;
  G.Wc = G.W / G.s;
  TORCH_CHECK(g.size(0) == G.B, "attention_gate_cpu: batch of g differs from x");
  TORCH_CHECK(G.Dc >= 1 && G.Hc >= 1 && G.Wc >= 1, "attention_gate_cpu: x smaller than subsample");
  TORCH_CHECK(G.Ci >= 1 && theta_weight.numel() == G.CiT() * G.K(), "attention_gate_cpu: theta_weight shape ",
              theta_weight.sizes());
  TORCH_CHECK(phi_weight.numel() == G.CiT() * G.Cg, "attention_gate_cpu: phi_weight shape ",
              phi_weight.sizes());
  return G;
}

template <typename acc_t>
at::TensorOptions acc_options() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
}

// Per-axis resampling tables: g grid -> coarse grid, coarse grid -> x grid.
template <typename acc_t>
struct Tables {
  LinearAxis<acc_t> gz, gy, gx, az, ay, ax;
  explicit Tables(const Geometry& G)
      : gz(G.Dg, G.Dc), gy(G.Hg, G.Hc), gx(G.Wg, G.Wc), az(G.Dc, G.D), ay(G.Hc, G.H), ax(G.Wc, G.W) {}
};

// Model parameters of every gate converted once, stacked gate after gate: the GEMM weights to
// prod_t (the type the tile products read, tile_gemm_kernel.h), the rest to acc_t.
template <typename acc_t, typename prod_t>
struct Params {
  at::Tensor theta, phi;  // (Gn * Ci, K), (Gn * Ci, Cg) contiguous prod_t
  std::vector<acc_t> phi_bias, psi, psi_bias;  // (Gn * Ci), (Gn * Ci), (Gn)
  Params(const at::Tensor& tw, const at::Tensor& pw, const at::Tensor& pb, const at::Tensor& sw,
         const at::Tensor& sb, const Geometry& G) {
    theta = tw.reshape({G.CiT(), G.K()}).to(c10::CppTypeToScalarType<prod_t>::value).contiguous();
    phi = pw.reshape({G.CiT(), G.Cg}).to(c10::CppTypeToScalarType<prod_t>::value).contiguous();
    auto to_vec = [](const at::Tensor& t) {
      at::Tensor c = t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      return std::vector<acc_t>(c.data_ptr<acc_t>(), c.data_ptr<acc_t>() + c.numel());
    };
    phi_bias = to_vec(pb);
    psi = to_vec(sw);
    psi_bias = to_vec(sb);
    TORCH_CHECK(static_cast<int64_t>(phi_bias.size()) == G.CiT() && static_cast<int64_t>(psi.size()) == G.CiT() &&
                    static_cast<int64_t>(psi_bias.size()) == G.Gn,
                "attention_gate_cpu: phi_bias, psi_weight or psi_bias does not match theta_weight");
  }
};

// A run of coarse pixels [p, p + len) of a tile that lie on one coarse row; its patches
// start at x-plane offset `origin` and are s apart along W.
struct Segment {
  int64_t p, len, origin;
  int64_t z, y, x;  // fine coordinates of the first patch's corner
};

// Tile-local work buffers (one set per parallel chunk): the GEMM operands x patches, g and
// d pre (backward; only when prod_t is not acc_t, else d pre stays in pre) as prod_t.
template <typename acc_t, typename prod_t>
struct Tile {
  static constexpr bool kConverts = !std::is_same_v<acc_t, prod_t>;
  std::vector<prod_t> patch, gbuf, dpre;
  std::vector<acc_t> pre, q, row;  // row: one resampled g row before its conversion to prod_t
  std::vector<Segment> segments;
  Tile(const Geometry& G, int64_t T)
      : patch(G.K() * T), gbuf(G.Cg * T), dpre(kConverts ? G.CiT() * T : 0), pre(G.CiT() * T), q(G.Gn * T),
        row(kConverts ? T : 0) {}
};

// Splits coarse pixels [p0, p0 + P) into runs along coarse rows (t.segments).
template <typename acc_t, typename prod_t>
void tile_segments(const Geometry& G, int64_t p0, int64_t P, Tile<acc_t, prod_t>& t) {
  const int64_t HW = G.H * G.W;
  t.segments.clear();
  for (int64_t p = 0; p < P;) {
    const int64_t n = p0 + p, row = n / G.Wc, xc = n % G.Wc, len = std::min(G.Wc - xc, P - p);
    const int64_t zc = row / G.Hc, yc = row % G.Hc;
    t.segments.push_back({p, len, zc * G.sd * HW + yc * G.s * G.W + xc * G.s, zc * G.sd,
                          yc * G.s, xc * G.s});
    p += len;
  }
}

// Visits every patch row of a tile: fn(k, dx, x-plane offset of (c, dz, dy)) with
// k = ((c * sd + dz) * s + dy) * s + dx the patch row for dx = 0.
template <typename Fn>
void for_patch_rows(const Geometry& G, Fn&& fn) {
  const int64_t HW = G.H * G.W;
  int64_t k = 0;
  for (int64_t c = 0; c < G.Cx; ++c)
    for (int64_t dz = 0; dz < G.sd; ++dz)
      for (int64_t dy = 0; dy < G.s; ++dy, k += G.s) fn(k, c * G.N() + dz * HW + dy * G.W);
}

// r0[j] = src[2 j], r1[j] = src[2 j + 1] for j < n, as dst_t. A copy of 16-bit values goes through
// their bit patterns: the compiler vectorises that, not a loop over c10::BFloat16 / c10::Half.
template <typename src_t, typename dst_t>
void deinterleave2(const src_t* src, dst_t* r0, dst_t* r1, int64_t n) {
  if constexpr (std::is_same_v<src_t, dst_t> && sizeof(src_t) == 2) {
    const auto* in = reinterpret_cast<const uint16_t*>(src);
    auto *o0 = reinterpret_cast<uint16_t*>(r0), *o1 = reinterpret_cast<uint16_t*>(r1);
    for (int64_t j = 0; j < n; ++j) {
      o0[j] = in[2 * j];
      o1[j] = in[2 * j + 1];
    }
  } else if constexpr (std::is_same_v<src_t, c10::BFloat16> && std::is_same_v<dst_t, float>) {
    // a bf16 pair read as 32 bits: the even value's float is its low half shifted up, the odd
    // value's float the high half with the low bits cleared
    for (int64_t j = 0; j < n; ++j) {
      uint32_t pair;
      std::memcpy(&pair, src + 2 * j, sizeof(pair));
      const uint32_t even = pair << 16, odd = pair & 0xFFFF0000u;
      std::memcpy(r0 + j, &even, sizeof(float));
      std::memcpy(r1 + j, &odd, sizeof(float));
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      r0[j] = static_cast<dst_t>(src[2 * j]);
      r1[j] = static_cast<dst_t>(src[2 * j + 1]);
    }
  }
}

// out[2 j] = r0[j], out[2 j + 1] = r1[j] for j < n (the inverse of deinterleave2), in a form the
// compiler vectorises (a loop over the two strided stores does not).
template <typename T>
void interleave2(const T* r0, const T* r1, T* out, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  int64_t j = 0;
  for (; j + V <= n; j += V) {
    const auto [lo, hi] = at::vec::interleave2(Vec::loadu(r0 + j), Vec::loadu(r1 + j));
    lo.store(out + 2 * j);
    hi.store(out + 2 * j + V);
  }
  for (; j < n; ++j) {
    out[2 * j] = r0[j];
    out[2 * j + 1] = r1[j];
  }
}

// Fills tile.patch (K, P) with the x patches of coarse pixels [p0, p0 + P) of one batch item
// (call tile_segments first). Reads each x row once, de-interleaving the s columns.
template <typename scalar_t, typename acc_t, typename prod_t>
void gather_patches(const Geometry& G, const scalar_t* xb, int64_t P, Tile<acc_t, prod_t>& t) {
  const int64_t s = G.s;
  for_patch_rows(G, [&](int64_t k, int64_t plane_off) {
    prod_t* rows = t.patch.data() + k * P;
    for (const Segment& seg : t.segments) {
      const scalar_t* src = xb + plane_off + seg.origin;
      prod_t* r0 = rows + seg.p;
      if (s == 2) {
        deinterleave2(src, r0, r0 + P, seg.len);
      } else {
        for (int64_t dx = 0; dx < s; ++dx)
          for (int64_t j = 0; j < seg.len; ++j) r0[dx * P + j] = static_cast<prod_t>(src[s * j + dx]);
      }
    }
  });
}

// Corners and weights of the g grid sampled at coarse pixel n (up to 8; 4 in 2D).
template <typename acc_t>
int g_corners(const Geometry& G, const Tables<acc_t>& T, int64_t n, int64_t* off, acc_t* w) {
  const int64_t HWc = G.Hc * G.Wc, zc = n / HWc, yc = (n / G.Wc) % G.Hc, xc = n % G.Wc;
  const int64_t zi[2] = {T.gz.i0[zc], T.gz.i1[zc]}, yi[2] = {T.gy.i0[yc], T.gy.i1[yc]},
                xi[2] = {T.gx.i0[xc], T.gx.i1[xc]};
  const acc_t zl[2] = {T.gz.l0[zc], T.gz.l1[zc]}, yl[2] = {T.gy.l0[yc], T.gy.l1[yc]},
              xl[2] = {T.gx.l0[xc], T.gx.l1[xc]};
  const int nz = G.Dg != G.Dc ? 2 : 1;  // same depth (and 2D): identity along z
  int m = 0;
  for (int a = 0; a < nz; ++a)
    for (int b = 0; b < 2; ++b)
      for (int c = 0; c < 2; ++c, ++m) {
        off[m] = (zi[a] * G.Hg + yi[b]) * G.Wg + xi[c];
        w[m] = (nz == 2 ? zl[a] : acc_t(1)) * yl[b] * xl[c];
      }
  return m;
}

// Fills tile.gbuf (Cg, P) with g resampled to coarse pixels [p0, p0 + P).
template <typename scalar_t, typename acc_t, typename prod_t>
void gather_gating(const Geometry& G, const Tables<acc_t>& T, const scalar_t* gb, int64_t p0,
                   int64_t P, Tile<acc_t, prod_t>& t, std::vector<int64_t>& offs, std::vector<acc_t>& ws) {
  const int64_t Ng = G.Ng();
  if (G.g_same()) {
    for (int64_t c = 0; c < G.Cg; ++c) {
      const scalar_t* src = gb + c * Ng + p0;
      prod_t* row = t.gbuf.data() + c * P;
      if constexpr (std::is_same_v<scalar_t, prod_t>) {
        std::copy(src, src + P, row);
      } else {
        at::vec::convert(src, row, P);
      }
    }
    return;
  }
  int m = 0;
  for (int64_t p = 0; p < P; ++p) m = g_corners(G, T, p0 + p, &offs[8 * p], &ws[8 * p]);
  for (int64_t c = 0; c < G.Cg; ++c) {
    const scalar_t* src = gb + c * Ng;
    prod_t* row = t.gbuf.data() + c * P;
    acc_t* out = nullptr;
    if constexpr (Tile<acc_t, prod_t>::kConverts) out = t.row.data(); else out = row;
    for (int64_t p = 0; p < P; ++p) {
      acc_t v = 0;
      for (int j = 0; j < m; ++j) v += ws[8 * p + j] * static_cast<acc_t>(src[offs[8 * p + j]]);
      out[p] = v;
    }
    if constexpr (Tile<acc_t, prod_t>::kConverts) at::vec::convert(out, row, P);
  }
}

// pre (Gn * Ci, P) = W_theta @ patch + W_phi @ gbuf (bias added by the caller), by BLAS.
template <typename acc_t, typename prod_t>
void tile_preactivation(const Geometry& G, const Params<acc_t, prod_t>& W, Tile<acc_t, prod_t>& t, int64_t P) {
  tile_gemm(false, false, G.CiT(), P, G.K(), W.theta.template data_ptr<prod_t>(), G.K(), t.patch.data(), P,
            acc_t(0), t.pre.data(), P);
  tile_gemm(false, false, G.CiT(), P, G.Cg, W.phi.template data_ptr<prod_t>(), G.Cg, t.gbuf.data(), P, acc_t(1),
            t.pre.data(), P);
}

// Loads coarse pixels [p0, p0 + P) of sample b into the tile: segments, x patches, g.
template <typename scalar_t, typename acc_t, typename prod_t>
void load_tile(const Geometry& G, const Tables<acc_t>& T, const scalar_t* x, const scalar_t* g, int64_t b,
               int64_t p0, int64_t P, Tile<acc_t, prod_t>& t, std::vector<int64_t>& offs, std::vector<acc_t>& ws) {
  tile_segments(G, p0, P, t);
  gather_patches(G, x + b * G.Cx * G.N(), P, t);
  gather_gating(G, T, g + b * G.Cg * G.Ng(), p0, P, t, offs, ws);
}

// q[k * P + p] = psi_k . relu(pre_k[:, p] + b_phi_k) + b_psi_k for gate k; turns t.pre into
// h = relu(pre + b_phi).
template <typename acc_t, typename prod_t>
void tile_psi(const Geometry& G, const Params<acc_t, prod_t>& W, Tile<acc_t, prod_t>& t, int64_t P) {
  for (int64_t k = 0; k < G.Gn; ++k) {
    acc_t* q = t.q.data() + k * P;
    std::fill(q, q + P, W.psi_bias[k]);
    for (int64_t ci = k * G.Ci; ci < (k + 1) * G.Ci; ++ci) {
      acc_t* h = t.pre.data() + ci * P;
      const acc_t b = W.phi_bias[ci], w = W.psi[ci];
      for (int64_t p = 0; p < P; ++p) {
        const acc_t v = std::max(h[p] + b, acc_t(0));
        h[p] = v;
        q[p] += w * v;
      }
    }
  }
}

template <typename acc_t>
inline acc_t sigmoid(acc_t q) {
  return acc_t(1) / (acc_t(1) + std::exp(-q));
}

// Calls f(w, offset) for each coarse row (z', y') that fine row (z, y) interpolates from with
// a nonzero weight w; offset is where that row's column lo starts in one item's coarse grid.
template <typename acc_t, typename F>
void for_each_coarse_row(const Geometry& G, const Tables<acc_t>& T, int64_t z, int64_t y,
                         int64_t lo, F&& f) {
  const int64_t zi[2] = {T.az.i0[z], T.az.i1[z]}, yi[2] = {T.ay.i0[y], T.ay.i1[y]};
  const acc_t zl[2] = {T.az.l0[z], T.az.l1[z]}, yl[2] = {T.ay.l0[y], T.ay.l1[y]};
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      const acc_t w = zl[a] * yl[b];
      if (w != acc_t(0)) f(w, (zi[a] * G.Hc + yi[b]) * G.Wc + lo);
    }
}

// Attention on fine row (z, y), columns [x0, x1): alpha[i] = resample(a)[z, y, x0 + i], from
// one batch item's coarse a (Nc). tmp holds at least Wc values.
template <typename acc_t>
void alpha_span(const Geometry& G, const Tables<acc_t>& T, const acc_t* ab, int64_t z, int64_t y,
                int64_t x0, int64_t x1, acc_t* tmp, acc_t* alpha) {
  const int64_t lo = T.ax.i0[x0], hi = T.ax.i1[x1 - 1] + 1;  // coarse columns read
  std::fill(tmp, tmp + (hi - lo), acc_t(0));
  for_each_coarse_row(G, T, z, y, lo, [&](acc_t w, int64_t offset) {
    const acc_t* src = ab + offset;
    for (int64_t i = 0; i < hi - lo; ++i) tmp[i] += w * src[i];
  });
  for (int64_t x = x0; x < x1; ++x)
    alpha[x - x0] = T.ax.l0[x] * tmp[T.ax.i0[x] - lo] + T.ax.l1[x] * tmp[T.ax.i1[x] - lo];
}

// Adjoint of alpha_span: adds resample^T(dalpha) of fine row (z, y), columns [x0, x1), into
// one batch item's coarse gradient dab (Nc). tmp holds at least Wc values.
template <typename acc_t>
void adjoint_span(const Geometry& G, const Tables<acc_t>& T, const acc_t* dalpha, int64_t z,
                  int64_t y, int64_t x0, int64_t x1, acc_t* tmp, acc_t* dab) {
  const int64_t lo = T.ax.i0[x0], hi = T.ax.i1[x1 - 1] + 1;
  std::fill(tmp, tmp + (hi - lo), acc_t(0));
  for (int64_t x = x0; x < x1; ++x) {
    tmp[T.ax.i0[x] - lo] += T.ax.l0[x] * dalpha[x - x0];
    tmp[T.ax.i1[x] - lo] += T.ax.l1[x] * dalpha[x - x0];
  }
  for_each_coarse_row(G, T, z, y, lo, [&](acc_t w, int64_t offset) {
    acc_t* dst = dab + offset;
    for (int64_t i = 0; i < hi - lo; ++i) dst[i] += w * tmp[i];
  });
}

// Calls fn(z, y, x0, x1) for each run of fine row pixels outside every patch (the remainder
// rows / columns when a size is not a multiple of s), over fine rows [r0, r1) of (D * H).
template <typename Fn>
void for_edge_spans(const Geometry& G, int64_t r0, int64_t r1, Fn&& fn) {
  const int64_t zin = G.Dc * G.sd, yin = G.Hc * G.s, xin = G.Wc * G.s;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t z = r / G.H, y = r % G.H;
    const int64_t x0 = (z < zin && y < yin) ? xin : 0;
    if (x0 < G.W) fn(z, y, x0, G.W);
  }
}

// Coarse attention a (Gn, B, Nc) = sigmoid(q)^f, tile by tile (forward pass 1); where hs and sig
// are given, also the tiles' h (B * tiles, Gn * Ci, TILE) and sigmoid(q) (Gn, B, Nc).
template <typename scalar_t, typename acc_t, typename prod_t>
void coarse_attention(const Geometry& G, const Tables<acc_t>& T, const Params<acc_t, prod_t>& W,
                      const scalar_t* x, const scalar_t* g, double focal, acc_t* a, acc_t* hs = nullptr,
                      acc_t* sig = nullptr) {
  const int64_t TL = G.tile(), Nc = G.Nc(), tiles = (Nc + TL - 1) / TL;
  at::parallel_for(0, G.B * tiles, 1, [&](int64_t begin, int64_t end) {
    Tile<acc_t, prod_t> t(G, TL);
    std::vector<int64_t> offs(8 * TL);
    std::vector<acc_t> ws(8 * TL);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles, p0 = (job % tiles) * TL, P = std::min(TL, Nc - p0);
      load_tile(G, T, x, g, b, p0, P, t, offs, ws);
      tile_preactivation(G, W, t, P);
      tile_psi(G, W, t, P);
      if (hs) std::copy(t.pre.begin(), t.pre.begin() + G.CiT() * P, hs + job * G.CiT() * TL);
      for (int64_t k = 0; k < G.Gn; ++k)
        for (int64_t p = 0; p < P; ++p) {
          const acc_t sg = sigmoid(t.q[k * P + p]);
          a[(k * G.B + b) * Nc + p0 + p] = focal == 1.0 ? sg : std::pow(sg, static_cast<acc_t>(focal));
          if (sig) sig[(k * G.B + b) * Nc + p0 + p] = sg;
        }
    }
  });
}

template <typename scalar_t, typename prod_t>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& g,
                                                const at::Tensor& tw, const at::Tensor& pw,
                                                const at::Tensor& pb, const at::Tensor& sw,
                                                const at::Tensor& sb, int64_t subsample,
                                                double focal, int64_t gates, bool write_y, GateSaved* save) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry G = make_geometry(x, g, tw, pw, subsample, gates);
  const Tables<acc_t> T(G);
  const Params<acc_t, prod_t> W(tw, pw, pb, sw, sb, G);
  const int64_t coarse_size = G.Gn * G.B * G.Nc();
  std::vector<acc_t> a_local;
  acc_t *a = nullptr, *hs = nullptr, *sig = nullptr;
  if (save) {  // a and sigmoid(q) into save->coarse, h into save->h
    const int64_t tiles = (G.Nc() + G.tile() - 1) / G.tile();
    save->h = pooled_empty({G.B * tiles * G.CiT() * G.tile()}, acc_options<acc_t>());
    save->coarse = at::empty({2, G.Gn, G.B, G.Nc()}, acc_options<acc_t>());
    a = save->coarse.template data_ptr<acc_t>();
    sig = a + coarse_size;
    hs = save->h.template data_ptr<acc_t>();
  } else {
    a_local.resize(coarse_size);
    a = a_local.data();
  }
  coarse_attention<scalar_t, acc_t, prod_t>(G, T, W, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), focal, a,
                                            hs, sig);

  std::vector<int64_t> alpha_sizes = x.sizes().vec(), y_sizes = x.sizes().vec();
  alpha_sizes[1] = G.Gn;
  y_sizes.insert(y_sizes.begin(), G.Gn);
  at::Tensor y = write_y ? pooled_empty(y_sizes, x.options()) : at::Tensor();
  at::Tensor alpha = pooled_empty(alpha_sizes, x.options());
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* yp = write_y ? y.data_ptr<scalar_t>() : nullptr;
  scalar_t* ap = alpha.data_ptr<scalar_t>();
  const int64_t rows = G.B * G.D * G.H, N = G.N();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tmp(G.Wc), arow(G.W);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (G.D * G.H), zy = r % (G.D * G.H), z = zy / G.H, yy = zy % G.H;
      const int64_t base = zy * G.W;
      for (int64_t k = 0; k < G.Gn; ++k) {
        alpha_span(G, T, a + (k * G.B + b) * G.Nc(), z, yy, 0, G.W, tmp.data(), arow.data());
        scalar_t* arow_out = ap + (b * G.Gn + k) * N + base;
        for (int64_t i = 0; i < G.W; ++i) arow_out[i] = static_cast<scalar_t>(arow[i]);
        if (!yp) continue;
        scalar_t* yk = yp + k * G.B * G.Cx * N;
        for (int64_t c = 0; c < G.Cx; ++c) {
          const int64_t off = (b * G.Cx + c) * N + base;
          for (int64_t i = 0; i < G.W; ++i)
            yk[off + i] = static_cast<scalar_t>(arow[i] * static_cast<acc_t>(xp[off + i]));
        }
      }
    }
  });
  return {y, alpha};
}

// Weight-gradient accumulators of one thread (all gates stacked).
template <typename acc_t>
struct WeightGrads {
  // transposed, (K, Gn * Ci) and (Cg, Gn * Ci) acc_t: MKL forms these long-inner products 1.5-2.3x
  // faster with the many rows first (fp32, 16-32 inter channels)
  at::Tensor theta_t, phi_t;
  std::vector<acc_t> phi_bias, psi, psi_bias;  // (Gn * Ci), (Gn * Ci), (Gn)
  explicit WeightGrads(const Geometry& G)
      : theta_t(at::zeros({G.K(), G.CiT()}, acc_options<acc_t>())),
        phi_t(at::zeros({G.Cg, G.CiT()}, acc_options<acc_t>())),
        phi_bias(G.CiT(), acc_t(0)),
        psi(G.CiT(), acc_t(0)),
        psi_bias(G.Gn, acc_t(0)) {}
};

// Visits the patch area rows of a tile: fn(r, dz, dy), r = (dz * s + dy) * s the area row of
// dx = 0 (an area row is one of the sd * s * s pixel positions inside a patch).
template <typename Fn>
void for_area_rows(const Geometry& G, Fn&& fn) {
  for (int64_t dz = 0; dz < G.sd; ++dz)
    for (int64_t dy = 0; dy < G.s; ++dy) fn((dz * G.s + dy) * G.s, dz, dy);
}

template <typename scalar_t, typename prod_t>
std::vector<at::Tensor> backward_impl(const at::Tensor& gy, const at::Tensor& galpha,
                                      const at::Tensor& x, const at::Tensor& g,
                                      const at::Tensor& tw, const at::Tensor& pw,
                                      const at::Tensor& pb, const at::Tensor& sw,
                                      const at::Tensor& sb, int64_t subsample, double focal,
                                      int64_t gates, const at::Tensor& gx_in, const GateSaved& saved) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry G = make_geometry(x, g, tw, pw, subsample, gates);
  const Tables<acc_t> T(G);
  const Params<acc_t, prod_t> W(tw, pw, pb, sw, sb, G);
  const int64_t N = G.N(), Nc = G.Nc(), Ng = G.Ng(), K = G.K(), s = G.s, Gn = G.Gn, CiT = G.CiT();
  const int64_t HW = G.H * G.W, area = G.sd * s * s, rows = G.B * G.D * G.H;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* gp = g.data_ptr<scalar_t>();
  const scalar_t* gyp = gy.defined() ? gy.data_ptr<scalar_t>() : nullptr;  // undefined: zero
  const scalar_t* gxin = gx_in.defined() ? gx_in.data_ptr<scalar_t>() : nullptr;  // added to grad_x
  const scalar_t* gap = galpha.data_ptr<scalar_t>();
  const int64_t TL = G.tile(), tiles = (Nc + TL - 1) / TL;
  const acc_t f = static_cast<acc_t>(focal);
  const int nthreads = at::get_num_threads();
  // grad_y of gate k, batch item b (Cx, N); grad_alpha of gate k, batch item b (N); the
  // coarse index of gate k, batch item b, coarse pixel n.
  auto gy_of = [&](int64_t k, int64_t b) { return gyp + (k * G.B + b) * G.Cx * N; };
  auto ga_of = [&](int64_t k, int64_t b) { return gap + (b * Gn + k) * N; };
  auto coarse = [&](int64_t k, int64_t b) { return (k * G.B + b) * Nc; };

  // Pass A, per tile: the forward (h = relu(pre + b_phi) kept for pass B, sigmoid and a) and,
  // per gate, d alpha = grad_alpha + sum_c grad_y * x on the tile's patch pixels, whose
  // resampling adjoint is added into a per-thread d a (Gn, B, Nc) (tiles share coarse neighbours).
  // From the forward where saved (then pass A only gathers d alpha), else recomputed below.
  const bool reuse = saved.h.defined();
  if (reuse)
    TORCH_CHECK(saved.h.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && saved.h.is_contiguous() &&
                    saved.h.numel() == G.B * tiles * CiT * TL && saved.coarse.scalar_type() == saved.h.scalar_type() &&
                    saved.coarse.is_contiguous() && saved.coarse.numel() == 2 * Gn * G.B * Nc,
                "attention_gates_alpha_backward_cpu: saved_h / saved_coarse do not match these inputs");
  at::Tensor h_store = reuse ? saved.h : pooled_empty({G.B * tiles * CiT * TL}, acc_options<acc_t>());
  acc_t* hs = h_store.data_ptr<acc_t>();
  std::vector<acc_t> a_local(reuse ? 0 : 2 * Gn * G.B * Nc);
  acc_t* a = reuse ? saved.coarse.data_ptr<acc_t>() : a_local.data();
  acc_t* sig = a + Gn * G.B * Nc;
  std::vector<std::vector<acc_t>> da_slots(nthreads);
  at::parallel_for(0, G.B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t>& da = da_slots[at::get_thread_num()];
    if (da.empty()) da.assign(Gn * G.B * Nc, acc_t(0));
    Tile<acc_t, prod_t> t(G, TL);
    std::vector<acc_t> dal(area * TL), tmp(G.Wc), ws(8 * TL);
    std::vector<int64_t> offs(8 * TL);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles, p0 = (job % tiles) * TL, P = std::min(TL, Nc - p0);
      if (reuse) {
        tile_segments(G, p0, P, t);
      } else {
        load_tile(G, T, xp, gp, b, p0, P, t, offs, ws);
        tile_preactivation(G, W, t, P);
        tile_psi(G, W, t, P);
        std::copy(t.pre.begin(), t.pre.begin() + CiT * P, hs + job * CiT * TL);
        for (int64_t k = 0; k < Gn; ++k)
          for (int64_t p = 0; p < P; ++p) {
            const acc_t sg = sigmoid(t.q[k * P + p]);
            sig[coarse(k, b) + p0 + p] = sg;
            a[coarse(k, b) + p0 + p] = focal == 1.0 ? sg : std::pow(sg, f);
          }
      }
      const scalar_t* xb = xp + b * G.Cx * N;
      for (int64_t k = 0; k < Gn; ++k) {
        // d alpha on the patch pixels in x's order: patch row (dz, dy) of the tile holds s * P
        // values, a segment's at [s * seg.p, s * (seg.p + seg.len)).
        const scalar_t* gab = ga_of(k, b);
        for_area_rows(G, [&](int64_t r, int64_t dz, int64_t dy) {
          for (const Segment& seg : t.segments) {
            const scalar_t* src = gab + dz * HW + dy * G.W + seg.origin;
            acc_t* dst = dal.data() + r * P + s * seg.p;
            for (int64_t i = 0; i < s * seg.len; ++i) dst[i] = static_cast<acc_t>(src[i]);
          }
        });
        const scalar_t* gyb = gyp ? gy_of(k, b) : nullptr;
        if (gyb) for_patch_rows(G, [&](int64_t kr, int64_t plane_off) {
          acc_t* row = dal.data() + (kr % area) * P;
          for (const Segment& seg : t.segments) {
            const scalar_t *gsrc = gyb + plane_off + seg.origin, *xsrc = xb + plane_off + seg.origin;
            acc_t* dst = row + s * seg.p;
            for (int64_t i = 0; i < s * seg.len; ++i)
              dst[i] += static_cast<acc_t>(gsrc[i]) * static_cast<acc_t>(xsrc[i]);
          }
        });
        for_area_rows(G, [&](int64_t r, int64_t dz, int64_t dy) {
          for (const Segment& seg : t.segments)
            adjoint_span(G, T, dal.data() + r * P + s * seg.p, seg.z + dz, seg.y + dy, seg.x,
                         seg.x + s * seg.len, tmp.data(), da.data() + coarse(k, b));
        });
      }
    }
  });
  // d alpha on pixels outside every patch (sizes not multiples of s).
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t>& da = da_slots[at::get_thread_num()];
    if (da.empty()) da.assign(Gn * G.B * Nc, acc_t(0));
    std::vector<acc_t> fine(G.W), tmp(G.Wc);
    const int64_t DH = G.D * G.H;
    for (int64_t b = begin / DH; b <= (end - 1) / DH; ++b) {
      const int64_t r0 = std::max(begin, b * DH) - b * DH, r1 = std::min(end, (b + 1) * DH) - b * DH;
      for_edge_spans(G, r0, r1, [&](int64_t z, int64_t y, int64_t x0, int64_t x1) {
        const int64_t base = (z * G.H + y) * G.W;
        for (int64_t k = 0; k < Gn; ++k) {
          const scalar_t *gab = ga_of(k, b), *gyb = gyp ? gy_of(k, b) : nullptr, *xb = xp + b * G.Cx * N;
          for (int64_t i = x0; i < x1; ++i) fine[i - x0] = static_cast<acc_t>(gab[base + i]);
          for (int64_t c = 0; gyb && c < G.Cx; ++c) {
            const int64_t off = c * N + base;
            for (int64_t i = x0; i < x1; ++i)
              fine[i - x0] += static_cast<acc_t>(gyb[off + i]) * static_cast<acc_t>(xb[off + i]);
          }
          adjoint_span(G, T, fine.data(), z, y, x0, x1, tmp.data(), da.data() + coarse(k, b));
        }
      });
    }
  });
  std::vector<acc_t> da(Gn * G.B * Nc, acc_t(0));
  for (const std::vector<acc_t>& slot : da_slots)  // thread order: deterministic
    if (!slot.empty())
      for (int64_t i = 0; i < Gn * G.B * Nc; ++i) da[i] += slot[i];

  // Pass B, per tile: d q, d pre, weight gradients, g gradient, and grad_x on the patch
  // pixels = (W_theta^T d pre) + sum_k alpha_k * grad_y_k, each written once.
  at::Tensor grad_x = pooled_empty(x.sizes(), x.options());
  at::Tensor grad_g = pooled_empty(g.sizes(), g.options());
  scalar_t* gxp = grad_x.data_ptr<scalar_t>();
  scalar_t* ggp = grad_g.data_ptr<scalar_t>();
  std::vector<acc_t> dg_coarse(G.g_same() ? 0 : G.B * G.Cg * Nc);
  std::vector<WeightGrads<acc_t>> slots;
  slots.reserve(nthreads);
  for (int i = 0; i < nthreads; ++i) slots.emplace_back(G);
  at::parallel_for(0, G.B * tiles, 1, [&](int64_t begin, int64_t end) {
    WeightGrads<acc_t>& acc = slots[at::get_thread_num()];
    Tile<acc_t, prod_t> t(G, TL);
    std::vector<acc_t> gpatch(K * TL), ggate(G.Cg * TL), ws(8 * TL), alpha(Gn * area * TL),
        tmp(G.Wc), run(s * TL);
    std::vector<int64_t> offs(8 * TL);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / tiles, p0 = (job % tiles) * TL, P = std::min(TL, Nc - p0);
      load_tile(G, T, xp, gp, b, p0, P, t, offs, ws);
      std::copy(hs + job * CiT * TL, hs + job * CiT * TL + CiT * P, t.pre.begin());
      for (int64_t k = 0; k < Gn; ++k)
        for (int64_t p = 0; p < P; ++p) {
          const int64_t n = coarse(k, b) + p0 + p;
          const acc_t dq = da[n] * f * a[n] * (acc_t(1) - sig[n]);
          t.q[k * P + p] = dq;
          acc.psi_bias[k] += dq;
        }
      for (int64_t ci = 0; ci < CiT; ++ci) {
        acc_t* h = t.pre.data() + ci * P;
        const acc_t* q = t.q.data() + (ci / G.Ci) * P;
        const acc_t w = W.psi[ci];
        acc_t dpsi = 0, dbias = 0;
        for (int64_t p = 0; p < P; ++p) {
          dpsi += q[p] * h[p];
          const acc_t dpre = h[p] > acc_t(0) ? q[p] * w : acc_t(0);
          dbias += dpre;
          h[p] = dpre;  // t.pre now holds d pre
        }
        acc.psi[ci] += dpsi;
        acc.phi_bias[ci] += dbias;
      }
      const prod_t* dpre;
      if constexpr (!Tile<acc_t, prod_t>::kConverts) {
        dpre = t.pre.data();
      } else {  // d pre as the products' type
        at::vec::convert(t.pre.data(), t.dpre.data(), CiT * P);
        dpre = t.dpre.data();
      }
      const prod_t *theta = W.theta.template data_ptr<prod_t>(), *phi = W.phi.template data_ptr<prod_t>();
      tile_gemm(false, true, K, CiT, P, t.patch.data(), P, dpre, P, acc_t(1), acc.theta_t.template data_ptr<acc_t>(),
                CiT);
      tile_gemm(false, true, G.Cg, CiT, P, t.gbuf.data(), P, dpre, P, acc_t(1), acc.phi_t.template data_ptr<acc_t>(),
                CiT);
      tile_gemm(true, false, K, P, CiT, theta, K, dpre, P, acc_t(0), gpatch.data(), P);  // sums the gates' patch gradients
      tile_gemm(true, false, G.Cg, P, CiT, phi, G.Cg, dpre, P, acc_t(0), ggate.data(), P);
      // alpha of every gate on the patch pixels, in x's order (as d alpha in pass A): gate k,
      // patch row (dz, dy) at alpha[(k * area + r) * P], a segment's at s * seg.p (only read
      // with a grad_y).
      for (int64_t k = 0; gyp && k < Gn; ++k)
        for_area_rows(G, [&](int64_t r, int64_t dz, int64_t dy) {
          for (const Segment& seg : t.segments)
            alpha_span(G, T, a + coarse(k, b), seg.z + dz, seg.y + dy, seg.x,
                       seg.x + s * seg.len, tmp.data(), alpha.data() + (k * area + r) * P + s * seg.p);
        });
      scalar_t* gxb = gxp + b * G.Cx * N;
      for_patch_rows(G, [&](int64_t kr, int64_t plane_off) {
        const acc_t* d0 = gpatch.data() + kr * P;
        for (const Segment& seg : t.segments) {
          // run: this patch row of grad_x in x's order, accumulated over the gates
          const int64_t len = s * seg.len;
          if (s == 2) {
            interleave2(d0 + seg.p, d0 + P + seg.p, run.data(), seg.len);
          } else {
            for (int64_t dx = 0; dx < s; ++dx)
              for (int64_t j = 0; j < seg.len; ++j) run[s * j + dx] = d0[dx * P + seg.p + j];
          }
          for (int64_t k = 0; gyp && k < Gn; ++k) {
            const scalar_t* src = gy_of(k, b) + plane_off + seg.origin;
            const acc_t* al = alpha.data() + (k * area + kr % area) * P + s * seg.p;
            for (int64_t i = 0; i < len; ++i) run[i] += al[i] * static_cast<acc_t>(src[i]);
          }
          if (gxin) {
            const scalar_t* add = gxin + b * G.Cx * N + plane_off + seg.origin;
            for (int64_t i = 0; i < len; ++i) run[i] += static_cast<acc_t>(add[i]);
          }
          scalar_t* dst = gxb + plane_off + seg.origin;
          for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<scalar_t>(run[i]);
        }
      });
      for (int64_t c = 0; c < G.Cg; ++c) {
        const acc_t* src = ggate.data() + c * P;
        if (G.g_same()) {
          scalar_t* dst = ggp + (b * G.Cg + c) * Ng + p0;
          for (int64_t p = 0; p < P; ++p) dst[p] = static_cast<scalar_t>(src[p]);
        } else {
          std::copy(src, src + P, dg_coarse.data() + (b * G.Cg + c) * Nc + p0);
        }
      }
    }
  });

  // g on another grid: adjoint of its resampling, one (batch, channel) plane per task.
  if (!G.g_same()) {
    at::parallel_for(0, G.B * G.Cg, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> plane(Ng);
      std::vector<int64_t> off(8);
      std::vector<acc_t> w(8);
      for (int64_t bc = begin; bc < end; ++bc) {
        std::fill(plane.begin(), plane.end(), acc_t(0));
        const acc_t* src = dg_coarse.data() + bc * Nc;
        for (int64_t n = 0; n < Nc; ++n) {
          const int m = g_corners(G, T, n, off.data(), w.data());
          for (int j = 0; j < m; ++j) plane[off[j]] += w[j] * src[n];
        }
        scalar_t* dst = ggp + bc * Ng;
        for (int64_t n = 0; n < Ng; ++n) dst[n] = static_cast<scalar_t>(plane[n]);
      }
    });
  }

  // grad_x = sum_k alpha_k * grad_y_k on pixels outside every patch.
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tmp(G.Wc), arows(Gn * G.W), run(G.W);
    const int64_t DH = G.D * G.H;
    for (int64_t b = begin / DH; b <= (end - 1) / DH; ++b) {
      const int64_t r0 = std::max(begin, b * DH) - b * DH, r1 = std::min(end, (b + 1) * DH) - b * DH;
      for_edge_spans(G, r0, r1, [&](int64_t z, int64_t y, int64_t x0, int64_t x1) {
        for (int64_t k = 0; k < Gn; ++k)
          alpha_span(G, T, a + coarse(k, b), z, y, x0, x1, tmp.data(), arows.data() + k * G.W);
        const int64_t base = (z * G.H + y) * G.W;
        for (int64_t c = 0; c < G.Cx; ++c) {
          const int64_t off = c * N + base;
          for (int64_t i = x0; i < x1; ++i)
            run[i - x0] = gxin ? static_cast<acc_t>(gxin[b * G.Cx * N + off + i]) : acc_t(0);
          for (int64_t k = 0; gyp && k < Gn; ++k) {
            const scalar_t* gyb = gy_of(k, b);
            const acc_t* arow = arows.data() + k * G.W;
            for (int64_t i = x0; i < x1; ++i) run[i - x0] += arow[i - x0] * static_cast<acc_t>(gyb[off + i]);
          }
          scalar_t* dst = gxp + b * G.Cx * N + off;
          for (int64_t i = x0; i < x1; ++i) dst[i] = static_cast<scalar_t>(run[i - x0]);
        }
      });
    }
  });

  // Reduce the per-thread weight gradients in slot order (deterministic).
  WeightGrads<acc_t>& total = slots[0];
  for (int i = 1; i < nthreads; ++i) {
    total.theta_t.add_(slots[i].theta_t);
    total.phi_t.add_(slots[i].phi_t);
    for (int64_t ci = 0; ci < CiT; ++ci) {
      total.phi_bias[ci] += slots[i].phi_bias[ci];
      total.psi[ci] += slots[i].psi[ci];
    }
    for (int64_t k = 0; k < Gn; ++k) total.psi_bias[k] += slots[i].psi_bias[k];
  }
  auto vec_tensor = [&](const std::vector<acc_t>& v, at::IntArrayRef sizes) {
    at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, acc_options<acc_t>());
    std::copy(v.begin(), v.end(), out.data_ptr<acc_t>());
    return out.to(x.scalar_type()).reshape(sizes);
  };
  return {grad_x,
          grad_g,
          total.theta_t.t().to(x.scalar_type()).contiguous().reshape(tw.sizes()),
          total.phi_t.t().to(x.scalar_type()).contiguous().reshape(pw.sizes()),
          vec_tensor(total.phi_bias, pb.sizes()),
          vec_tensor(total.psi, sw.sizes()),
          vec_tensor(total.psi_bias, sb.sizes())};
}

}  // namespace

// The smallest inner dimension of the gates' tile products (x patch rows, g's channels, the
// stacked gates' inter channels; the others run over pixels).
inline int64_t gate_product_inner(const Geometry& G) { return std::min({G.K(), G.Cg, G.CiT()}); }

std::tuple<at::Tensor, at::Tensor> attention_gate_forward(const at::Tensor& x, const at::Tensor& g,
                                                          const at::Tensor& theta_weight,
                                                          const at::Tensor& phi_weight, const at::Tensor& phi_bias,
                                                          const at::Tensor& psi_weight, const at::Tensor& psi_bias,
                                                          int64_t subsample, double focal, int64_t gates,
                                                          bool write_y, GateSaved* save) {
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attention_gate_cpu", [&] {
    const int64_t inner = gate_product_inner(make_geometry(x, g, theta_weight, phi_weight, subsample, gates));
    with_product_type<scalar_t>(inner, [&](auto p) {
      out = forward_impl<scalar_t, decltype(p)>(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                                subsample, focal, gates, write_y, save);
    });
  });
  return out;
}

std::vector<at::Tensor> attention_gate_backward(const at::Tensor& grad_y, const at::Tensor& grad_alpha,
                                                const at::Tensor& x, const at::Tensor& g,
                                                const at::Tensor& theta_weight, const at::Tensor& phi_weight,
                                                const at::Tensor& phi_bias, const at::Tensor& psi_weight,
                                                const at::Tensor& psi_bias, int64_t subsample, double focal,
                                                int64_t gates, const at::Tensor& grad_x_in,
                                                const GateSaved& saved) {
  std::vector<at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "attention_gate_backward_cpu", [&] {
    const int64_t inner = gate_product_inner(make_geometry(x, g, theta_weight, phi_weight, subsample, gates));
    with_product_type<scalar_t>(inner, [&](auto p) {
      r = backward_impl<scalar_t, decltype(p)>(grad_y, grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                                               psi_weight, psi_bias, subsample, focal, gates, grad_x_in, saved);
    });
  });
  return r;
}
