// The pool of recycled CPU output blocks (see output_pool.h).
#include "output_pool.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <string>

namespace unimri {
namespace {

constexpr size_t kMinPooled = size_t(1) << 20;
constexpr size_t kGranule = size_t(64) << 10;  // sizes are rounded up to 64 KiB
constexpr size_t kAlign = 64;

// Default cap: 2 GiB, or an eighth of the machine's memory if that is less.
size_t default_limit() {
  size_t limit = size_t(2048) << 20;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) limit = std::min(limit, static_cast<size_t>(pages) * static_cast<size_t>(page) / 8);
#endif
  return limit;
}

size_t limit_from_env() {
  const char* env = std::getenv("UNIMRI_CPU_POOL_MB");
  if (env == nullptr || *env == '\0') return default_limit();
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && mb >= 0,
                    "UNIMRI_CPU_POOL_MB must be a whole number of megabytes >= 0, got '", env, "'");
  return static_cast<size_t>(mb) << 20;
}

class Pool {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // the block freed last among those of this size: its pages are the likeliest in cache
      auto it = free_.upper_bound(bytes);
      if (it != free_.begin() && std::prev(it)->first == bytes) {
        it = std::prev(it);
        void* p = it->second;
        free_.erase(it);
        held_ -= bytes;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    if (p == nullptr) {
      release();  // the cached blocks may be what the system is missing
      p = std::aligned_alloc(kAlign, bytes);
    }
    TORCH_CHECK(p != nullptr, "unimri: out of memory allocating ", bytes, " bytes");
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (held_ + bytes <= limit_) {
        free_.emplace(bytes, p);
        held_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  void release() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      held_ = 0;
      hits_ = misses_ = 0;
    }
    for (auto& kv : blocks) std::free(kv.second);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(held_), static_cast<int64_t>(free_.size()), hits_, misses_};
  }

  bool enabled() const { return limit_ > 0; }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t held_ = 0;
  size_t limit_ = limit_from_env();
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks.
// A forked child (e.g. a DataLoader worker) starts with a fresh pool: the parent's mutex may
// have been held by another thread at the fork, and its free blocks stay the parent's.
Pool* instance = nullptr;
std::once_flag created;

void fresh_pool_in_child() { instance = new Pool(); }

Pool& pool() {
  std::call_once(created, [] {
    instance = new Pool();
    pthread_atfork(nullptr, nullptr, fresh_pool_in_child);
  });
  return *instance;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t n : sizes) numel *= n;
  const size_t raw = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (raw < kMinPooled || !pool().enabled()) return at::empty(sizes, options);
  const size_t bytes = (raw + kGranule - 1) / kGranule * kGranule;
  void* data = pool().take(bytes);
  return at::from_blob(data, sizes, [bytes](void* p) { pool().give(p, bytes); },
                       options.device(at::kCPU));
}

std::vector<int64_t> cpu_pool_stats() { return pool().stats(); }

void cpu_pool_release() { pool().release(); }

}  // namespace unimri
