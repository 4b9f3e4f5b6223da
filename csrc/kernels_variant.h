// The body of one CPU-variant translation unit (kernels_baseline.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp): the including file sets the ISA, CPU_CAPABILITY and UNIMRI_VARIANT_NS
// first, so the same kernel sources compile once per variant into their own namespace.
#include "kernels_common.h"

namespace unimri::UNIMRI_VARIANT_NS {
extern const bool kCompiled = true;
#include "unified_focal_loss_kernel.h"
#include "unified_focal_loss_state_kernel.h"
#include "tile_gemm_kernel.h"
#include "attention_gate_kernel.h"
#include "batch_norm_relu_kernel.h"
#include "max_pool_kernel.h"
#include "pointwise_conv_kernel.h"
#include "sas_head_kernel.h"
}  // namespace unimri::UNIMRI_VARIANT_NS
