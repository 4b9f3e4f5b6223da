// Small matrix products on tile-local buffers, compiled once per CPU variant by
// kernels_<variant>.cpp inside namespace unimri::<variant> (used by attention_gate_kernel.h and
// sas_head_kernel.h). No include guard on purpose. The BLAS symbols: tile_gemm.h.
namespace {

// The Fortran (column-major) BLAS arguments of row-major C (M, N) = op(A) op(B): the BLAS
// computes C^T = op(B)^T op(A)^T, so B is passed first.
struct ColumnMajorGemm {
  char ta, tb;
  int m, n, k, lda, ldb, ldc;  // of the column-major call: its A is our B, its B our A
  ColumnMajorGemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, int64_t lda_a, int64_t ldb_b,
                  int64_t ldc_c)
      : ta(trans_b ? 'T' : 'N'), tb(trans_a ? 'T' : 'N'), m(static_cast<int>(N)), n(static_cast<int>(M)),
        k(static_cast<int>(K)), lda(static_cast<int>(ldb_b)), ldb(static_cast<int>(lda_a)),
        ldc(static_cast<int>(ldc_c)) {}
};

// Row-major C (M, N) = beta * C + op(A) op(B), op(A) (M, K), op(B) (K, N), with leading
// dimensions lda, ldb, ldc of the stored matrices; beta 0 or 1.
template <typename acc_t>
void tile_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const acc_t* A, int64_t lda,
               const acc_t* B, int64_t ldb, acc_t beta, acc_t* C, int64_t ldc) {
  if (tile_gemm_uses_blas()) {
    const ColumnMajorGemm g(trans_a, trans_b, M, N, K, lda, ldb, ldc);
    const acc_t one = 1;
    if constexpr (std::is_same_v<acc_t, float>) {
      sgemm_(&g.ta, &g.tb, &g.m, &g.n, &g.k, &one, B, &g.lda, A, &g.ldb, &beta, C, &g.ldc);
    } else {
      dgemm_(&g.ta, &g.tb, &g.m, &g.n, &g.k, &one, B, &g.lda, A, &g.ldb, &beta, C, &g.ldc);
    }
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  auto view = [&](const acc_t* p, int64_t r, int64_t c, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<acc_t*>(p), {trans ? c : r, trans ? r : c}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor out = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == acc_t(0)) {
    at::mm_out(out, view(A, M, K, lda, trans_a), view(B, K, N, ldb, trans_b));
  } else {
    out.addmm_(view(A, M, K, lda, trans_a), view(B, K, N, ldb, trans_b));
  }
}

// The same product of bf16 or fp16 operands into float32 C, by MKL's mixed-precision GEMM; only
// where tile_gemm_half_products(dtype) (kernels choose float32 tiles otherwise).
template <typename half_t, std::enable_if_t<c10::is_reduced_floating_point_v<half_t>, int> = 0>
void tile_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const half_t* A, int64_t lda,
               const half_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const ColumnMajorGemm g(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  const float one = 1;
  const auto* a = reinterpret_cast<const uint16_t*>(B);
  const auto* b = reinterpret_cast<const uint16_t*>(A);
  if constexpr (std::is_same_v<half_t, c10::BFloat16>) {
    gemm_bf16bf16f32_(&g.ta, &g.tb, &g.m, &g.n, &g.k, &one, a, &g.lda, b, &g.ldb, &beta, C, &g.ldc);
  } else {
    gemm_f16f16f32_(&g.ta, &g.tb, &g.m, &g.n, &g.k, &one, a, &g.lda, b, &g.ldb, &beta, C, &g.ldc);
  }
}

// Calls fn(prod_t{}) with the type the tile products of a scalar_t op read: scalar_t for
// bf16/fp16 where the BLAS multiplies them and they pay for products whose smallest inner
// dimension is min_inner (tile_gemm_half_products, tile_gemm.h), else the compute type.
template <typename scalar_t, typename Fn>
void with_product_type(int64_t min_inner, Fn&& fn) {
  if constexpr (c10::is_reduced_floating_point_v<scalar_t>) {
    const HalfProducts half = tile_gemm_half_products(c10::CppTypeToScalarType<scalar_t>::value);
    if (half == HalfProducts::kAlways || (half == HalfProducts::kWherePaying && min_inner >= kHalfProductMinInner))
      return fn(scalar_t{});
  }
  fn(at::opmath_type<scalar_t>{});
}

}  // namespace
