// Run-time choice of the CPU kernel variant (see cpu_variant.h); reported by the ops
// unimri::cpu_variant() and unimri::cpu_variants() (registration.cpp).
#include "cpu_variant.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <cstdlib>
#include <cstring>

namespace unimri {

const char* cpu_variant_name(CpuVariant v) {
  switch (v) {
    case CpuVariant::kAvx512:
      return "avx512";
    case CpuVariant::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

namespace {

bool cpu_runs(CpuVariant v) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("bmi2");
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (v == CpuVariant::kAvx2) return avx2;
  if (v == CpuVariant::kAvx512) return avx512;
#else
  if (v != CpuVariant::kBaseline) return false;
#endif
  return true;
}

bool compiled(CpuVariant v) {
  switch (v) {
    case CpuVariant::kAvx512:
      return avx512::kCompiled;
    case CpuVariant::kAvx2:
      return avx2::kCompiled;
    default:
      return base::kCompiled;
  }
}

}  // namespace

bool cpu_variant_supported(CpuVariant v) { return compiled(v) && cpu_runs(v); }

CpuVariant cpu_variant() {
  const char* baseline = std::getenv("UNIMRI_CPU_BASELINE");
  if (baseline != nullptr && std::strcmp(baseline, "") != 0 && std::strcmp(baseline, "0") != 0)
    return CpuVariant::kBaseline;
  const char* want = std::getenv("UNIMRI_CPU_VARIANT");
  if (want != nullptr && std::strcmp(want, "") != 0 && std::strcmp(want, "auto") != 0) {
    for (CpuVariant v : {CpuVariant::kBaseline, CpuVariant::kAvx2, CpuVariant::kAvx512}) {
      if (std::strcmp(want, cpu_variant_name(v)) != 0) continue;
      TORCH_CHECK_VALUE(cpu_variant_supported(v), "UNIMRI_CPU_VARIANT=", want,
                        " cannot run here (this CPU/build runs: ", c10::Join(", ", supported_cpu_variants()),
                        ")");
      return v;
    }
    TORCH_CHECK_VALUE(false, "UNIMRI_CPU_VARIANT must be one of auto, baseline, avx2, avx512; got '", want, "'");
  }
  if (cpu_variant_supported(CpuVariant::kAvx512)) return CpuVariant::kAvx512;
  if (cpu_variant_supported(CpuVariant::kAvx2)) return CpuVariant::kAvx2;
  return CpuVariant::kBaseline;
}

std::vector<std::string> supported_cpu_variants() {
  std::vector<std::string> out;
  for (CpuVariant v : {CpuVariant::kBaseline, CpuVariant::kAvx2, CpuVariant::kAvx512})
    if (cpu_variant_supported(v)) out.emplace_back(cpu_variant_name(v));
  return out;
}

}  // namespace unimri
