// The layer-norm GRU's two loops over time (rnnkit.cells.ln_gru), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/ln_gru.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is one
// GEMM and one pass over each row. In particular (n the active rows of a step):
//   * forward: rzn (T, B, 3H) holds LN_ih(W_ih x_t) + shifts in its r, z blocks and 0 in its n
//     block; n (T, B, H) holds 2 xn. A step writes a = W_hh h_{t-1}, turns rzn's r, z blocks
//     into the gates and its n block into 2 hn (LN_hh's gain and shift arrive with n's block
//     doubled: tanh(v) = 2 sigmoid(2v) - 1), n into n_t and y into h_t; stats (2, T, B) gets
//     LN_hh's mean and 1/sigma.
//   * backward: R (T, B, 3H) holds the factors [dr~, dz~, dn~ r] per unit dh_t and becomes D,
//     their product with dh_t; g (T, B, H) holds dL/dy_t and accumulates dh_t in place; da gets
//     LN_hh's backward of D. z is read from rzn's z block.

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& rzn, at::Tensor& n_buf, at::Tensor& a_buf, at::Tensor& y_buf, const at::Tensor& h0,
                  const at::Tensor& w_hh_t, const at::Tensor& g_hh, const at::Tensor& s_hh, at::IntArrayRef bs,
                  at::Tensor& stats, double eps) {
  const int64_t T_ = rzn.size(0), B = rzn.size(1), G3 = rzn.size(2), H = G3 / 3;
  T *rznp = rzn.data_ptr<T>(), *np = n_buf.data_ptr<T>(), *ap = a_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  T* st = stats.data_ptr<T>();
  const T *ghh = g_hh.data_ptr<T>(), *shh = s_hh.data_ptr<T>(), *h0p = h0.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    const T* hp = t > 0 ? yp + (t - 1) * B * H : h0p;  // h_{t-1}, rows first
    W.gemm(n, hp, H, ap + t * B * G3, G3, nullptr, 0);  // a = W_hh h_{t-1}
    for_rows(n, G3, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T* a = ap + row * G3;
      T *G = rznp + row * G3, *nn = np + row * H, *y = yp + row * H;
      const T* h = hp + r * H;
      const Moments<T> m = moments(a, G3, eps);
#pragma omp simd
      for (int64_t j = 0; j < G3; ++j) G[j] += (a[j] - m.mean) * m.rstd * ghh[j] + shh[j];
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) G[j] = T(1) / (T(1) + exp_(-G[j]));  // r, z
      const T *rg = G, *z = G + H, *hn = G + 2 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T v = nn[j] + rg[j] * hn[j];  // 2 (xn + r hn)
        const T nt = tanh_of_doubled(v);
        nn[j] = nt;
        y[j] = nt + z[j] * (h[j] - nt);  // (1 - z) n + z h
      }
      st[row] = m.mean;
      st[T_ * B + row] = m.rstd;
    });
  }
}

template <typename T>
void backward_impl(at::Tensor& R, at::Tensor& g, const at::Tensor& rzn, const at::Tensor& a_buf,
                   const at::Tensor& stats, const at::Tensor& w_hh, const at::Tensor& g_hh, at::IntArrayRef bs,
                   at::Tensor& da) {
  const int64_t T_ = R.size(0), B = R.size(1), G3 = R.size(2), H = G3 / 3;
  T *Rp = R.data_ptr<T>(), *gp = g.data_ptr<T>(), *dap = da.data_ptr<T>();
  const T *rznp = rzn.data_ptr<T>(), *ap = a_buf.data_ptr<T>(), *st = stats.data_ptr<T>(), *ghh = g_hh.data_ptr<T>();
  const Packed<T> W(w_hh);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    for_rows(n, G3, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T *dh = gp + row * H, *a = ap + row * G3, *z = rznp + row * G3 + H;
      T *D = Rp + row * G3, *dar = dap + row * G3;
      const Moments<T> m{st[row], st[T_ * B + row]};
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {  // [dr~, dz~, dn~ r] at LN_hh's output
        D[j] *= dh[j];
        D[H + j] *= dh[j];
        D[2 * H + j] *= dh[j];
      }
      const auto [s1, s2] = ln_sums(D, a, ghh, m, G3);
#pragma omp simd
      for (int64_t j = 0; j < G3; ++j) dar[j] = m.rstd * (D[j] * ghh[j] - s1 - (a[j] - m.mean) * m.rstd * s2);
      if (t > 0) {
        T* prev = gp + (row - B) * H;  // dh_{t-1} += dh_t z_t (+ da_t W_hh below)
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) prev[j] += dh[j] * z[j];
      }
    });
    if (t > 0) {  // dh_{t-1} += da_t W_hh
      T* prev = gp + (t - 1) * B * H;
      W.gemm(n, dap + t * B * G3, G3, prev, H, prev, H);
    }
  }
}

void ln_gru_forward(at::Tensor rzn, at::Tensor n, at::Tensor a, at::Tensor y, const at::Tensor& h0,
                    const at::Tensor& w_hh_t, const at::Tensor& g_hh, const at::Tensor& s_hh,
                    at::IntArrayRef batch_sizes, at::Tensor stats, double eps) {
  check_buffers("rnnkit ln_gru_forward", rzn, n, a, y, h0, w_hh_t, g_hh, s_hh, stats);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(rzn.scalar_type(), "ln_gru_forward", [&] {
    forward_impl<scalar_t>(rzn, n, a, y, h0, w_hh_t, g_hh, s_hh, batch_sizes, stats, eps);
  });
}

void ln_gru_backward(at::Tensor R, at::Tensor g, const at::Tensor& rzn, const at::Tensor& a,
                     const at::Tensor& stats, const at::Tensor& w_hh, const at::Tensor& g_hh,
                     at::IntArrayRef batch_sizes, at::Tensor da) {
  check_buffers("rnnkit ln_gru_backward", R, g, rzn, a, stats, w_hh, g_hh, da);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(R.scalar_type(), "ln_gru_backward",
                             [&] { backward_impl<scalar_t>(R, g, rzn, a, stats, w_hh, g_hh, batch_sizes, da); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "ln_gru_forward(Tensor(a!) rzn, Tensor(b!) n, Tensor(c!) a, Tensor(d!) y, Tensor h0, Tensor w_hh_t, "
      "Tensor g_hh, Tensor s_hh, int[] batch_sizes, Tensor(e!) stats, float eps) -> ()",
      &ln_gru_forward);
  m.def(
      "ln_gru_backward(Tensor(a!) R, Tensor(b!) g, Tensor rzn, Tensor a, Tensor stats, Tensor w_hh, Tensor g_hh, "
      "int[] batch_sizes, Tensor(c!) da) -> ()",
      &ln_gru_backward);
}
