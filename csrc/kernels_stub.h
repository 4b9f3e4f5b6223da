// Stand-in for an ISA variant this architecture or compiler does not build (included by
// kernels_<variant>.cpp with UNIMRI_STUB_NS set to the variant's namespace): the variant
// reports itself as not compiled, so cpu_variant.h never selects it.
#include <c10/util/Exception.h>

#include "attention_gate.h"
#include "batch_norm_relu.h"
#include "cpu_variant.h"
#include "max_pool.h"
#include "pointwise_conv.h"
#include "sas_head.h"
#include "unified_focal_loss.h"

namespace unimri::UNIMRI_STUB_NS {
extern const bool kCompiled = false;
void loss_stats(const LossArgs&, void*) { TORCH_CHECK(false, "unimri: this CPU variant was not compiled"); }
void loss_grad(const LossArgs&, const void*, bool, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void loss_stats_state(const LossArgs&, float*, void*, LossDtype) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void loss_finish(const LossFinishArgs&) { TORCH_CHECK(false, "unimri: this CPU variant was not compiled"); }
std::tuple<at::Tensor, at::Tensor> attention_gate_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, int64_t, double, int64_t, bool,
                                                          GateSaved*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
std::vector<at::Tensor> attention_gate_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                double, int64_t, const at::Tensor&, const GateSaved&) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void batch_norm_relu_forward(const BnReluArgs&, const void*, void*, double*, double*, double*, double*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void batch_norm_relu_backward(const BnReluArgs&, const void*, const void*, const double*, const double*, void*,
                              double*, double*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void max_pool2x_forward(const MaxPoolArgs&, const void*, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void max_pool2x_backward(const MaxPoolArgs&, const void*, const void*, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void pointwise_conv_forward(const PointwiseArgs&, const void*, const double*, const double*, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void pointwise_conv_weight_grad(const PointwiseArgs&, const void*, const void*, double*, double*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void sas_head_moments(const SasHeadArgs&, const void*, const void*, double*, double*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void sas_head_apply(const SasHeadArgs&, const void*, const void*, const double*, const double*, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void sas_head_weight_grad(const SasHeadArgs&, const void*, const void*, const void*, double*, double*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
void sas_head_input_grad(const SasHeadArgs&, const void*, const void*, const void*, const double*, const double*,
                         const double*, void*, void*) {
  TORCH_CHECK(false, "unimri: this CPU variant was not compiled");
}
}  // namespace unimri::UNIMRI_STUB_NS
