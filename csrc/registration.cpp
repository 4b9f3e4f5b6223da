// The one TORCH_LIBRARY block of unimri: schemas of the CPU kernels. Their
// implementations are registered per file with TORCH_LIBRARY_IMPL(unimri, CPU, m).
// The public, autograd- and compile-aware ops are the Python custom ops of
// unimri_kernels/ops, which call these for CPU tensors.
#include <torch/library.h>

TORCH_LIBRARY(unimri, m) {
  // Unified Focal loss family, both passes fused (see csrc/unified_focal_loss.cpp).
  m.def(
      "unified_focal_loss_cpu(Tensor logits, Tensor target, Tensor class_params, "
      "float fp_weight, float fn_weight, float smooth, int ignore_index, bool batch, "
      "bool compute_grad) -> (Tensor, Tensor)");
}
