// The GRU's two loops over time in torch's form (reset_after=True; rnnkit.cells.gru's
// GRUResetAfter), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/gru.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is one
// GEMM and one pass over each row. In particular (n the active rows of a step):
//   * forward: a (T, B, 3H) holds the input projection in its r, z blocks and 2 b_hn in its n
//     block; n (T, B, H) holds 2 (W_in x_t + b_in); w_hh_t (H, 3H) is W_hh's transpose with n's
//     columns doubled (tanh(v) = 2 sigmoid(2v) - 1). A step adds h_{t-1} W_hh^T into a, turns
//     its r, z blocks into the gates (its n block is then 2 a_t), and writes n_t and y_t = h_t.
//   * backward: A (T, B, 4H) holds the factors [n, r, z, n r] per unit dh_t and becomes D, their
//     product with dh_t; g (T, B, H) holds dL/dy_t and accumulates dh_t in place; z is read from
//     a's z block; w_hh (3H, H).

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& a_buf, at::Tensor& n_buf, at::Tensor& y_buf, const at::Tensor& h0,
                  const at::Tensor& w_hh_t, at::IntArrayRef bs) {
  const int64_t T_ = a_buf.size(0), B = a_buf.size(1), G3 = a_buf.size(2), H = G3 / 3;
  T *ap = a_buf.data_ptr<T>(), *np = n_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    const T* hp = t > 0 ? yp + (t - 1) * B * H : h0p;
    T* a_t = ap + t * B * G3;
    W.gemm(n, hp, H, a_t, G3, a_t, G3);  // a_t += h_{t-1} W_hh^T
    for_rows(n, G3, [&](int64_t r) {
      const int64_t row = t * B + r;
      T *a = ap + row * G3, *nn = np + row * H, *y = yp + row * H;
      const T* h = hp + r * H;
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) a[j] = T(1) / (T(1) + exp_(-a[j]));  // r, z
      const T *rg = a, *z = a + H, *an = a + 2 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T v = nn[j] + rg[j] * an[j];  // 2 (W_in x + b_in + r a)
        const T nt = tanh_of_doubled(v);
        nn[j] = nt;
        y[j] = nt + z[j] * (h[j] - nt);  // (1 - z) n + z h
      }
    });
  }
}

template <typename T>
void backward_impl(at::Tensor& A, at::Tensor& g, const at::Tensor& a_buf, const at::Tensor& w_hh,
                   at::IntArrayRef bs) {
  const int64_t T_ = A.size(0), B = A.size(1), G4 = A.size(2), H = G4 / 4;
  T *Ap = A.data_ptr<T>(), *gp = g.data_ptr<T>();
  const T* ap = a_buf.data_ptr<T>();
  const Packed<T> W(w_hh);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    for_rows(n, G4, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T *dh = gp + row * H, *z = ap + row * 3 * H + H;
      T* D = Ap + row * G4;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {  // [dn~, dr~, dz~, dn~ r]
        D[j] *= dh[j];
        D[H + j] *= dh[j];
        D[2 * H + j] *= dh[j];
        D[3 * H + j] *= dh[j];
      }
      if (t > 0) {
        T* prev = gp + (row - B) * H;  // dh_{t-1} += dh_t z_t (+ [dr~, dz~, dn~ r] W_hh below)
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) prev[j] += dh[j] * z[j];
      }
    });
    if (t > 0) {  // dh_{t-1} += [dr~, dz~, dn~ r]_t W_hh: D's last three blocks, rows G4 apart
      T* prev = gp + (t - 1) * B * H;
      W.gemm(n, Ap + t * B * G4 + H, G4, prev, H, prev, H);
    }
  }
}

void gru_forward(at::Tensor a, at::Tensor n, at::Tensor y, const at::Tensor& h0, const at::Tensor& w_hh_t,
                 at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit gru_forward", a, n, y, h0, w_hh_t);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gru_forward",
                             [&] { forward_impl<scalar_t>(a, n, y, h0, w_hh_t, batch_sizes); });
}

void gru_backward(at::Tensor A, at::Tensor g, const at::Tensor& a, const at::Tensor& w_hh,
                  at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit gru_backward", A, g, a, w_hh);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gru_backward",
                             [&] { backward_impl<scalar_t>(A, g, a, w_hh, batch_sizes); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("gru_forward(Tensor(a!) a, Tensor(b!) n, Tensor(c!) y, Tensor h0, Tensor w_hh_t, int[] batch_sizes) -> ()",
        &gru_forward);
  m.def("gru_backward(Tensor(a!) A, Tensor(b!) g, Tensor a, Tensor w_hh, int[] batch_sizes) -> ()", &gru_backward);
}
