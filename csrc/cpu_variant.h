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

// Names of every variant this machine can run, narrowest first.
std::vector<std::string> supported_cpu_variants();

// Set by kernels_<variant>.cpp: whether that variant was compiled into this build.
namespace base { extern const bool kCompiled; }
namespace avx2 { extern const bool kCompiled; }
namespace avx512 { extern const bool kCompiled; }

}  // namespace unimri
