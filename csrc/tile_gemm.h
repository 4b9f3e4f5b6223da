// The BLAS library that libtorch links (MKL on x86 wheels) exports the Fortran GEMMs; unimri
// calls them on small tile-local operands, where at::mm's per-call overhead (tensor wrapping,
// dispatch: 10-30 us) would cost as much as the product. Weak: where the symbols are absent,
// tile_gemm (tile_gemm_kernel.h) falls back to at::mm on wrapped buffers.
#pragma once

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace unimri {

// Whether tile GEMMs call the BLAS directly: the symbols resolved and UNIMRI_TILE_GEMM is not
// "aten" (the fallback, for tests; read at every call).
bool tile_gemm_uses_blas();

}  // namespace unimri
