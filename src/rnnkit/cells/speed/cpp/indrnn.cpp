// IndRNN's two loops over time (rnnkit.cells.indrnn), compiled, for CPU.
//
// Same equations and results as the Python loops of rnnkit/cells/indrnn.py (read its docstring).
// Every unit recurs only on itself, so each thread runs the whole loop over time for its own
// slice of units, with no product and no synchronisation per step (n the active rows of a step):
//   * forward: y (T, B, H) holds the input projection W_ih x_t + b_ih and becomes h_t (0 on rows
//     past a sequence's end); h (B, H) holds h_0 and leaves with each row's last state.
//   * backward: g (B, H) holds dL/dh_T and leaves with dL/dh_0; d (T, B, H) gets dL/da_t and
//     du (H) dL/du; grad_y (T, B, H), if given, is dL/dy_t.

#include "common.h"

namespace {

using namespace rnnkit_native;

// units per task: a slice long enough to fill vectors, few enough tasks to share out
int64_t unit_grain(int64_t H) { return std::max<int64_t>(16, (H + 1) / 2); }

template <typename T>
void forward_impl(at::Tensor& y_buf, at::Tensor& h_buf, const at::Tensor& u_buf, at::IntArrayRef bs) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2);
  T *yp = y_buf.data_ptr<T>(), *hp = h_buf.data_ptr<T>();
  const T* up = u_buf.data_ptr<T>();
  at::parallel_for(0, H, unit_grain(H), [&](int64_t j0, int64_t j1) {
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t n = rows_at(bs, t, B);
      for (int64_t r = 0; r < n; ++r) {
        T *y = yp + (t * B + r) * H, *h = hp + r * H;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          const T a = y[j] + up[j] * h[j];
          h[j] = y[j] = a > T(0) ? a : T(0);
        }
      }
      for (int64_t r = n; r < B; ++r) std::fill(yp + (t * B + r) * H + j0, yp + (t * B + r) * H + j1, T(0));
    }
  });
}

template <typename T>
void backward_impl(const std::optional<at::Tensor>& grad_y, at::Tensor& g_buf, const at::Tensor& y_buf,
                   const at::Tensor& h0, const at::Tensor& u_buf, at::IntArrayRef bs, at::Tensor& d_buf,
                   at::Tensor& du_buf) {
  const int64_t T_ = y_buf.size(0), B = y_buf.size(1), H = y_buf.size(2);
  const T *yp = y_buf.data_ptr<T>(), *h0p = h0.data_ptr<T>(), *up = u_buf.data_ptr<T>();
  const T* gyp = grad_y.has_value() ? grad_y->data_ptr<T>() : nullptr;
  T *gp = g_buf.data_ptr<T>(), *dp = d_buf.data_ptr<T>(), *dup = du_buf.data_ptr<T>();
  at::parallel_for(0, H, unit_grain(H), [&](int64_t j0, int64_t j1) {
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const int64_t n = rows_at(bs, t, B);
      for (int64_t r = 0; r < n; ++r) {
        const int64_t row = t * B + r;
        const T *y = yp + row * H, *h_prev = t > 0 ? yp + (row - B) * H : h0p + r * H;
        T *g = gp + r * H, *d = dp + row * H;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) {
          const T gj = g[j] + (gyp != nullptr ? gyp[row * H + j] : T(0));
          d[j] = y[j] > T(0) ? gj : T(0);  // relu'(a_t): h_t > 0 exactly where a_t > 0
          dup[j] += d[j] * h_prev[j];
          g[j] = d[j] * up[j];
        }
      }
    }
  });
}

void indrnn_forward(at::Tensor y, at::Tensor h, const at::Tensor& u, at::IntArrayRef batch_sizes) {
  check_buffers("rnnkit indrnn_forward", y, h, u);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "indrnn_forward", [&] { forward_impl<scalar_t>(y, h, u, batch_sizes); });
}

void indrnn_backward(const std::optional<at::Tensor>& grad_y, at::Tensor g, const at::Tensor& y, const at::Tensor& h0,
                     const at::Tensor& u, at::IntArrayRef batch_sizes, at::Tensor d, at::Tensor du) {
  check_buffers("rnnkit indrnn_backward", g, y, h0, u, d, du);
  TORCH_CHECK(!grad_y.has_value() || grad_y->is_contiguous(), "rnnkit indrnn_backward: a contiguous grad_y");
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "indrnn_backward",
                             [&] { backward_impl<scalar_t>(grad_y, g, y, h0, u, batch_sizes, d, du); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("indrnn_forward(Tensor(a!) y, Tensor(b!) h, Tensor u, int[] batch_sizes) -> ()", &indrnn_forward);
  m.def(
      "indrnn_backward(Tensor? grad_y, Tensor(a!) g, Tensor y, Tensor h0, Tensor u, int[] batch_sizes, "
      "Tensor(b!) d, Tensor(c!) du) -> ()",
      &indrnn_backward);
}
