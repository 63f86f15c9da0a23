// The minimal gated unit's two loops over time (rnnkit.cells.mgu), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/mgu.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is two
// GEMMs (W_hf h_{t-1}, then W_hn (f_t h_{t-1})) and two passes over each row. In particular
// (n the active rows of a step):
//   * forward: f and n (T, B, H) hold the input projections of f~ and n~ (all biases added, n~'s
//     doubled: tanh(v) = 2 sigmoid(2v) - 1) and become f_t and n_t; fh gets f_t h_{t-1}, y gets
//     h_t; w_hf_t, w_hn_t (H, H) are W_hf's and W_hn's transposes, W_hn's doubled.
//   * backward: g (T, B, H) holds dL/dy_t and accumulates dh_t in place; dG (T, B, 2H) gets
//     [df~, dn~]; dfh0 (B, H) leaves with d(fh) of the first step, for dL/dh_0.

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& f_buf, at::Tensor& n_buf, at::Tensor& fh_buf, at::Tensor& y_buf, const at::Tensor& h0,
                  const at::Tensor& w_hf_t, const at::Tensor& w_hn_t, at::IntArrayRef bs) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2);
  T *fp = f_buf.data_ptr<T>(), *np = n_buf.data_ptr<T>(), *fhp = fh_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const Packed<T> Wf(w_hf_t), Wn(w_hn_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B), at = t * B * H;
    const T* hp = t > 0 ? yp + at - B * H : h0p;
    Wf.gemm(n, hp, H, fp + at, H, fp + at, H);  // f~ += h_{t-1} W_hf^T
    for_rows(n, H, [&](int64_t r) {
      T *f = fp + at + r * H, *fh = fhp + at + r * H;
      const T* h = hp + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        f[j] = sigmoid(f[j]);
        fh[j] = f[j] * h[j];
      }
    });
    Wn.gemm(n, fhp + at, H, np + at, H, np + at, H);  // 2 n~ += (f h_{t-1}) (2 W_hn)^T
    for_rows(n, H, [&](int64_t r) {
      T *nn = np + at + r * H, *y = yp + at + r * H;
      const T *f = fp + at + r * H, *h = hp + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        nn[j] = tanh_of_doubled(nn[j]);
        y[j] = h[j] + f[j] * (nn[j] - h[j]);  // (1 - f) h + f n
      }
    });
  }
}

template <typename T>
void backward_impl(at::Tensor& g, const at::Tensor& f_buf, const at::Tensor& n_buf, const at::Tensor& y_buf,
                   const at::Tensor& h0, const at::Tensor& w_hf, const at::Tensor& w_hn, at::IntArrayRef bs,
                   at::Tensor& dG, at::Tensor& dfh0) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2), G2 = 2 * H;
  T *gp = g.data_ptr<T>(), *dGp = dG.data_ptr<T>();
  const T *fp = f_buf.data_ptr<T>(), *np = n_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>(), *h0p = h0.data_ptr<T>();
  const Packed<T> Wf(w_hf), Wn(w_hn);
  at::Tensor dfh_buf = at::empty({B, H}, y_buf.options());
  T* dfh = dfh_buf.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B), at = t * B * H;
    const T* hp = t > 0 ? yp + at - B * H : h0p;
    T* D = dGp + t * B * G2;
    for_rows(n, H, [&](int64_t r) {  // df~ (its direct part) and dn~
      const T *dh = gp + at + r * H, *f = fp + at + r * H, *nn = np + at + r * H, *h = hp + r * H;
      T* d = D + r * G2;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        d[j] = dh[j] * (nn[j] - h[j]) * f[j] * (T(1) - f[j]);
        d[H + j] = dh[j] * f[j] * (T(1) - nn[j] * nn[j]);
      }
    });
    Wn.gemm(n, D + H, G2, dfh, H, nullptr, 0);  // d(fh) = dn~ W_hn
    for_rows(n, H, [&](int64_t r) {
      const T *dh = gp + at + r * H, *f = fp + at + r * H, *h = hp + r * H, *dq = dfh + r * H;
      T* d = D + r * G2;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d[j] += dq[j] * h[j] * f[j] * (T(1) - f[j]);  // df~ += d(fh) h f (1 - f)
      if (t > 0) {
        T* prev = gp + at - B * H + r * H;  // dh_{t-1} += dh_t (1 - f_t) + d(fh) f_t (+ df~ W_hf below)
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) prev[j] += dh[j] * (T(1) - f[j]) + dq[j] * f[j];
      }
    });
    if (t > 0) {
      T* prev = gp + at - B * H;
      Wf.gemm(n, D, G2, prev, H, prev, H);
    } else {
      std::copy_n(dfh, n * H, dfh0.data_ptr<T>());
    }
  }
}

void mgu_forward(at::Tensor f, at::Tensor n, at::Tensor fh, at::Tensor y, const at::Tensor& h0,
                 const at::Tensor& w_hf_t, const at::Tensor& w_hn_t, at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit mgu_forward", f, n, fh, y, h0, w_hf_t, w_hn_t);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mgu_forward",
                             [&] { forward_impl<scalar_t>(f, n, fh, y, h0, w_hf_t, w_hn_t, batch_sizes); });
}

void mgu_backward(at::Tensor g, const at::Tensor& f, const at::Tensor& n, const at::Tensor& y, const at::Tensor& h0,
                  const at::Tensor& w_hf, const at::Tensor& w_hn, at::IntArrayRef batch_sizes, at::Tensor dG,
                  at::Tensor dfh0) {
  check_buffers("rnnkit mgu_backward", g, f, n, y, h0, w_hf, w_hn, dG, dfh0);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mgu_backward",
                             [&] { backward_impl<scalar_t>(g, f, n, y, h0, w_hf, w_hn, batch_sizes, dG, dfh0); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "mgu_forward(Tensor(a!) f, Tensor(b!) n, Tensor(c!) fh, Tensor(d!) y, Tensor h0, Tensor w_hf_t, "
      "Tensor w_hn_t, int[] batch_sizes) -> ()",
      &mgu_forward);
  m.def(
      "mgu_backward(Tensor(a!) g, Tensor f, Tensor n, Tensor y, Tensor h0, Tensor w_hf, Tensor w_hn, "
      "int[] batch_sizes, Tensor(b!) dG, Tensor(c!) dfh0) -> ()",
      &mgu_backward);
}
