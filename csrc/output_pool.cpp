// The pool of recycled CPU output blocks (see output_pool.h).
#include "output_pool.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace unimri {
namespace {

constexpr size_t kMinPooled = size_t(1) << 20;
constexpr size_t kGranule = size_t(64) << 10;  // sizes are rounded up to 64 KiB
constexpr size_t kAlign = 64;

size_t limit_from_env() {
  const char* env = std::getenv("UNIMRI_CPU_POOL_MB");
  if (env == nullptr || *env == '\0') return size_t(2048) << 20;
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
      auto it = free_.find(bytes);
      if (it != free_.end()) {
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
Pool& pool() {
  static Pool* instance = new Pool();
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
