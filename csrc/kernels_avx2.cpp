// AVX2 + FMA build of the vectorised CPU kernels (x86-64 with GCC; elsewhere an empty stub that
// reports the variant as not compiled). Selected at run time by cpu_variant.h.
//
// The ISA comes from `#pragma GCC target` so that setup.py and CMake compile every source with
// the same flags. GCC does not define the ISA macros for the pragma, and ATen's vec headers and
// sleef.h choose their code by them, so they are defined first (isa_avx2_macros.h). This file is
// linked after the baseline ones: an inline function emitted by both keeps the baseline copy.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(UNIMRI_NO_X86_VARIANTS)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "isa_avx2_macros.h"
#define CPU_CAPABILITY unimri_avx2
#define CPU_CAPABILITY_AVX2
#define UNIMRI_VARIANT_NS avx2
#include "kernels_variant.h"

#else
#define UNIMRI_STUB_NS avx2
#include "kernels_stub.h"
#endif
