// Interface between the Unified Focal loss op (unified_focal_loss.cpp) and its vectorised tile
// kernels (unified_focal_loss_kernel.h, compiled once per CPU variant by kernels_<variant>.cpp).
// Plain pointers only, so the variant translation units need no at::Tensor.
#pragma once

#include <cstdint>

namespace unimri {

enum class LossDtype { kFloat, kDouble, kBFloat16, kHalf };

// Pixels per tile: the unit of parallel work and of the deterministic reduction.
constexpr int64_t kLossTile = 512;
// Most classes of the one-sweep path (index targets, fp32 accumulation); more take two sweeps.
constexpr int64_t kStateMaxClasses = 16;

struct LossArgs {
  const void* logits;            // (B, C, N) contiguous, `dtype`
  const int64_t* index_target;   // (B, N) labels, or null for soft targets
  const void* soft_target;       // (B, C, N) in `dtype`, or null for index targets
  const double* params;          // (4, C) rows fw, g, tw, e
  int64_t B, C, N, ignore_index;
  LossDtype dtype;
  int64_t tiles_per_sample() const { return (N + kLossTile - 1) / kLossTile; }
  int64_t tiles() const { return B * tiles_per_sample(); }
  // Row of pass-1 partial sums per tile: [TP_c | Σp_c | Σy_c | focal | valid count | bad labels].
  int64_t row_width() const { return 3 * C + 3; }
};

// The light pass of the one-sweep path: gradient (B, C, N) in `out_dtype` from the per-pixel
// state of loss_stats_state (in `state_dtype`; out may alias state when the dtypes match).
struct LossFinishArgs {
  const void* state;
  LossDtype state_dtype;
  void* out;
  LossDtype out_dtype;
  const float* coef;  // (B, 3, C) = [K_TP | K_P | fw/count], each times the sample's grad_output
  int64_t B, C, N;
};

// Per variant (namespaces base, avx2, avx512), with acc = double for kDouble, float otherwise:
//   loss_stats: partial (tiles, row_width) acc sums of pass 1;
//   loss_grad:  grad (B, C, N) in `dtype` from coef (B or 1, 3, C) acc = [K_TP | K_P | fw/count];
//   loss_stats_state: index targets, float accumulation, C <= kStateMaxClasses: loss_stats'
//     partial sums and, if state is not null, the per-pixel state (B, C, N) in state_dtype (the
//     logits' dtype, or kFloat) that loss_finish turns into the gradient;
//   loss_finish: that light pass.
#define UNIMRI_LOSS_KERNELS(ns, BODY)                                                           \
  namespace ns {                                                                                  \
  void loss_stats(const LossArgs& args, void* partial) BODY                                           \
  void loss_grad(const LossArgs& args, const void* coef, bool batch, void* grad) BODY                 \
  void loss_stats_state(const LossArgs& args, float* partial, void* state, LossDtype state_dtype) BODY \
  void loss_finish(const LossFinishArgs& args) BODY                                                   \
  }
#define UNIMRI_DECLARE_LOSS_KERNELS(ns) UNIMRI_LOSS_KERNELS(ns, ;)
UNIMRI_DECLARE_LOSS_KERNELS(base)
UNIMRI_DECLARE_LOSS_KERNELS(avx2)
UNIMRI_DECLARE_LOSS_KERNELS(avx512)

}  // namespace unimri
