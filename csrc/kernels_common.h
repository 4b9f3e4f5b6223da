// Shared head of kernels_<variant>.cpp: the headers every kernel body needs. The variant file
// sets CPU_CAPABILITY (the at::vec namespace, one per variant so nothing collides) and, for
// x86 variants, the target ISA before including this. No include guard on purpose.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>


#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention_gate.h"
#include "batch_norm_relu.h"
#include "cpu_variant.h"
#include "max_pool.h"
#include "output_pool.h"
#include "pointwise_conv.h"
#include "sas_head.h"
#include "tile_gemm.h"
#include "unified_focal_loss.h"
