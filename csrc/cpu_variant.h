// Which build of the vectorised CPU kernels runs: the portable baseline, or the AVX2 / AVX-512
// builds (x86-64 only) chosen at run time from what the CPU supports.
//
// The kernel bodies (unified_focal_loss_kernel.h, attention_gate_kernel.h) are compiled once per
// variant by kernels_<variant>.cpp, each in its own namespace and with its own
// at::vec::Vectorized width (Sleef exp/log). The environment is read at every call so that tests
// and users can switch: UNIMRI_CPU_VARIANT=baseline|avx2|avx512|auto (default auto: the widest
// the CPU runs), UNIMRI_CPU_BASELINE=1 is a synonym of UNIMRI_CPU_VARIANT=baseline.
#pragma once

#include <string>
#include <vector>

namespace unimri {

enum class CpuVariant { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Name used by the environment variable and by unimri_kernels.cpu_variant().
const char* cpu_variant_name(CpuVariant v);

// True if this variant was compiled in and the CPU (and OS) can run it.
bool cpu_variant_supported(CpuVariant v);

// The variant to run now (environment override, else the widest supported one). Throws a
// c10::ValueError naming UNIMRI_CPU_VARIANT when it asks for a variant this machine cannot run.
CpuVariant cpu_variant();

// The build of one kernel for variant v, from its builds in namespaces avx512, avx2 and base
// (see UNIMRI_KERNEL_FOR).
template <typename Fn>
Fn kernel_for(CpuVariant v, Fn avx512_build, Fn avx2_build, Fn base_build) {
  return v == CpuVariant::kAvx512 ? avx512_build : v == CpuVariant::kAvx2 ? avx2_build : base_build;
}

// The build of kernel `name` (declared in namespaces avx512, avx2 and base) for variant v:
// UNIMRI_KERNEL_FOR(cpu_variant(), max_pool2x_forward)(args...).
#define UNIMRI_KERNEL_FOR(v, name) ::unimri::kernel_for((v), &avx512::name, &avx2::name, &base::name)

// Names of every variant this machine can run, narrowest first.
std::vector<std::string> supported_cpu_variants();

// Set by kernels_<variant>.cpp: whether that variant was compiled into this build.
namespace base { extern const bool kCompiled; }
namespace avx2 { extern const bool kCompiled; }
namespace avx512 { extern const bool kCompiled; }

}  // namespace unimri
