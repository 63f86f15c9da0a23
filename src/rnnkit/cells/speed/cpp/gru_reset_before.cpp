// The GRU's two loops over time in the paper's form (reset_after=False; rnnkit.cells.gru's
// GRUResetBefore), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/gru.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is two
// GEMMs (W_h(r,z) h_{t-1}, then W_hn u_t with u_t = r_t h_{t-1}) and two passes over each row, as
// the MGU's (mgu.cpp). In particular (n the active rows of a step):
//   * forward: gates (T, B, 3H) holds the input projection (all biases added, n's block doubled:
//     tanh(v) = 2 sigmoid(2v) - 1) and becomes r, z, n; u gets r_t h_{t-1}, y gets h_t; w_rz_t
//     (H, 2H) and w_hn_t (H, H) are W_h(r,z)'s and W_hn's transposes, W_hn's doubled.
//   * backward: g (T, B, H) holds dL/dy_t and accumulates dh_t in place; D (T, B, 3H) gets
//     [dr~, dz~, dn~]; du0 (B, H) leaves with du of the first step, for dL/dh_0.

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& gates, at::Tensor& u_buf, at::Tensor& y_buf, const at::Tensor& h0,
                  const at::Tensor& w_rz_t, const at::Tensor& w_hn_t, at::IntArrayRef bs) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2), G3 = 3 * H;
  T *Gp = gates.data_ptr<T>(), *up = u_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const Packed<T> Wrz(w_rz_t), Wn(w_hn_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B), at = t * B * H;
    const T* hp = t > 0 ? yp + at - B * H : h0p;
    T* G_t = Gp + t * B * G3;
    Wrz.gemm(n, hp, H, G_t, G3, G_t, G3);  // [r~, z~] += h_{t-1} W_h(r,z)^T
    for_rows(n, G3, [&](int64_t r) {
      T *G = G_t + r * G3, *u = up + at + r * H;
      const T* h = hp + r * H;
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) G[j] = sigmoid(G[j]);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) u[j] = G[j] * h[j];
    });
    Wn.gemm(n, up + at, H, G_t + 2 * H, G3, G_t + 2 * H, G3);  // 2 n~ += u_t (2 W_hn)^T
    for_rows(n, G3, [&](int64_t r) {
      T *G = G_t + r * G3, *y = yp + at + r * H;
      const T* h = hp + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T nn = tanh_of_doubled(G[2 * H + j]);
        G[2 * H + j] = nn;
        y[j] = nn + G[H + j] * (h[j] - nn);  // (1 - z) n + z h
      }
    });
  }
}

template <typename T>
void backward_impl(at::Tensor& g, const at::Tensor& gates, const at::Tensor& y_buf, const at::Tensor& h0,
                   const at::Tensor& w_rz, const at::Tensor& w_hn, at::IntArrayRef bs, at::Tensor& D_buf,
                   at::Tensor& du0) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2), G3 = 3 * H;
  T *gp = g.data_ptr<T>(), *Dp = D_buf.data_ptr<T>();
  const T *Gp = gates.data_ptr<T>(), *yp = y_buf.data_ptr<T>(), *h0p = h0.data_ptr<T>();
  const Packed<T> Wrz(w_rz), Wn(w_hn);
  at::Tensor du_buf = at::empty({B, H}, y_buf.options());
  T* du = du_buf.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B), at = t * B * H;
    const T* hp = t > 0 ? yp + at - B * H : h0p;
    T* D_t = Dp + t * B * G3;
    const T* G_t = Gp + t * B * G3;
    for_rows(n, G3, [&](int64_t r) {  // dz~, dn~
      const T *dh = gp + at + r * H, *G = G_t + r * G3, *h = hp + r * H;
      T* d = D_t + r * G3;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T z = G[H + j], nn = G[2 * H + j];
        d[H + j] = dh[j] * (h[j] - nn) * z * (T(1) - z);
        d[2 * H + j] = dh[j] * (T(1) - z) * (T(1) - nn * nn);
      }
    });
    Wn.gemm(n, D_t + 2 * H, G3, du, H, nullptr, 0);  // du = dn~ W_hn
    for_rows(n, G3, [&](int64_t r) {
      const T *dh = gp + at + r * H, *G = G_t + r * G3, *h = hp + r * H, *dq = du + r * H;
      T* d = D_t + r * G3;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d[j] = dq[j] * h[j] * G[j] * (T(1) - G[j]);  // dr~
      if (t > 0) {
        T* prev = gp + at - B * H + r * H;  // dh_{t-1} += dh_t z_t + du_t r_t (+ [dr~, dz~] W_h(r,z))
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) prev[j] += dh[j] * G[H + j] + dq[j] * G[j];
      }
    });
    if (t > 0) {
      T* prev = gp + at - B * H;
      Wrz.gemm(n, D_t, G3, prev, H, prev, H);
    } else {
      std::copy_n(du, n * H, du0.data_ptr<T>());
    }
  }
}

void forward(at::Tensor gates, at::Tensor u, at::Tensor y, const at::Tensor& h0, const at::Tensor& w_rz_t,
             const at::Tensor& w_hn_t, at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit gru_reset_before_forward", gates, u, y, h0, w_rz_t, w_hn_t);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "gru_reset_before_forward",
                             [&] { forward_impl<scalar_t>(gates, u, y, h0, w_rz_t, w_hn_t, batch_sizes); });
}

void backward(at::Tensor g, const at::Tensor& gates, const at::Tensor& y, const at::Tensor& h0, const at::Tensor& w_rz,
              const at::Tensor& w_hn, at::IntArrayRef batch_sizes, at::Tensor D, at::Tensor du0) {
  check_buffers("rnnkit gru_reset_before_backward", g, gates, y, h0, w_rz, w_hn, D, du0);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "gru_reset_before_backward",
                             [&] { backward_impl<scalar_t>(g, gates, y, h0, w_rz, w_hn, batch_sizes, D, du0); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "gru_reset_before_forward(Tensor(a!) gates, Tensor(b!) u, Tensor(c!) y, Tensor h0, Tensor w_rz_t, "
      "Tensor w_hn_t, int[] batch_sizes) -> ()",
      &forward);
  m.def(
      "gru_reset_before_backward(Tensor(a!) g, Tensor gates, Tensor y, Tensor h0, Tensor w_rz, Tensor w_hn, "
      "int[] batch_sizes, Tensor(b!) D, Tensor(c!) du0) -> ()",
      &backward);
}
