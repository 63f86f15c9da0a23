// The Elman RNN's two loops over time (rnnkit.cells.elman), compiled, for CPU.
//
// Same equations, buffers and outputs as the Python loops of rnnkit/cells/elman.py (read its
// docstring), which stay the reference and the path for other devices and dtypes; a step is one
// GEMM and one pass over each row. In particular (n the active rows of a step):
//   * forward: y (T, B, H) holds the input projection W_ih x_t + biases and becomes h_t; w_hh_t
//     (H, H) is W_hh's transpose. With tanh, y and w_hh_t arrive doubled (tanh(v) =
//     2 sigmoid(2v) - 1), as `rnnkit.cells.speed.tanh.Tanh` prepares them.
//   * backward: g (T, B, H) holds dL/dy_t and accumulates dh_t in place; dz (T, B, H) gets the
//     pre-activations' gradients, phi'(z_t) formed from h_t (1 - h^2, or [h > 0]); w_hh (H, H).

#include "common.h"

namespace {

using namespace rnnkit_native;

enum class Act { kTanh, kRelu };

template <typename T, Act A>
void forward_impl(at::Tensor& y_buf, const at::Tensor& w_hh_t, const at::Tensor& h0, at::IntArrayRef bs) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2);
  T* yp = y_buf.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    T* y_t = yp + t * B * H;
    W.gemm(n, t > 0 ? y_t - B * H : h0p, H, y_t, H, y_t, H);  // z_t += h_{t-1} W_hh^T
    for_rows(n, H, [&](int64_t r) {
      T* y = y_t + r * H;
      if constexpr (A == Act::kTanh) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) y[j] = tanh_of_doubled(y[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) y[j] = y[j] > T(0) ? y[j] : T(0);
      }
    });
  }
}

template <typename T, Act A>
void backward_impl(at::Tensor& g, const at::Tensor& y_buf, const at::Tensor& w_hh, at::IntArrayRef bs,
                   at::Tensor& dz) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2);
  T *gp = g.data_ptr<T>(), *dzp = dz.data_ptr<T>();
  const T* yp = y_buf.data_ptr<T>();
  const Packed<T> W(w_hh);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    T* dh = gp + t * B * H;
    // dh_t += dz_{t+1} W_hh, over the rows still running at t+1 (the others' dz_{t+1} is 0)
    if (t < T_ - 1) W.gemm(rows_at(bs, t + 1, B), dzp + (t + 1) * B * H, H, dh, H, dh, H);
    for_rows(n, H, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T *d = gp + row * H, *h = yp + row * H;
      T* z = dzp + row * H;
      if constexpr (A == Act::kTanh) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) z[j] = d[j] * (T(1) - h[j] * h[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) z[j] = h[j] > T(0) ? d[j] : T(0);
      }
    });
  }
}

template <Act A>
void forward(at::Tensor y, const at::Tensor& w_hh_t, const at::Tensor& h0, at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit rnn_forward", y, w_hh_t, h0);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_forward",
                             [&] { forward_impl<scalar_t, A>(y, w_hh_t, h0, batch_sizes); });
}

template <Act A>
void backward(at::Tensor g, const at::Tensor& y, const at::Tensor& w_hh, at::IntArrayRef batch_sizes,
              at::Tensor dz) {
  check_buffers("rnnkit rnn_backward", g, y, w_hh, dz);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rnn_backward",
                             [&] { backward_impl<scalar_t, A>(g, y, w_hh, batch_sizes, dz); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  for (const char* name : {"rnn_tanh", "rnn_relu"}) {
    const std::string s(name);
    const bool relu = s == "rnn_relu";
    m.def((s + "_forward(Tensor(a!) y, Tensor w_hh_t, Tensor h0, int[] batch_sizes) -> ()").c_str(),
          relu ? &forward<Act::kRelu> : &forward<Act::kTanh>);
    m.def((s + "_backward(Tensor(a!) g, Tensor y, Tensor w_hh, int[] batch_sizes, Tensor(b!) dz) -> ()").c_str(),
          relu ? &backward<Act::kRelu> : &backward<Act::kTanh>);
  }
}
