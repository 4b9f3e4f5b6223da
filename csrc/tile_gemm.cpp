// Which tile products the kernels use (tile_gemm.h); registration.cpp defines the ops that tell the tests.
#include <c10/core/ScalarType.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "tile_gemm.h"

namespace unimri {

namespace {

bool env_is(const char* value) {
  const char* env = std::getenv("UNIMRI_TILE_GEMM");
  return env != nullptr && std::strcmp(env, value) == 0;
}

}  // namespace

bool tile_gemm_uses_blas() { return sgemm_ != nullptr && dgemm_ != nullptr && !env_is("aten"); }

bool cpu_has_amx_for(c10::ScalarType dtype) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const auto amx = [] {
    unsigned a = 0, b = 0, c = 0, d = 0, a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return std::pair<bool, bool>{false, false};
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    bool os_saves_tiles = false;  // XCR0 bits 17-18: the OS saves the AMX tile state
    unsigned ea = 0, eb = 0, ec = 0, ed = 0;
    if (__get_cpuid(1, &ea, &eb, &ec, &ed) && (ec & (1u << 27))) {  // OSXSAVE
      unsigned lo = 0, hi = 0;
      __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      os_saves_tiles = (lo & (3u << 17)) == (3u << 17);
    }
    const bool tile = os_saves_tiles && (d & (1u << 24));
    return std::pair<bool, bool>{tile && (d & (1u << 22)), tile && (a1 & (1u << 21))};  // AMX-BF16, AMX-FP16
  }();
  if (dtype == at::kBFloat16) return amx.first;
  if (dtype == at::kHalf) return amx.second;
#else
  (void)dtype;
#endif
  return false;
}

HalfProducts tile_gemm_half_products(c10::ScalarType dtype) {
  const bool symbol = dtype == at::kBFloat16 ? gemm_bf16bf16f32_ != nullptr
                      : dtype == at::kHalf   ? gemm_f16f16f32_ != nullptr
                                             : false;
  if (!symbol || !tile_gemm_uses_blas() || env_is("fp32")) return HalfProducts::kNever;
  if (env_is("half")) return HalfProducts::kAlways;
  return cpu_has_amx_for(dtype) ? HalfProducts::kWherePaying : HalfProducts::kNever;
}

}  // namespace unimri
