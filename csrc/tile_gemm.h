// The BLAS library that libtorch links (MKL on x86 wheels) exports the Fortran GEMMs; unimri
// calls them on small tile-local operands, where at::mm's per-call overhead (tensor wrapping,
// dispatch: 10-30 us) would cost as much as the product. Weak: where the symbols are absent,
// tile_gemm (tile_gemm_kernel.h) falls back to at::mm on wrapped buffers, and bf16/fp16 tiles
// are multiplied as float32.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's mixed-precision GEMMs: bf16 / fp16 operands (as their 16-bit patterns), float32
// accumulation and result (AVX-512-BF16 / AMX where the CPU has them).
void gemm_bf16bf16f32_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
void gemm_f16f16f32_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                     const float* alpha, const uint16_t* a, const int* lda, const uint16_t* b, const int* ldb,
                     const float* beta, float* c, const int* ldc) __attribute__((weak));
}

namespace unimri {

// Whether tile GEMMs call the BLAS directly: the symbols resolved and UNIMRI_TILE_GEMM is not
// "aten" (the fallback, for tests; read at every call).
bool tile_gemm_uses_blas();

// Whether tiles of a bf16/fp16 op are multiplied in that type (float32 accumulation) rather
// than converted to float32 (UNIMRI_TILE_GEMM: "half" always, "fp32" or "aten" never; the
// default where they pay).
enum class HalfProducts { kNever, kWherePaying, kAlways };
HalfProducts tile_gemm_half_products(c10::ScalarType dtype);

// The default's rule. MKL's bf16 GEMM beats sgemm on the kernels' tiles only with AMX (on this
// project's Xeon, 2-4x for inner dimensions of 64 and more) and loses to it for inner dimensions
// below 32 (a product's operands are then packed for little work); elsewhere it is not used.
bool cpu_has_amx_for(c10::ScalarType dtype);
constexpr int64_t kHalfProductMinInner = 32;

}  // namespace unimri
