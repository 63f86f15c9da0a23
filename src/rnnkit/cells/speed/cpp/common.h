// What the compiled loops share (rnnkit/cells/_native.py says why they exist): vectorised exp,
// row moments and the layer-norm backward's sums, views over raw memory.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#if defined(__GLIBC__) && defined(__x86_64__)
// glibc's vector variants of exp (libmvec), so that `omp simd` loops vectorise their exps; the
// declaration is what math.h gives under -ffast-math, which these files do not want.
extern "C" {
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
}
#endif

namespace rnnkit_native {

inline float exp_(float v) { return expf(v); }
inline double exp_(double v) { return exp(v); }

template <typename T>
struct Moments {
  T mean, rstd;
};

// mean and 1/sqrt(biased var + eps) of v[0:n], in two passes as torch's layer norm.
template <typename T>
inline Moments<T> moments(const T* v, int64_t n, double eps) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += v[j];
  const T mean = s / T(n);
  T q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t j = 0; j < n; ++j) q += (v[j] - mean) * (v[j] - mean);
  return {mean, T(1) / std::sqrt(q / T(n) + T(eps))};
}

// The two sums of the LN backward (rnnkit/cells/_layernorm.py): mean(dy gain) and
// mean(dy gain vhat), vhat = (v - mean) / sigma.
template <typename T>
inline std::pair<T, T> ln_sums(const T* dy, const T* v, const T* gain, Moments<T> m, int64_t n) {
  T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const T gy = dy[j] * gain[j];
    s1 += gy;
    s2 += gy * (v[j] - m.mean) * m.rstd;
  }
  return {s1 / T(n), s2 / T(n)};
}

// rows x width matrix over memory the caller's tensor owns (a block of a record, or rows of a
// buffer): one TensorImpl, where narrow + view would make three.
template <typename T>
inline at::Tensor matrix(T* p, int64_t rows, int64_t width, const at::TensorOptions& opt) {
  return at::from_blob(p, {rows, width}, opt);
}

// Runs f(r) for the rows r of a step, split over torch's intra-op threads when the step is large
// enough to repay waking them (at B=16, 4H=256 it is not: one thread; at B=64, 4H=1024, two).
constexpr int64_t kGrainElems = 1 << 14;
template <typename F>
inline void for_rows(int64_t n, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(width, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

inline int64_t rows_at(at::IntArrayRef bs, int64_t t, int64_t B) { return bs.empty() ? B : bs[t]; }

template <typename... Ts>
void check_buffers(const char* name, const Ts&... ts) {
  const bool ok = ((ts.device().is_cpu() && ts.is_contiguous()) && ...);
  TORCH_CHECK(ok, name, ": every buffer must be a contiguous CPU tensor");
}

}  // namespace rnnkit_native
