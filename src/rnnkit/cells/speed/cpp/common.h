// What the compiled loops share (rnnkit/cells/_native.py says why they exist): vectorised exp,
// row moments and the layer-norm backward's sums, views over raw memory.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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
inline T sigmoid(T v) {
  return T(1) / (T(1) + exp_(-v));
}

// tanh from a sigmoid, tanh(x) = 2 sigmoid(2x) - 1: it vectorises in `omp simd` loops through the
// vector exp, where std::tanh does not (and costs several sigmoids). `tanh_of_doubled` takes
// v = 2x, as the kernels' pre-activations arrive from weights doubled by `speed.tanh.Tanh`.
template <typename T>
inline T tanh_of_doubled(T v) {
  return T(2) / (T(1) + exp_(-v)) - T(1);
}

template <typename T>
inline T tanh_via_sigmoid(T x) {
  return tanh_of_doubled(T(2) * x);
}

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

// A step's recurrent product, C = init + A W with the same W (K, N) at every step of a call: W is
// packed once a call into column panels of NR = two vectors (panel p holds W[:, p NR : (p+1) NR]
// row after row, zero padded), and each tile of MR rows x NR columns of C is accumulated in
// registers over all of K, one row of the panel and MR broadcasts of A per k. Why not torch.mm:
// MKL, which it calls, runs these skinny products (a few dozen rows) at 50-75% of this machine's
// FMA rate, and oneDNN's linear adds a primitive's setup to every call; this kernel is level with
// torch.addmm at one row and 1.3-2x faster from 16 rows up (`python benchmarks/bench_gemm.py`,
// through the op in gemm.cpp; tests/test_native.py checks it against torch.addmm). Each
// element sums over k in order 0..K-1 whatever the threads, so results do not depend on them.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;  // AVX2 and below
#endif

// GCC drops a vector_size attribute on a dependent alias (`using V = T __attribute__(...)`), not
// on a typedef inside a template
template <typename T>
struct VectorOf {
  typedef T type __attribute__((vector_size(kVectorBytes)));
};

template <typename T>
class Packed {
 public:
  static constexpr int64_t L = kVectorBytes / sizeof(T), NR = 2 * L;
  // rows of a tile: 2 MR accumulators and 2 panel vectors in 32 (AVX-512) or 16 registers
  static constexpr int64_t MR = kVectorBytes == 64 ? 8 : 6;
  using Vec = typename VectorOf<T>::type;
  static_assert(sizeof(Vec) == kVectorBytes, "a vector of L elements");

  explicit Packed(const at::Tensor& w) : K_(w.size(0)), N_(w.size(1)), P_((N_ + NR - 1) / NR) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "rnnkit: a packed weight must be a contiguous matrix");
    buf_ = at::zeros({P_, K_, NR}, w.options());
    const T* src = w.data_ptr<T>();
    T* dst = buf_.data_ptr<T>();
    for (int64_t p = 0; p < P_; ++p) {
      const int64_t j0 = p * NR, width = std::min<int64_t>(NR, N_ - j0);
      for (int64_t k = 0; k < K_; ++k) std::copy_n(src + k * N_ + j0, width, dst + (p * K_ + k) * NR);
    }
  }

  // C (n x N, rows ldc apart) = init (rows ldi apart; nullptr for 0; may be C) + A (n x K, rows
  // lda apart) W. Split over torch's threads by panels when the product is large enough.
  void gemm(int64_t n, const T* A, int64_t lda, T* C, int64_t ldc, const T* init, int64_t ldi) const {
    if (n <= 0) return;
    const int64_t grain = n * K_ * N_ < (int64_t(1) << 15) ? P_ : 1;
    at::parallel_for(0, P_, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t j0 = p * NR, width = std::min<int64_t>(NR, N_ - j0);
        const T* panel = buf_.data_ptr<T>() + p * K_ * NR;
        for (int64_t r = 0; r < n; r += MR) {
          const T* a = A + r * lda;
          T* c = C + r * ldc + j0;
          const T* in = init == nullptr ? nullptr : init + r * ldi + j0;
          switch (std::min<int64_t>(MR, n - r)) {  // a full tile, or one of the rows left
            case 8: tile<8>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 7: tile<7>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 6: tile<6>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 5: tile<5>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 4: tile<4>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 3: tile<3>(a, lda, panel, c, ldc, in, ldi, width); break;
            case 2: tile<2>(a, lda, panel, c, ldc, in, ldi, width); break;
            default: tile<1>(a, lda, panel, c, ldc, in, ldi, width); break;
          }
        }
      }
    });
  }

 private:
  template <int M>
  void tile(const T* A, int64_t lda, const T* panel, T* C, int64_t ldc, const T* init, int64_t ldi,
            int64_t width) const {
    Vec lo[M], hi[M];
    T row[NR];  // a partial tile's rows go through here (constant-size copies inline; width's do not)
    for (int r = 0; r < M; ++r) {  // the accumulators start from init's rows (or 0)
      if (init == nullptr) {
        lo[r] = hi[r] = Vec{};
      } else if (width == NR) {
        std::memcpy(&lo[r], init + r * ldi, sizeof(Vec));
        std::memcpy(&hi[r], init + r * ldi + L, sizeof(Vec));
      } else {
        std::fill_n(row, NR, T(0));
        std::copy_n(init + r * ldi, width, row);
        std::memcpy(&lo[r], row, sizeof(Vec));
        std::memcpy(&hi[r], row + L, sizeof(Vec));
      }
    }
    for (int64_t k = 0; k < K_; ++k) {
      Vec b0, b1;
      std::memcpy(&b0, panel + k * NR, sizeof(Vec));
      std::memcpy(&b1, panel + k * NR + L, sizeof(Vec));
#pragma GCC unroll 8
      for (int r = 0; r < M; ++r) {
        const T a = A[r * lda + k];
        lo[r] += a * b0;
        hi[r] += a * b1;
      }
    }
    for (int r = 0; r < M; ++r) {
      if (width == NR) {
        std::memcpy(C + r * ldc, &lo[r], sizeof(Vec));
        std::memcpy(C + r * ldc + L, &hi[r], sizeof(Vec));
      } else {
        std::memcpy(row, &lo[r], sizeof(Vec));
        std::memcpy(row + L, &hi[r], sizeof(Vec));
        std::copy_n(row, width, C + r * ldc);
      }
    }
  }

  int64_t K_, N_, P_;
  at::Tensor buf_;
};

inline int64_t rows_at(at::IntArrayRef bs, int64_t t, int64_t B) { return bs.empty() ? B : bs[t]; }

template <typename... Ts>
void check_buffers(const char* name, const Ts&... ts) {
  const bool ok = ((ts.device().is_cpu() && ts.is_contiguous()) && ...);
  TORCH_CHECK(ok, name, ": every buffer must be a contiguous CPU tensor");
}

}  // namespace rnnkit_native
