// Attention gate (SAS) CPU kernels, compiled once per CPU variant by kernels_<variant>.cpp
// (cpu_variant.h) inside namespace unimri::<variant>; the op entry points are in
// attention_gate.cpp; the tiles they work on in attention_gate_tiles.h. No include guard on purpose. Maths: unimri_kernels/reference/attention_gate.py.
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
// direct routes keep the forward's h and coarse attention, GateSaved, and skip A's recomputation),
// one member function of GateBackward per pass:
//   A. (patch_coarse_grad) per tile: pre, h = relu(pre + b_phi) (kept in a transient (B, tiles, Gn * Ci, TILE)
//      buffer for B), sigmoid, a; per gate, d alpha = grad_alpha + sum_c grad_y * x on the
//      tile's patch pixels (in x's order, read straight from x and grad_y), folded into d a
//      by the resampling adjoint (per-thread d a, reduced in thread order). Pixels outside
//      every patch get the same in a row pass (edge_coarse_grad).
//   B. (tile_grads) per tile: d q = d a * f * a * (1 - sigmoid); grads of psi, b_psi, b_phi;
//      d pre = d q * psi * [h > 0]; W grads and patch / g grads by BLAS; grad_x on the
//      patch pixels = W_theta^T d pre + sum_k resample(a_k) * grad_y_k, written once; then
//      g's gradient through its resampling (gating_grad_resampled), grad_x outside every patch
//      (edge_input_grad) and the per-thread weight gradients reduced (weight_grads).
// grad_x_in, when defined (laid out like x), is added to grad_x in its one write. An undefined
// grad_y counts as zero (alpha-only forward: the head returns grad_alpha and its
// share of grad_x itself).
// Outputs and buffers of >= 1 MiB come from the pool of recycled blocks (output_pool.h).
// All arithmetic is in at::opmath_type (fp32 for fp16/bf16, fp64 for fp64), except that the
// GEMM operands of bf16/fp16 gates (x patches, g, d pre, theta and phi) stay in that type where
// MKL multiplies it (float32 accumulation; tile_gemm_half_products in tile_gemm.h).

#include "attention_gate_tiles.h"

namespace {

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
std::tuple<at::Tensor, at::Tensor> forward_impl(const GateArgs& args, bool write_y, GateSaved* save) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor &x = args.x, &g = args.g;
  const Geometry G = make_geometry(args);
  const Tables<acc_t> T(G);
  const Params<acc_t, prod_t> W(args, G);
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
  coarse_attention<scalar_t, acc_t, prod_t>(G, T, W, x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), args.focal, a,
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


// The gates' backward, one member function per pass (see the top of this file), over what the
// passes share: the geometry, tables and parameters, the inputs' pointers, and the coarse
// attention a, sigmoid(q) and the tiles' h (saved by the forward, else recomputed by pass A).
template <typename scalar_t, typename prod_t>
struct GateBackward {
  using acc_t = at::opmath_type<scalar_t>;
  using Slots = std::vector<std::vector<acc_t>>;  // one coarse gradient d a (Gn, B, Nc) per thread

  const GateArgs& args;
  const Geometry G;
  const Tables<acc_t> T;
  const Params<acc_t, prod_t> W;
  const int64_t N, Nc, K, s, Gn, CiT, HW, area, rows, TL, tiles;
  const acc_t f;
  const int nthreads;
  const scalar_t *xp, *gp;
  const scalar_t* gyp;   // undefined grad_y: null, counts as zero
  const scalar_t* gxin;  // added to grad_x, or null
  const scalar_t* gap;
  const bool reuse;  // h, a and sigmoid(q) come from the forward (GateSaved)
  at::Tensor h_store;
  acc_t* hs;
  std::vector<acc_t> a_local;
  acc_t *a, *sig;

  GateBackward(const GateArgs& args_, const GateUpstream& up, const GateSaved& saved)
      : args(args_),
        G(make_geometry(args_)),
        T(G),
        W(args_, G),
        N(G.N()),
        Nc(G.Nc()),
        K(G.K()),
        s(G.s),
        Gn(G.Gn),
        CiT(G.CiT()),
        HW(G.H * G.W),
        area(G.sd * G.s * G.s),
        rows(G.B * G.D * G.H),
        TL(G.tile()),
        tiles((Nc + TL - 1) / TL),
        f(static_cast<acc_t>(args_.focal)),
        nthreads(at::get_num_threads()),
        xp(args_.x.data_ptr<scalar_t>()),
        gp(args_.g.data_ptr<scalar_t>()),
        gyp(up.grad_y.defined() ? up.grad_y.data_ptr<scalar_t>() : nullptr),
        gxin(up.grad_x_in.defined() ? up.grad_x_in.data_ptr<scalar_t>() : nullptr),
        gap(up.grad_alpha.data_ptr<scalar_t>()),
        reuse(saved.h.defined()) {
    if (reuse)
      TORCH_CHECK(saved.h.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && saved.h.is_contiguous() &&
                      saved.h.numel() == G.B * tiles * CiT * TL &&
                      saved.coarse.scalar_type() == saved.h.scalar_type() && saved.coarse.is_contiguous() &&
                      saved.coarse.numel() == 2 * Gn * G.B * Nc,
                  "attention_gates_alpha_backward_cpu: saved_h / saved_coarse do not match these inputs");
    h_store = reuse ? saved.h : pooled_empty({G.B * tiles * CiT * TL}, acc_options<acc_t>());
    hs = h_store.data_ptr<acc_t>();
    a_local.resize(reuse ? 0 : 2 * Gn * G.B * Nc);
    a = reuse ? saved.coarse.data_ptr<acc_t>() : a_local.data();
    sig = a + Gn * G.B * Nc;
  }

  // grad_y of gate k, batch item b (Cx, N); grad_alpha of gate k, batch item b (N); the
  // coarse index of gate k, batch item b, coarse pixel 0.
  const scalar_t* gy_of(int64_t k, int64_t b) const { return gyp + (k * G.B + b) * G.Cx * N; }
  const scalar_t* ga_of(int64_t k, int64_t b) const { return gap + (b * Gn + k) * N; }
  int64_t coarse(int64_t k, int64_t b) const { return (k * G.B + b) * Nc; }

  std::vector<acc_t>& slot_of_this_thread(Slots& slots) const {
    std::vector<acc_t>& da = slots[at::get_thread_num()];
    if (da.empty()) da.assign(Gn * G.B * Nc, acc_t(0));
    return da;
  }

  // Pass A, per tile: the forward (h = relu(pre + b_phi) kept for pass B, sigmoid and a; skipped
  // when reused) and, per gate, d alpha = grad_alpha + sum_c grad_y * x on the tile's patch
  // pixels, whose resampling adjoint is added into the thread's d a (tiles share coarse
  // neighbours).
  void patch_coarse_grad(Slots& da_slots) {
    at::parallel_for(0, G.B * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t>& da = slot_of_this_thread(da_slots);
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
              a[coarse(k, b) + p0 + p] = args.focal == 1.0 ? sg : std::pow(sg, f);
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
  }

  // d alpha on pixels outside every patch (sizes not multiples of s), into the threads' d a.
  void edge_coarse_grad(Slots& da_slots) const {
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t>& da = slot_of_this_thread(da_slots);
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
  }

  // The coarse gradient d a (Gn, B, Nc): passes A and their edge rows, the threads' parts summed
  // in thread order (deterministic).
  std::vector<acc_t> coarse_grad() {
    Slots da_slots(nthreads);
    patch_coarse_grad(da_slots);
    edge_coarse_grad(da_slots);
    std::vector<acc_t> da(Gn * G.B * Nc, acc_t(0));
    for (const std::vector<acc_t>& slot : da_slots)
      if (!slot.empty())
        for (int64_t i = 0; i < Gn * G.B * Nc; ++i) da[i] += slot[i];
    return da;
  }

  // Pass B, per tile: d q, d pre, weight gradients (into the thread's slot), g's gradient (on
  // the coarse grid into dg_coarse when g is on another grid), and grad_x on the patch pixels =
  // (W_theta^T d pre) + sum_k alpha_k * grad_y_k, each written once.
  void tile_grads(const std::vector<acc_t>& da, scalar_t* gxp, scalar_t* ggp, std::vector<acc_t>& dg_coarse,
                  std::vector<WeightGrads<acc_t>>& slots) const {
    const int64_t Ng = G.Ng();
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
        tile_gemm(false, true, K, CiT, P, t.patch.data(), P, dpre, P, acc_t(1),
                  acc.theta_t.template data_ptr<acc_t>(), CiT);
        tile_gemm(false, true, G.Cg, CiT, P, t.gbuf.data(), P, dpre, P, acc_t(1),
                  acc.phi_t.template data_ptr<acc_t>(), CiT);
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
  }

  // g on another grid: the adjoint of its resampling, one (batch, channel) plane per task.
  void gating_grad_resampled(const std::vector<acc_t>& dg_coarse, scalar_t* ggp) const {
    const int64_t Ng = G.Ng();
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

  // grad_x = sum_k alpha_k * grad_y_k (+ grad_x_in) on pixels outside every patch.
  void edge_input_grad(scalar_t* gxp) const {
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
  }

  // The parameters' gradients (theta, phi, phi_bias, psi, psi_bias), the per-thread slots
  // reduced in slot order (deterministic), each shaped like its parameter in x's dtype.
  std::vector<at::Tensor> weight_grads(std::vector<WeightGrads<acc_t>>& slots) const {
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
    const c10::ScalarType dtype = args.x.scalar_type();
    auto vec_tensor = [&](const std::vector<acc_t>& v, at::IntArrayRef sizes) {
      at::Tensor out = at::empty({static_cast<int64_t>(v.size())}, acc_options<acc_t>());
      std::copy(v.begin(), v.end(), out.data_ptr<acc_t>());
      return out.to(dtype).reshape(sizes);
    };
    return {total.theta_t.t().to(dtype).contiguous().reshape(args.theta_weight.sizes()),
            total.phi_t.t().to(dtype).contiguous().reshape(args.phi_weight.sizes()),
            vec_tensor(total.phi_bias, args.phi_bias.sizes()),
            vec_tensor(total.psi, args.psi_weight.sizes()),
            vec_tensor(total.psi_bias, args.psi_bias.sizes())};
  }

  // Every gradient: x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias.
  std::vector<at::Tensor> run() {
    const std::vector<acc_t> da = coarse_grad();
    at::Tensor grad_x = pooled_empty(args.x.sizes(), args.x.options());
    at::Tensor grad_g = pooled_empty(args.g.sizes(), args.g.options());
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* ggp = grad_g.data_ptr<scalar_t>();
    std::vector<acc_t> dg_coarse(G.g_same() ? 0 : G.B * G.Cg * Nc);
    std::vector<WeightGrads<acc_t>> slots;
    slots.reserve(nthreads);
    for (int i = 0; i < nthreads; ++i) slots.emplace_back(G);
    tile_grads(da, gxp, ggp, dg_coarse, slots);
    if (!G.g_same()) gating_grad_resampled(dg_coarse, ggp);
    edge_input_grad(gxp);
    std::vector<at::Tensor> grads{grad_x, grad_g};
    for (at::Tensor& w : weight_grads(slots)) grads.push_back(std::move(w));
    return grads;
  }
};

}  // namespace

// The smallest inner dimension of the gates' tile products (x patch rows, g's channels, the
// stacked gates' inter channels; the others run over pixels).
inline int64_t gate_product_inner(const Geometry& G) { return std::min({G.K(), G.Cg, G.CiT()}); }

std::tuple<at::Tensor, at::Tensor> attention_gate_forward(const GateArgs& args, bool write_y, GateSaved* save) {
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "attention_gate_cpu", [&] {
    with_product_type<scalar_t>(gate_product_inner(make_geometry(args)), [&](auto p) {
      out = forward_impl<scalar_t, decltype(p)>(args, write_y, save);
    });
  });
  return out;
}

std::vector<at::Tensor> attention_gate_backward(const GateArgs& args, const GateUpstream& upstream,
                                                const GateSaved& saved) {
  std::vector<at::Tensor> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.x.scalar_type(), "attention_gate_backward_cpu", [&] {
    with_product_type<scalar_t>(gate_product_inner(make_geometry(args)), [&](auto p) {
      r = GateBackward<scalar_t, decltype(p)>(args, upstream, saved).run();
    });
  });
  return r;
}
