// The peephole LSTM's two loops over time (rnnkit.cells.peephole), compiled, for CPU.
//
// Same equations and results as the Python loops of rnnkit/cells/peephole.py (read its
// docstring): gate order i, f, g, o; a step is one GEMM and one pass over each row (n the
// active rows of a step):
//   * forward: gates (T, B, 4H) holds the input projection (biases added) and becomes the
//     activations i, f, g, o; h and c (B, H) hold h_0, c_0 and leave with each row's last state;
//     cs and y (T, B, H) get c_t and h_t (y is 0 on rows past a sequence's end, as given).
//   * backward: gh, gc (B, H) hold dL/dh_T, dL/dc_T and leave with dL/dh_0, dL/dc_0; d (T, B, 4H)
//     gets dL/da_t; grad_y (T, B, H), if given, is dL/dy_t. The peepholes' gradients are sums over
//     all steps of d and the kept states, formed after the loop by the caller.

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void forward_impl(at::Tensor& gates, const at::Tensor& w_hh_t, const T* p_i, const T* p_f, const T* p_o,
                  at::Tensor& h_buf, at::Tensor& c_buf, at::IntArrayRef bs, at::Tensor& cs, at::Tensor& y) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G4 = gates.size(2), H = G4 / 4;
  T *Gp = gates.data_ptr<T>(), *hp = h_buf.data_ptr<T>(), *cp = c_buf.data_ptr<T>();
  T *csp = cs.data_ptr<T>(), *yp = y.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    T* G_t = Gp + t * B * G4;
    W.gemm(n, hp, H, G_t, G4, G_t, G4);  // a_t = x-part + h_{t-1} W_hh^T
    for_rows(n, G4, [&](int64_t r) {
      T *G = G_t + r * G4, *h = hp + r * H, *c = cp + r * H;
      T *cs_t = csp + (t * B + r) * H, *y_t = yp + (t * B + r) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(G[j] + p_i[j] * c[j]), f = sigmoid(G[H + j] + p_f[j] * c[j]);
        const T g = tanh_via_sigmoid(G[2 * H + j]);  // tanh
        const T cn = f * c[j] + i * g;
        const T o = sigmoid(G[3 * H + j] + p_o[j] * cn);
        const T hn = o * (tanh_via_sigmoid(cn));
        G[j] = i, G[H + j] = f, G[2 * H + j] = g, G[3 * H + j] = o;
        c[j] = cs_t[j] = cn;
        h[j] = y_t[j] = hn;
      }
    });
  }
}

template <typename T>
void backward_impl(const std::optional<at::Tensor>& grad_y, at::Tensor& gh_buf, at::Tensor& gc_buf,
                   const at::Tensor& gates, const at::Tensor& cs, const at::Tensor& c0, const at::Tensor& w_hh,
                   const T* p_i, const T* p_f, const T* p_o, at::IntArrayRef bs, at::Tensor& d_buf) {
  const int64_t T_ = gates.size(0), B = gates.size(1), G4 = gates.size(2), H = G4 / 4;
  const T *Gp = gates.data_ptr<T>(), *csp = cs.data_ptr<T>(), *c0p = c0.data_ptr<T>();
  const T* gyp = grad_y.has_value() ? grad_y->data_ptr<T>() : nullptr;
  T *ghp = gh_buf.data_ptr<T>(), *gcp = gc_buf.data_ptr<T>(), *dp = d_buf.data_ptr<T>();
  const Packed<T> W(w_hh);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    for_rows(n, G4, [&](int64_t r) {
      const int64_t row = t * B + r;
      const T *G = Gp + row * G4, *c = csp + row * H, *cq = t > 0 ? csp + (row - B) * H : c0p + r * H;
      T *gh = ghp + r * H, *gc = gcp + r * H, *d = dp + row * G4;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = G[j], f = G[H + j], g = G[2 * H + j], o = G[3 * H + j];
        const T dh = gh[j] + (gyp != nullptr ? gyp[row * H + j] : T(0));
        const T tc = tanh_via_sigmoid(c[j]);
        const T d_o = dh * tc * o * (T(1) - o);
        const T dc = gc[j] + dh * o * (T(1) - tc * tc) + d_o * p_o[j];
        const T d_i = dc * g * i * (T(1) - i), d_f = dc * cq[j] * f * (T(1) - f);
        d[j] = d_i, d[H + j] = d_f, d[2 * H + j] = dc * i * (T(1) - g * g), d[3 * H + j] = d_o;
        gc[j] = dc * f + d_i * p_i[j] + d_f * p_f[j];
      }
    });
    W.gemm(n, dp + t * B * G4, G4, ghp, H, nullptr, 0);  // dL/dh_{t-1} = d_t W_hh
  }
}

void peephole_forward(at::Tensor gates, const at::Tensor& w_hh_t, const at::Tensor& p_i, const at::Tensor& p_f,
                      const at::Tensor& p_o, at::Tensor h, at::Tensor c, at::IntArrayRef batch_sizes, at::Tensor cs,
                      at::Tensor y) {
  check_buffers("rnnkit peephole_forward", gates, w_hh_t, p_i, p_f, p_o, h, c, cs, y);
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_forward", [&] {
    forward_impl<scalar_t>(gates, w_hh_t, p_i.data_ptr<scalar_t>(), p_f.data_ptr<scalar_t>(),
                           p_o.data_ptr<scalar_t>(), h, c, batch_sizes, cs, y);
  });
}

void peephole_backward(const std::optional<at::Tensor>& grad_y, at::Tensor gh, at::Tensor gc, const at::Tensor& gates,
                       const at::Tensor& cs, const at::Tensor& c0, const at::Tensor& w_hh, const at::Tensor& p_i,
                       const at::Tensor& p_f, const at::Tensor& p_o, at::IntArrayRef batch_sizes, at::Tensor d) {
  check_buffers("rnnkit peephole_backward", gh, gc, gates, cs, c0, w_hh, p_i, p_f, p_o, d);
  TORCH_CHECK(!grad_y.has_value() || grad_y->is_contiguous(), "rnnkit peephole_backward: a contiguous grad_y");
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "peephole_backward", [&] {
    backward_impl<scalar_t>(grad_y, gh, gc, gates, cs, c0, w_hh, p_i.data_ptr<scalar_t>(), p_f.data_ptr<scalar_t>(),
                            p_o.data_ptr<scalar_t>(), batch_sizes, d);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "peephole_forward(Tensor(a!) gates, Tensor w_hh_t, Tensor p_i, Tensor p_f, Tensor p_o, Tensor(b!) h, "
      "Tensor(c!) c, int[] batch_sizes, Tensor(d!) cs, Tensor(e!) y) -> ()",
      &peephole_forward);
  m.def(
      "peephole_backward(Tensor? grad_y, Tensor(a!) gh, Tensor(b!) gc, Tensor gates, Tensor cs, Tensor c0, "
      "Tensor w_hh, Tensor p_i, Tensor p_f, Tensor p_o, int[] batch_sizes, Tensor(c!) d) -> ()",
      &peephole_backward);
}
