// Stand-in for an ISA variant this architecture or compiler does not build (included by
// kernels_<variant>.cpp with UNIMRI_STUB_NS set to the variant's namespace): the variant
// reports itself as not compiled, so cpu_variant.h never selects it. Its entry points come from
// the same macros that declare the kernels, each with a body that says it was not compiled.
#include <c10/util/Exception.h>

#include "attention_gate.h"
#include "batch_norm_relu.h"
#include "cpu_variant.h"
#include "max_pool.h"
#include "pointwise_conv.h"
#include "sas_head.h"
#include "unified_focal_loss.h"

#define UNIMRI_NOT_COMPILED \
  { TORCH_CHECK(false, "unimri: this CPU variant was not compiled"); }

namespace unimri {
namespace UNIMRI_STUB_NS {
extern const bool kCompiled = false;
}
UNIMRI_LOSS_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
UNIMRI_GATE_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
UNIMRI_BN_RELU_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
UNIMRI_MAX_POOL_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
UNIMRI_POINTWISE_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
UNIMRI_SAS_HEAD_KERNELS(UNIMRI_STUB_NS, UNIMRI_NOT_COMPILED)
}  // namespace unimri
