// The Jordan network's two loops over time in their stepwise form (rnnkit.cells.jordan), compiled,
// for CPU. The folded form (identity output, H <= 2 O) is an Elman recurrence on W_yh W_hy and
// runs on elman.cpp's ops.
//
// Same equations, buffers and outputs as the Python loops `_forward_stepwise` and
// `_backward_stepwise` of rnnkit/cells/jordan.py (read its docstring), which stay the reference
// and the path for other devices and dtypes; a step is two GEMMs and a pass over each row for
// each. In particular (n the active rows of a step):
//   * forward: h (T, B, H) holds W_ih x_t + b_h, doubled (tanh(v) = 2 sigmoid(2v) - 1, as
//     `rnnkit.cells.speed.tanh.Tanh` prepares it), and becomes h_t; y (T, B, O) holds b_y (or 0)
//     and becomes y_t; w_yh_t (O, H) is W_yh's transpose, doubled too; w_hy_t (H, O) W_hy's.
//   * backward: dO (T, B, O) holds g_t = dL/dy_t and becomes dO_t; dA (T, B, H) gets the hidden
//     pre-activations' gradients (its rows past a sequence's end are left as they are: zeros);
//     w_yh (H, O), w_hy (O, H); f_out' formed from y, 1 - h^2 from h.

#include "common.h"

namespace {

using namespace rnnkit_native;

// f_out, in the order of rnnkit.cells.jordan.OUTPUT_ACTIVATIONS
enum class Out : int64_t { kIdentity = 0, kTanh, kSigmoid, kRelu, kSoftmax };

template <typename T>
void activate(Out act, T* y, int64_t O) {
  switch (act) {
    case Out::kIdentity:
      break;
    case Out::kTanh:  // 2 sigmoid(2v) - 1: std::tanh does not vectorise (bench_native: 3.7x the time)
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) y[j] = tanh_via_sigmoid(y[j]);
      break;
    case Out::kSigmoid:
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) y[j] = sigmoid(y[j]);
      break;
    case Out::kRelu:
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) y[j] = y[j] > T(0) ? y[j] : T(0);
      break;
    case Out::kSoftmax: {  // exp(v - max) / sum, as torch.softmax
      T top = y[0], sum = T(0);
      for (int64_t j = 1; j < O; ++j) top = std::max(top, y[j]);
      for (int64_t j = 0; j < O; ++j) sum += (y[j] = exp_(y[j] - top));
      for (int64_t j = 0; j < O; ++j) y[j] /= sum;
      break;
    }
  }
}

// dy *= f_out'(O_t), from y_t = f_out(O_t); softmax: dy := y * (dy - <dy, y>)
template <typename T>
void activation_backward(Out act, T* d, const T* y, int64_t O) {
  switch (act) {
    case Out::kIdentity:
      break;
    case Out::kTanh:
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) d[j] *= T(1) - y[j] * y[j];
      break;
    case Out::kSigmoid:
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) d[j] *= y[j] * (T(1) - y[j]);
      break;
    case Out::kRelu:
#pragma omp simd
      for (int64_t j = 0; j < O; ++j) d[j] = y[j] > T(0) ? d[j] : T(0);
      break;
    case Out::kSoftmax: {
      T dot = T(0);
      for (int64_t j = 0; j < O; ++j) dot += d[j] * y[j];
      for (int64_t j = 0; j < O; ++j) d[j] = (d[j] - dot) * y[j];
      break;
    }
  }
}

template <typename T>
void forward_impl(at::Tensor& h_buf, at::Tensor& y_buf, const at::Tensor& y0, const at::Tensor& w_yh_t,
                  const at::Tensor& w_hy_t, at::IntArrayRef bs, Out act) {
  const int64_t T_ = h_buf.size(0), B = h_buf.size(1), H = h_buf.size(2), O = y_buf.size(2);
  T *hp = h_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const T* y0p = y0.data_ptr<T>();
  const Packed<T> feedback(w_yh_t), output(w_hy_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    T *h_t = hp + t * B * H, *y_t = yp + t * B * O;
    feedback.gemm(n, t > 0 ? y_t - B * O : y0p, O, h_t, H, h_t, H);  // A_t += y_{t-1} W_yh^T
    for_rows(n, H, [&](int64_t r) {
      T* v = h_t + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) v[j] = tanh_of_doubled(v[j]);
    });
    output.gemm(n, h_t, H, y_t, O, y_t, O);  // O_t = b_y + h_t W_hy^T
    for_rows(n, O, [&](int64_t r) { activate(act, y_t + r * O, O); });
  }
}

template <typename T>
void backward_impl(at::Tensor& dO, const at::Tensor& h_buf, const at::Tensor& y_buf, const at::Tensor& w_yh,
                   const at::Tensor& w_hy, at::IntArrayRef bs, Out act, at::Tensor& dA) {
  const int64_t T_ = h_buf.size(0), B = h_buf.size(1), H = h_buf.size(2), O = y_buf.size(2);
  T *dOp = dO.data_ptr<T>(), *dAp = dA.data_ptr<T>();
  const T *hp = h_buf.data_ptr<T>(), *yp = y_buf.data_ptr<T>();
  const Packed<T> back_yh(w_yh), back_hy(w_hy);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    T *dy = dOp + t * B * O, *dA_t = dAp + t * B * H;
    // dy_t = g_t + dA_{t+1} W_yh, over the rows still running at t+1 (the others' dA_{t+1} is 0)
    if (t < T_ - 1) back_yh.gemm(rows_at(bs, t + 1, B), dA_t + B * H, H, dy, O, dy, O);
    for_rows(n, O, [&](int64_t r) { activation_backward(act, dy + r * O, yp + (t * B + r) * O, O); });
    back_hy.gemm(n, dy, O, dA_t, H, nullptr, 0);  // dh_t = dO_t W_hy
    for_rows(n, H, [&](int64_t r) {
      T* d = dA_t + r * H;
      const T* v = hp + (t * B + r) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d[j] *= T(1) - v[j] * v[j];
    });
  }
}

Out output_activation(int64_t act) {
  TORCH_CHECK(act >= 0 && act <= int64_t(Out::kSoftmax), "rnnkit jordan: unknown output activation ", act);
  return Out(act);
}

void forward(at::Tensor h, at::Tensor y, const at::Tensor& y0, const at::Tensor& w_yh_t, const at::Tensor& w_hy_t,
             at::IntArrayRef batch_sizes, int64_t act) {
  check_buffers("rnnkit jordan_forward", h, y, y0, w_yh_t, w_hy_t);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "jordan_forward", [&] {
    forward_impl<scalar_t>(h, y, y0, w_yh_t, w_hy_t, batch_sizes, output_activation(act));
  });
}

void backward(at::Tensor dO, const at::Tensor& h, const at::Tensor& y, const at::Tensor& w_yh,
              const at::Tensor& w_hy, at::IntArrayRef batch_sizes, int64_t act, at::Tensor dA) {
  check_buffers("rnnkit jordan_backward", dO, h, y, w_yh, w_hy, dA);
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "jordan_backward", [&] {
    backward_impl<scalar_t>(dO, h, y, w_yh, w_hy, batch_sizes, output_activation(act), dA);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("jordan_forward(Tensor(a!) h, Tensor(b!) y, Tensor y0, Tensor w_yh_t, Tensor w_hy_t, int[] batch_sizes, "
        "int act) -> ()",
        &forward);
  m.def("jordan_backward(Tensor(a!) dO, Tensor h, Tensor y, Tensor w_yh, Tensor w_hy, int[] batch_sizes, int act, "
        "Tensor(b!) dA) -> ()",
        &backward);
}
