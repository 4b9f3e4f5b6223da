// Recycled memory for the large CPU outputs and buffers of unimri's kernels.
//
// On the virtual machines this project runs on, touching a fresh page costs about six times
// writing a reused one (measured: 52 ms to fault in and fill 64 MB, 8 ms to refill it), and
// glibc returns blocks above its mmap threshold (at most 32 MB) to the kernel on free. A
// training step allocates the same full-resolution outputs every step, so each step paid the
// faults again. pooled_empty() keeps the blocks of freed outputs (>= 1 MiB) and hands them out
// again for the same rounded size, like PyTorch's CUDA caching allocator.
//
// The pool holds at most UNIMRI_CPU_POOL_MB megabytes of free blocks (read once; default
// 2048 or an eighth of the machine's memory if less, 0 disables pooling); blocks freed
// beyond that go back to the system. A forked child starts with an empty pool.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace unimri {

// An uninitialised contiguous tensor of `sizes` (CPU, options' dtype); outputs of at least
// 1 MiB come from the pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// {free bytes held, blocks held, hits, misses} since the process started or the last release.
std::vector<int64_t> cpu_pool_stats();

// Gives every free block back to the system.
void cpu_pool_release();

}  // namespace unimri
