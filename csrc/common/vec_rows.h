// Row and vector conversions between a tensor's dtype and its accumulation type acc_t, and
// horizontal sums, shared by the vectorised CPU kernels. Included by each kernel header that
// uses them, inside the variant namespace that kernels_<variant>.cpp opens (so at::vec has that
// variant's width); #pragma once keeps one copy per variant translation unit.
#pragma once

namespace {

using at::vec::Vectorized;

// dst[0, n) = src[0, n) as acc_t, zero up to the next multiple of the vector width.
template <typename scalar_t, typename acc_t>
void load_row(const scalar_t* src, acc_t* dst, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else {
    constexpr int64_t V = Vectorized<scalar_t>::size();  // 2 float vectors per reduced vector
    for (int64_t j = 0; j < n; j += V) {
      const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(
          Vectorized<scalar_t>::loadu(src + j, static_cast<int>(std::min<int64_t>(V, n - j))));
      lo.store(dst + j);
      hi.store(dst + j + Vec::size());
    }
  }
  const int64_t padded = (n + Vec::size() - 1) / Vec::size() * Vec::size();
  std::fill(dst + n, dst + padded, acc_t(0));
}

template <typename scalar_t, typename acc_t>
void store_row(const acc_t* src, scalar_t* dst, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::copy(src, src + n, dst);
  } else {
    constexpr int64_t V = Vectorized<scalar_t>::size();
    for (int64_t j = 0; j < n; j += V) {
      const Vectorized<scalar_t> out =
          at::vec::convert_from_float<scalar_t>(Vec::loadu(src + j), Vec::loadu(src + j + Vec::size()));
      out.store(dst + j, static_cast<int>(std::min<int64_t>(V, n - j)));
    }
  }
}

// Vec::size() values (fewer at a tail: the rest read as 0) as acc_t.
template <typename scalar_t, typename acc_t>
Vectorized<acc_t> load_vec(const scalar_t* src, int64_t count) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return count >= Vec::size() ? Vec::loadu(src) : Vec::loadu(src, static_cast<int>(count));
  } else {
    Vec out;
    if (count >= Vec::size()) {
      at::vec::load_to_float<scalar_t>(src, out);
    } else {
      scalar_t tmp[Vec::size()] = {};
      std::copy(src, src + count, tmp);
      at::vec::load_to_float<scalar_t>(tmp, out);
    }
    return out;
  }
}

template <typename scalar_t, typename acc_t>
void store_vec(const Vectorized<acc_t>& v, scalar_t* dst, int64_t count) {
  using Vec = Vectorized<acc_t>;
  const int n = static_cast<int>(std::min<int64_t>(count, Vec::size()));
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    v.store(dst, n);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(dst, n);
  }
}

// Sum of the lanes in float64, lane after lane.
template <typename acc_t>
double vec_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t lanes[Vectorized<acc_t>::size()];
  v.store(lanes);
  double s = 0;
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) s += lanes[i];
  return s;
}

// Sum of the lanes in acc_t (ATen's reduction order).
template <typename acc_t>
acc_t hsum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](const Vectorized<acc_t>& x, const Vectorized<acc_t>& y) { return x + y; },
                                        v);
}

}  // namespace
