// Splitting a row into its even and odd elements and merging them back (the two columns of a
// 2-wide window or patch), shared by the attention gate and max pooling kernels. Included by
// each kernel header that uses them, inside the variant namespace of kernels_<variant>.cpp;
// #pragma once keeps one copy per variant translation unit.
#pragma once

namespace {

using at::vec::Vectorized;

// r0[j] = src[2 j], r1[j] = src[2 j + 1] for j < n, as dst_t. A copy of 16-bit values goes through
// their bit patterns: the compiler vectorises that, not a loop over c10::BFloat16 / c10::Half.
template <typename src_t, typename dst_t>
void deinterleave2(const src_t* src, dst_t* r0, dst_t* r1, int64_t n) {
  if constexpr (std::is_same_v<src_t, dst_t> && sizeof(src_t) == 2) {
    const auto* in = reinterpret_cast<const uint16_t*>(src);
    auto *o0 = reinterpret_cast<uint16_t*>(r0), *o1 = reinterpret_cast<uint16_t*>(r1);
    for (int64_t j = 0; j < n; ++j) {
      o0[j] = in[2 * j];
      o1[j] = in[2 * j + 1];
    }
  } else if constexpr (std::is_same_v<src_t, c10::BFloat16> && std::is_same_v<dst_t, float>) {
    // a bf16 pair read as 32 bits: the even value's float is its low half shifted up, the odd
    // value's float the high half with the low bits cleared
    for (int64_t j = 0; j < n; ++j) {
      uint32_t pair;
      std::memcpy(&pair, src + 2 * j, sizeof(pair));
      const uint32_t even = pair << 16, odd = pair & 0xFFFF0000u;
      std::memcpy(r0 + j, &even, sizeof(float));
      std::memcpy(r1 + j, &odd, sizeof(float));
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      r0[j] = static_cast<dst_t>(src[2 * j]);
      r1[j] = static_cast<dst_t>(src[2 * j + 1]);
    }
  }
}

// out[2 j] = r0[j], out[2 j + 1] = r1[j] for j < n (the inverse of deinterleave2), in a form the
// compiler vectorises (a loop over the two strided stores does not).
template <typename T>
void interleave2(const T* r0, const T* r1, T* out, int64_t n) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  int64_t j = 0;
  for (; j + V <= n; j += V) {
    const auto [lo, hi] = at::vec::interleave2(Vec::loadu(r0 + j), Vec::loadu(r1 + j));
    lo.store(out + 2 * j);
    hi.store(out + 2 * j + V);
  }
  for (; j < n; ++j) {
    out[2 * j] = r0[j];
    out[2 * j + 1] = r1[j];
  }
}

}  // namespace
