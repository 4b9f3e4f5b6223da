// AVX-512 (F, BW, VL, DQ) build of the vectorised CPU kernels (x86-64 with GCC; elsewhere an
// empty stub that reports the variant as not compiled). Selected at run time by cpu_variant.h.
// Same scheme as kernels_avx2.cpp (ISA by pragma, ISA macros defined by hand, linked last).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(UNIMRI_NO_X86_VARIANTS)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#include "isa_avx2_macros.h"
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY unimri_avx512
#define CPU_CAPABILITY_AVX512
#define UNIMRI_VARIANT_NS avx512
#include "kernels_variant.h"

#else
#define UNIMRI_STUB_NS avx512
#include "kernels_stub.h"
#endif
