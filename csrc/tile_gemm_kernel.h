// Small matrix products on tile-local buffers, compiled once per CPU variant by
// kernels_<variant>.cpp inside namespace unimri::<variant> (used by attention_gate_kernel.h and
// sas_head_kernel.h). No include guard on purpose. The BLAS symbols: tile_gemm.h.
namespace {

// Row-major C (M, N) = beta * C + op(A) op(B), op(A) (M, K), op(B) (K, N), with leading
// dimensions lda, ldb, ldc of the stored matrices; beta 0 or 1.
template <typename acc_t>
void tile_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const acc_t* A, int64_t lda,
               const acc_t* B, int64_t ldb, acc_t beta, acc_t* C, int64_t ldc) {
  if (tile_gemm_uses_blas()) {
    // column-major view: C^T = op(B)^T op(A)^T
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
    const acc_t one = 1;
    if constexpr (std::is_same_v<acc_t, float>) {
      sgemm_(&ta, &tb, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
    } else {
      dgemm_(&ta, &tb, &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
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

}  // namespace
