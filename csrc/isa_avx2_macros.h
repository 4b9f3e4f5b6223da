// ISA macros of AVX2 + FMA (and what comes with it), for kernels_avx2.cpp and kernels_avx512.cpp:
// GCC does not define them for `#pragma GCC target`, and ATen's vec headers and sleef.h pick
// their code by them. Include right after the pragma, before any other header.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __BMI__ 1
#define __BMI2__ 1
#define __LZCNT__ 1
