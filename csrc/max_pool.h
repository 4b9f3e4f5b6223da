// Interface between the 2x max-pooling ops (max_pool.cpp) and their kernels (max_pool_kernel.h,
// compiled once per CPU variant by kernels_<variant>.cpp).
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace unimri {

// x is (planes, D, H, W) contiguous (D = 1 for 2D pooling, whose window is then 1 x 2 x 2);
// the output is (planes, Do, Ho, Wo) with Do = D / 2 (3D) or 1 (2D), Ho = H / 2, Wo = W / 2.
struct MaxPoolArgs {
  int64_t planes, D, H, W;
  bool pool_depth;  // 3D pooling: the window spans two depth slices
  c10::ScalarType dtype;

  int64_t Do() const { return pool_depth ? D / 2 : D; }
  int64_t Ho() const { return H / 2; }
  int64_t Wo() const { return W / 2; }
  int64_t window_rows() const { return pool_depth ? 4 : 2; }
};

// Per variant (namespaces base, avx2, avx512). forward: out = the maximum of each window (NaN if
// the window holds one). backward: grad_x is grad_out at the element nn.MaxPool picks (the
// first maximum in (d, h, w) order; the last NaN if the window holds NaN) and 0 elsewhere.
#define UNIMRI_MAX_POOL_KERNELS(ns, BODY)                                                          \
  namespace ns {                                                                                     \
  void max_pool2x_forward(const MaxPoolArgs& a, const void* x, void* out) BODY                           \
  void max_pool2x_backward(const MaxPoolArgs& a, const void* grad_out, const void* x, void* grad_x) BODY \
  }
#define UNIMRI_DECLARE_MAX_POOL_KERNELS(ns) UNIMRI_MAX_POOL_KERNELS(ns, ;)
UNIMRI_DECLARE_MAX_POOL_KERNELS(base)
UNIMRI_DECLARE_MAX_POOL_KERNELS(avx2)
UNIMRI_DECLARE_MAX_POOL_KERNELS(avx512)

}  // namespace unimri
