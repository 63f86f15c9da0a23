// The layer-norm LSTM's two loops over time (rnnkit.cells.ln_lstm), compiled, for CPU.
//
// Why: at small sizes a step of the Python loops is ~23 eager ops of 1-7 us each, and the op,
// not the arithmetic, is the cost (benchmarks/op_floor.py). Here a step is one GEMM (torch's)
// and one pass over each row for everything elementwise: the two layer normalisations, the
// gates, the cell update and, in the forward of a training call, the backward's factors K and E.
//
// Same equations, inputs and outputs as the Python loops of rnnkit/cells/ln_lstm.py (read its
// docstring for them), which stay the reference and the path for other devices and dtypes; the
// tests run both against each other and against the step equations. In particular:
//   * gx (T, B, 4H): LN_ih(W_ih x_t) + every shift, g~'s block doubled; g_hh and the LN_c
//     parameters doubled where the forward wants them (tanh(v) = 2 sigmoid(2v) - 1).
//   * records (T, size): one flat step record a step (rnnkit/cells/_record.py); `offsets` are
//     its blocks' starts in the order K, E, a, c, G, tc, m, y (y: -1 without a projection).
//   * stats (4, T, B): LN_hh's mean and 1/sigma, then LN_c's, for every active row.
//   * batch_sizes: empty, or as in PackedSequence; rows past a sequence's end are not written
//     (the caller zeroes the buffers whose padding is read later).

#include "common.h"

namespace {

using namespace rnnkit_native;

struct Layout {
  int64_t K, E, a, c, G, tc, m, y;
  explicit Layout(at::IntArrayRef o) : K(o[0]), E(o[1]), a(o[2]), c(o[3]), G(o[4]), tc(o[5]), m(o[6]), y(o[7]) {}
};

template <typename T>
void forward_impl(const at::Tensor& gx, const at::Tensor& w_hh_t, const at::Tensor& g_hh, const at::Tensor& g_c,
                  const at::Tensor& s_c, const at::Tensor& h0, const at::Tensor& c0,
                  const std::optional<at::Tensor>& w_hr_t, at::IntArrayRef bs, at::Tensor& records, at::Tensor& stats,
                  const Layout& L, double eps, bool train) {
  const int64_t T_ = gx.size(0), B = gx.size(1), G4 = gx.size(2), H = G4 / 4, P = h0.size(1);
  const int64_t size = records.size(1);
  const bool project = w_hr_t.has_value();
  const int64_t oh = project ? L.y : L.m;  // the block that holds h_t
  T* rec = records.data_ptr<T>();
  T* st = stats.data_ptr<T>();
  const T *gxp = gx.data_ptr<T>(), *ghh = g_hh.data_ptr<T>(), *gc = g_c.data_ptr<T>(), *sc = s_c.data_ptr<T>();
  const T *c0p = c0.data_ptr<T>(), *h0p = h0.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  std::optional<Packed<T>> W_r;
  if (project) W_r.emplace(*w_hr_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    T* r_t = rec + t * size;
    T* prev = t > 0 ? rec + (t - 1) * size : nullptr;
    W.gemm(n, t > 0 ? prev + oh : h0p, P, r_t + L.a, G4, nullptr, 0);  // a = W_hh h_{t-1}
    for_rows(n, G4, [&](int64_t r) {
      const T* a = r_t + L.a + r * G4;
      const T* gxr = gxp + (t * B + r) * G4;
      T* G = r_t + L.G + r * G4;
      T* c = r_t + L.c + r * H;
      T *tc = r_t + L.tc + r * H, *m = r_t + L.m + r * H;
      const T* cp = t > 0 ? prev + L.c + r * H : c0p + r * H;
      const Moments<T> ma = moments(a, G4, eps);
#pragma omp simd
      for (int64_t j = 0; j < G4; ++j) {  // the four gates' sigmoids (g~ doubled)
        const T v = gxr[j] + (a[j] - ma.mean) * ma.rstd * ghh[j];
        G[j] = T(1) / (T(1) + exp_(-v));
      }
      T *i = G, *f = G + H, *g = G + 2 * H, *o = G + 3 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        g[j] = T(2) * g[j] - T(1);  // tanh(g~)
        c[j] = f[j] * cp[j] + i[j] * g[j];
      }
      const Moments<T> mc = moments(c, H, eps);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T v = gc[j] * (c[j] - mc.mean) * mc.rstd + sc[j];  // 2 LN_c(c)
        tc[j] = tanh_of_doubled(v);
        m[j] = o[j] * tc[j];
      }
      if (train) {  // K and E (rnnkit/cells/ln_lstm.py's docstring)
        T *K = r_t + L.K + r * G4, *E = r_t + L.E + r * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          K[j] = i[j] * (T(1) - i[j]) * g[j];
          K[H + j] = f[j] * (T(1) - f[j]) * cp[j];
          K[2 * H + j] = (T(1) - g[j] * g[j]) * i[j];
          K[3 * H + j] = o[j] * (T(1) - o[j]) * tc[j];
          E[j] = o[j] * (T(1) - tc[j] * tc[j]);
        }
      }
      T* s = st + t * B + r;
      s[0] = ma.mean;
      s[T_ * B] = ma.rstd;
      s[2 * T_ * B] = mc.mean;
      s[3 * T_ * B] = mc.rstd;
    });
    if (project) W_r->gemm(n, r_t + L.m, H, r_t + L.y, P, nullptr, 0);  // y_t = m_t W_hr^T
  }
}

template <typename T>
void backward_impl(const at::Tensor& records, const at::Tensor& stats, at::Tensor& g_h, const at::Tensor& w_hh,
                   const std::optional<at::Tensor>& w_hr, const at::Tensor& g_hh, const at::Tensor& g_c,
                   at::IntArrayRef bs, const Layout& L, at::IntArrayRef grad_offsets, at::Tensor& grad_records,
                   at::Tensor& da, at::Tensor& carry) {
  const int64_t T_ = da.size(0), B = da.size(1), G4 = da.size(2), H = G4 / 4, P = g_h.size(2);
  const int64_t size = records.size(1), gsize = grad_records.size(1);
  const int64_t o_dG = grad_offsets[0], o_dl = grad_offsets[1];
  const bool project = w_hr.has_value();
  const auto opt = da.options();
  const T *rec = records.data_ptr<T>(), *st = stats.data_ptr<T>();
  const T *ghh = g_hh.data_ptr<T>(), *gc = g_c.data_ptr<T>();
  T *grec = grad_records.data_ptr<T>(), *dap = da.data_ptr<T>(), *gh = g_h.data_ptr<T>();
  T* cr = carry.data_ptr<T>();
  at::Tensor dm_buf = at::empty({B, H}, opt);
  T* dm_p = dm_buf.data_ptr<T>();
  const Packed<T> W(w_hh);
  std::optional<Packed<T>> W_r;
  if (project) W_r.emplace(*w_hr);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = rows_at(bs, t, B);
    const T* r_t = rec + t * size;
    T* gr_t = grec + t * gsize;
    T* da_t = dap + t * B * G4;
    // dh_t = g_t + da_{t+1} W_hh (da_{t+1} is 0 at the last step and on rows past its count)
    T* g_t = gh + t * B * P;
    const T* dm;
    if (!project) {
      if (t < T_ - 1) {
        W.gemm(n, dap + (t + 1) * B * G4, G4, dm_p, H, g_t, P);
        dm = dm_p;
      } else {
        dm = g_t;
      }
    } else {  // dh_t kept in g_h for dW_hr's product; dm_t = dh_t W_hr
      if (t < T_ - 1) W.gemm(n, dap + (t + 1) * B * G4, G4, g_t, P, g_t, P);
      W_r->gemm(n, g_t, P, dm_p, H, nullptr, 0);
      dm = dm_p;
    }
    for_rows(n, G4, [&](int64_t r) {
      const T *K = r_t + L.K + r * G4, *E = r_t + L.E + r * H, *a = r_t + L.a + r * G4;
      const T *c = r_t + L.c + r * H, *f = r_t + L.G + r * G4 + H;
      const T* dmr = dm + r * H;
      T *dG = gr_t + o_dG + r * G4, *dl = gr_t + o_dl + r * H, *dar = da_t + r * G4, *cc = cr + r * H;
      const T* s = st + t * B + r;
      const Moments<T> ma{s[0], s[T_ * B]}, mc{s[2 * T_ * B], s[3 * T_ * B]};
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dl[j] = dmr[j] * E[j];  // at LN_c's output
      const auto [c1, c2] = ln_sums(dl, c, gc, mc, H);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T dc = cc[j] + mc.rstd * (dl[j] * gc[j] - c1 - (c[j] - mc.mean) * mc.rstd * c2);
        dG[j] = K[j] * dc;
        dG[H + j] = K[H + j] * dc;
        dG[2 * H + j] = K[2 * H + j] * dc;
        dG[3 * H + j] = K[3 * H + j] * dmr[j];
        cc[j] = dc * f[j];  // dc_t f_t, carried to step t-1
      }
      const auto [a1, a2] = ln_sums(dG, a, ghh, ma, G4);
#pragma omp simd
      for (int64_t j = 0; j < G4; ++j)
        dar[j] = ma.rstd * (dG[j] * ghh[j] - a1 - (a[j] - ma.mean) * ma.rstd * a2);
    });
  }
}

void ln_lstm_forward(const at::Tensor& gx, const at::Tensor& w_hh_t, const at::Tensor& g_hh, const at::Tensor& g_c,
                     const at::Tensor& s_c, const at::Tensor& h0, const at::Tensor& c0,
                     const std::optional<at::Tensor>& w_hr_t, at::IntArrayRef batch_sizes, at::Tensor records,
                     at::Tensor stats, at::IntArrayRef offsets, double eps, bool train) {
  check_buffers("rnnkit ln_lstm_forward", gx, g_hh, g_c, s_c, c0, records, stats);
  TORCH_CHECK(offsets.size() == 8, "rnnkit native ln_lstm: 8 record offsets expected");
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "ln_lstm_forward", [&] {
    forward_impl<scalar_t>(gx, w_hh_t, g_hh, g_c, s_c, h0, c0, w_hr_t, batch_sizes, records, stats, Layout(offsets),
                           eps, train);
  });
}

void ln_lstm_backward(const at::Tensor& records, const at::Tensor& stats, at::Tensor g_h, const at::Tensor& w_hh,
                      const std::optional<at::Tensor>& w_hr, const at::Tensor& g_hh, const at::Tensor& g_c,
                      at::IntArrayRef batch_sizes, at::IntArrayRef offsets, at::IntArrayRef grad_offsets,
                      at::Tensor grad_records, at::Tensor da, at::Tensor carry) {
  check_buffers("rnnkit ln_lstm_backward", records, stats, g_h, g_hh, g_c, grad_records, da, carry);
  TORCH_CHECK(offsets.size() == 8 && grad_offsets.size() == 2, "rnnkit native ln_lstm: bad record offsets");
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(da.scalar_type(), "ln_lstm_backward", [&] {
    backward_impl<scalar_t>(records, stats, g_h, w_hh, w_hr, g_hh, g_c, batch_sizes, Layout(offsets), grad_offsets,
                            grad_records, da, carry);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "ln_lstm_forward(Tensor gx, Tensor w_hh_t, Tensor g_hh, Tensor g_c, Tensor s_c, Tensor h0, Tensor c0, "
      "Tensor? w_hr_t, int[] batch_sizes, Tensor(a!) records, Tensor(b!) stats, int[] offsets, float eps, "
      "bool train) -> ()",
      &ln_lstm_forward);
  m.def(
      "ln_lstm_backward(Tensor records, Tensor stats, Tensor(a!) g_h, Tensor w_hh, Tensor? w_hr, Tensor g_hh, "
      "Tensor g_c, int[] batch_sizes, int[] offsets, int[] grad_offsets, Tensor(b!) grad_records, Tensor(c!) da, "
      "Tensor(d!) carry) -> ()",
      &ln_lstm_backward);
}
