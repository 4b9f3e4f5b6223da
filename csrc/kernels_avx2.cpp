// AVX2 + FMA build of the vectorised CPU kernels (x86-64 with GCC; elsewhere an empty stub that
// reports the variant as not compiled). Selected at run time by cpu_variant.h.
//
// The ISA comes from `#pragma GCC target` so that setup.py and CMake compile every source with
// the same flags. GCC does not define the ISA macros for the pragma, and ATen's vec headers and
// sleef.h choose their code by them, so they are defined here, before any header. This file is
// linked after the baseline ones: an inline function emitted by both keeps the baseline copy.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(UNIMRI_NO_X86_VARIANTS)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __LZCNT__ 1
#define CPU_CAPABILITY unimri_avx2
#define CPU_CAPABILITY_AVX2
#include "kernels_common.h"

namespace unimri::avx2 {
extern const bool kCompiled = true;
#include "unified_focal_loss_kernel.h"
#include "attention_gate_kernel.h"
}  // namespace unimri::avx2

#else
#include <c10/util/Exception.h>

#include "attention_gate.h"
#include "cpu_variant.h"
#include "unified_focal_loss.h"

namespace unimri::avx2 {
extern const bool kCompiled = false;
void loss_stats(const LossArgs&, void*) {}
void loss_grad(const LossArgs&, const void*, bool, void*) {}
std::tuple<at::Tensor, at::Tensor> attention_gate_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, int64_t, double) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
std::vector<at::Tensor> attention_gate_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                double) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
}  // namespace unimri::avx2
#endif
