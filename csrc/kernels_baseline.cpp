// Portable build of the vectorised CPU kernels (any architecture; the compiler's default ISA:
// SSE2 on x86-64, NEON on aarch64). Chosen when no wider variant runs (cpu_variant.h).
#define CPU_CAPABILITY unimri_baseline
#define CPU_CAPABILITY_DEFAULT
#define UNIMRI_VARIANT_NS base
#include "kernels_variant.h"
