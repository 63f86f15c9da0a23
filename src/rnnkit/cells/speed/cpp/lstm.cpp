// The LSTM's two loops over time (rnnkit.cells.lstm), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/lstm.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is one
// GEMM and one pass over each row. Gate blocks in the kernel's order i, f, o, g. In particular
// (n the active rows of a step):
//   * forward: gates (T, B, 4H) holds W_ih x_t + biases, g~'s block doubled (tanh(v) =
//     2 sigmoid(2v) - 1), and w_hh_t (P, 4H) is W_hh's transpose in that order, g's columns
//     doubled. A step adds h_{t-1} W_hh^T, turns the gates into i, f, o and tanh(g~), and writes
//     c_t, tanh(c_t), m_t and y_t (= m_t, or m_t W_hr^T with a projection: w_hr_t (H, P)).
//     Unlike the Python loop, it keeps g and c at their own scale (no halving after).
//   * backward: g_h (T, B, P) holds dL/dy_t and accumulates dh_t in place; dG (T, B, 4H) gets
//     the pre-activations' gradients; carry (B, H) holds dL/dc_n and leaves with dL/dc_0. The
//     backward's factors are formed in the loop from the kept activations (no (T, B, 4H) buffer).

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& gates, const at::Tensor& w_hh_t, const at::Tensor& h0, const at::Tensor& c0,
                  const std::optional<at::Tensor>& w_hr_t, at::IntArrayRef bs, at::Tensor& c_buf,
                  at::Tensor& tc_buf, at::Tensor& m_buf, at::Tensor& y_buf) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G4 = gates.size(2), H = G4 / 4, P = y_buf.size(2);
  const bool project = w_hr_t.has_value();
  T *Gp = gates.data_ptr<T>(), *cp = c_buf.data_ptr<T>(), *tcp = tc_buf.data_ptr<T>();
  T *mp = m_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const T *h0p = h0.data_ptr<T>(), *c0p = c0.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  std::optional<Packed<T>> W_r;
  if (project) W_r.emplace(*w_hr_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    const T* hp = t > 0 ? yp + (t - 1) * B * P : h0p;
    const T* cprev = t > 0 ? cp + (t - 1) * B * H : c0p;
    T* G_t = Gp + t * B * G4;
    W.gemm(n, hp, P, G_t, G4, G_t, G4);  // G_t += h_{t-1} W_hh^T
    for_rows(n, G4, [&](int64_t r) {
      const int64_t row = t * B + r;
      T* G = Gp + row * G4;
      T *c = cp + row * H, *tc = tcp + row * H, *m = mp + row * H;
      const T* cq = cprev + r * H;
#pragma omp simd
      for (int64_t j = 0; j < G4; ++j) G[j] = T(1) / (T(1) + exp_(-G[j]));
      T *i = G, *f = G + H, *o = G + 2 * H, *g = G + 3 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        g[j] = T(2) * g[j] - T(1);  // tanh(g~)
        const T cj = f[j] * cq[j] + i[j] * g[j];
        c[j] = cj;
        tc[j] = tanh_via_sigmoid(cj);
        m[j] = o[j] * tc[j];
      }
    });
    if (project) W_r->gemm(n, mp + t * B * H, H, yp + t * B * P, P, nullptr, 0);  // y_t = m_t W_hr^T
  }
}

template <typename T>
void backward_impl(const at::Tensor& gates, const at::Tensor& c_buf, const at::Tensor& c0, const at::Tensor& tc_buf,
                   at::Tensor& g_h, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                   at::IntArrayRef bs, at::Tensor& dG, at::Tensor& carry) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G4 = gates.size(2), H = G4 / 4, P = g_h.size(2);
  const bool project = w_hr.has_value();
  const auto opt = gates.options();
  const T *Gp = gates.data_ptr<T>(), *cp = c_buf.data_ptr<T>(), *c0p = c0.data_ptr<T>(), *tcp = tc_buf.data_ptr<T>();
  T *gh = g_h.data_ptr<T>(), *dGp = dG.data_ptr<T>(), *cr = carry.data_ptr<T>();
  at::Tensor dm_buf = project ? at::empty({B, H}, opt) : at::Tensor();
  const Packed<T> W(w_hh);
  std::optional<Packed<T>> W_r;
  if (project) W_r.emplace(*w_hr);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    T* dh = gh + t * B * P;
    if (t < T_ - 1) W.gemm(n, dGp + (t + 1) * B * G4, G4, dh, P, dh, P);  // dh_t += dG_{t+1} W_hh
    const T* dm = dh;
    if (project) {  // dm_t = dh_t W_hr
      W_r->gemm(n, dh, P, dm_buf.data_ptr<T>(), H, nullptr, 0);
      dm = dm_buf.data_ptr<T>();
    }
    const T* cprev = t > 0 ? cp + (t - 1) * B * H : c0p;
    for_rows(n, G4, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T* G = Gp + row * G4;
      const T *i = G, *f = G + H, *o = G + 2 * H, *g = G + 3 * H;
      const T *tc = tcp + row * H, *cq = cprev + r * H, *dmr = dm + r * H;
      T *d = dGp + row * G4, *cc = cr + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T dc = cc[j] + dmr[j] * o[j] * (T(1) - tc[j] * tc[j]);
        d[j] = dc * g[j] * i[j] * (T(1) - i[j]);
        d[H + j] = dc * cq[j] * f[j] * (T(1) - f[j]);
        d[2 * H + j] = dmr[j] * tc[j] * o[j] * (T(1) - o[j]);
        d[3 * H + j] = dc * i[j] * (T(1) - g[j] * g[j]);
        cc[j] = dc * f[j];  // dc_t f_t, carried to step t-1
      }
    });
  }
}

void lstm_forward(at::Tensor gates, const at::Tensor& w_hh_t, const at::Tensor& h0, const at::Tensor& c0,
                  const std::optional<at::Tensor>& w_hr_t, at::IntArrayRef batch_sizes, at::Tensor c,
                  at::Tensor tc, at::Tensor m, at::Tensor y) {
  check_buffers("rnnkit lstm_forward", gates, w_hh_t, h0, c0, c, tc, m, y);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    forward_impl<scalar_t>(gates, w_hh_t, h0, c0, w_hr_t, batch_sizes, c, tc, m, y);
  });
}

void lstm_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& c0, const at::Tensor& tc,
                   at::Tensor g_h, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                   at::IntArrayRef batch_sizes, at::Tensor dG, at::Tensor carry) {
  check_buffers("rnnkit lstm_backward", gates, c, c0, tc, g_h, w_hh, dG, carry);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    backward_impl<scalar_t>(gates, c, c0, tc, g_h, w_hh, w_hr, batch_sizes, dG, carry);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "lstm_forward(Tensor(a!) gates, Tensor w_hh_t, Tensor h0, Tensor c0, Tensor? w_hr_t, int[] batch_sizes, "
      "Tensor(b!) c, Tensor(c!) tc, Tensor(d!) m, Tensor(e!) y) -> ()",
      &lstm_forward);
  m.def(
      "lstm_backward(Tensor gates, Tensor c, Tensor c0, Tensor tc, Tensor(a!) g_h, Tensor w_hh, Tensor? w_hr, "
      "int[] batch_sizes, Tensor(b!) dG, Tensor(c!) carry) -> ()",
      &lstm_backward);
}
