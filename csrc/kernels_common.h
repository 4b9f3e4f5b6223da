// Shared head of kernels_<variant>.cpp: the headers every kernel body needs. The variant file
// sets CPU_CAPABILITY (the at::vec namespace, one per variant so nothing collides) and, for
// x86 variants, the target ISA before including this. No include guard on purpose.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_variant.h"
#include "unified_focal_loss.h"
