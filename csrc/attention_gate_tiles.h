// The tiles of the attention gate kernels (attention_gate_kernel.h): the gates' geometry, the
// resampling tables and their spans, the parameters in the kernels' types, and the gathering of
// a tile's x patches and resampled g with its pre-activation. Included by
// attention_gate_kernel.h inside namespace unimri::<variant> (kernels_<variant>.cpp).
#pragma once

#include "common/interleave.h"

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

Geometry make_geometry(const GateArgs& args) {
  const at::Tensor &x = args.x, &g = args.g, &theta_weight = args.theta_weight, &phi_weight = args.phi_weight;
  const int64_t subsample = args.subsample, gates = args.gates;
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
  Params(const GateArgs& args, const Geometry& G) {
    theta = args.theta_weight.reshape({G.CiT(), G.K()}).to(c10::CppTypeToScalarType<prod_t>::value).contiguous();
    phi = args.phi_weight.reshape({G.CiT(), G.Cg}).to(c10::CppTypeToScalarType<prod_t>::value).contiguous();
    auto to_vec = [](const at::Tensor& t) {
      at::Tensor c = t.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      return std::vector<acc_t>(c.data_ptr<acc_t>(), c.data_ptr<acc_t>() + c.numel());
    };
    phi_bias = to_vec(args.phi_bias);
    psi = to_vec(args.psi_weight);
    psi_bias = to_vec(args.psi_bias);
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

// Visits the patch area rows of a tile: fn(r, dz, dy), r = (dz * s + dy) * s the area row of
// dx = 0 (an area row is one of the sd * s * s pixel positions inside a patch).
template <typename Fn>
void for_area_rows(const Geometry& G, Fn&& fn) {
  for (int64_t dz = 0; dz < G.sd; ++dz)
    for (int64_t dy = 0; dy < G.s; ++dy) fn((dz * G.s + dy) * G.s, dz, dy);
}

}  // namespace
