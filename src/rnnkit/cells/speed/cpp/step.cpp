// One LSTM step for a few rows (decoding: sampling, predict, beam search), compiled, for CPU.
//
// At batch 1 a step is a matrix-vector product, and torch's (MKL's GEMM with one row, as
// torch.lstm_cell calls it) runs it at a third of the rate this loop reaches here
// (docs/benchmarks.md). The weights are read in place, in torch's layout (4H, I) and (4H, H),
// gate order i, f, g, o: each unit's four gate rows are dotted with every row of [x, h] while
// they sit in cache, then that unit's cell update follows, so a step reads each weight once.
// Equations as rnnkit/cells/lstm.py; the sums run in another order than torch's, so the results
// agree to rounding, not bit for bit.

#include "common.h"

namespace {

using namespace rnnkit_native;

// acc[g] += (vector-wise) w[g] * v over n elements, for the four rows w[g] = w + g rows_apart; the
// last n mod L products go to tail[g]
template <typename T>
inline void dot4(const T* w, int64_t rows_apart, const T* v, int64_t n, typename VectorOf<T>::type acc[4],
                 T tail[4]) {
  using Vec = typename VectorOf<T>::type;
  constexpr int64_t L = kVectorBytes / sizeof(T);
  int64_t k = 0;
  for (; k + L <= n; k += L) {
    Vec x;
    std::memcpy(&x, v + k, sizeof(Vec));
    for (int g = 0; g < 4; ++g) {
      Vec a;
      std::memcpy(&a, w + g * rows_apart + k, sizeof(Vec));
      acc[g] += a * x;
    }
  }
  for (int g = 0; g < 4; ++g)
    for (int64_t j = k; j < n; ++j) tail[g] += w[g * rows_apart + j] * v[j];
}

template <typename T>
inline T lane_sum(const typename VectorOf<T>::type& v) {
  constexpr int64_t L = kVectorBytes / sizeof(T);
  T lanes[L];
  std::memcpy(lanes, &v, sizeof(lanes));
  T s = 0;
  for (int64_t l = 0; l < L; ++l) s += lanes[l];
  return s;
}

template <typename T>
void step_impl(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const T* b_ih, const T* b_hh, at::Tensor& h_out, at::Tensor& c_out) {
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1);
  if (B == 0 || H == 0) return;
  const T *xp = x.data_ptr<T>(), *hp = h.data_ptr<T>(), *cp = c.data_ptr<T>();
  const T *wi = w_ih.data_ptr<T>(), *wh = w_hh.data_ptr<T>();
  T *ho = h_out.data_ptr<T>(), *co = c_out.data_ptr<T>();
  // a block of units per task: enough weight rows to repay a thread's wake-up
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (4 * (I + H) * B));
  at::parallel_for(0, H, grain, [&](int64_t u0, int64_t u1) {
    constexpr int64_t kChunk = 64;  // units whose gates are formed, then activated in one vector pass
    T pre[4][kChunk];
    for (int64_t cu = u0; cu < u1; cu += kChunk) {
      const int64_t nu = std::min(kChunk, u1 - cu);
      for (int64_t r = 0; r < B; ++r) {  // the chunk's weight rows stay in cache across the rows
        for (int64_t j = 0; j < nu; ++j) {
          const int64_t u = cu + j;
          typename VectorOf<T>::type acc[4] = {};
          T tail[4] = {};
          dot4(wi + u * I, H * I, xp + r * I, I, acc, tail);
          dot4(wh + u * H, H * H, hp + r * H, H, acc, tail);
          for (int g = 0; g < 4; ++g)
            pre[g][j] = lane_sum<T>(acc[g]) + tail[g] + (b_ih != nullptr ? b_ih[g * H + u] + b_hh[g * H + u] : T(0));
        }
        const T* cq = cp + r * H + cu;
        T *cn = co + r * H + cu, *hn = ho + r * H + cu;
#pragma omp simd
        for (int64_t j = 0; j < nu; ++j) {
          const T i = T(1) / (T(1) + exp_(-pre[0][j])), f = T(1) / (T(1) + exp_(-pre[1][j]));
          const T g = tanh_via_sigmoid(pre[2][j]);  // tanh
          const T o = T(1) / (T(1) + exp_(-pre[3][j]));
          const T c = f * cq[j] + i * g;
          cn[j] = c;
          hn[j] = o * (tanh_via_sigmoid(c));
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                             const at::Tensor& w_ih, const at::Tensor& w_hh,
                                             const std::optional<at::Tensor>& b_ih,
                                             const std::optional<at::Tensor>& b_hh) {
  check_buffers("rnnkit lstm_cell", x, h, c, w_ih, w_hh);
  const int64_t B = x.size(0), H = h.size(1);
  TORCH_CHECK(x.dim() == 2 && h.sizes() == c.sizes() && h.size(0) == B && w_ih.size(0) == 4 * H &&
                  w_ih.size(1) == x.size(1) && w_hh.size(0) == 4 * H && w_hh.size(1) == H &&
                  b_ih.has_value() == b_hh.has_value(),
              "rnnkit lstm_cell: x (B, I), h and c (B, H), w_ih (4H, I), w_hh (4H, H), both biases or none");
  TORCH_CHECK(!b_ih.has_value() || (b_ih->is_contiguous() && b_hh->is_contiguous() && b_ih->numel() == 4 * H &&
                                    b_hh->numel() == 4 * H),
              "rnnkit lstm_cell: biases of 4H elements");
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  at::Tensor h_out = at::empty_like(h), c_out = at::empty_like(c);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_cell", [&] {
    const scalar_t* bi = b_ih.has_value() ? b_ih->data_ptr<scalar_t>() : nullptr;
    const scalar_t* bh = b_hh.has_value() ? b_hh->data_ptr<scalar_t>() : nullptr;
    step_impl<scalar_t>(x, h, c, w_ih, w_hh, bi, bh, h_out, c_out);
  });
  return {h_out, c_out};
}

// A whole sequence for a few rows without gradients (inference at batch 1-8), in one call: the
// input's product of all steps as one GEMM, W_hh packed once (common.h, `Packed`), then per step
// its product and one pass over each row, in torch's gate order. The fused kernel does the same
// work but prepares reordered, doubled and transposed weight copies in Python at every call,
// which at these sizes costs more than the loop. x (T, B, I); rows past a sequence's end
// (batch_sizes, sorted by decreasing length) keep their state and output 0.
template <typename T>
void rows_impl(at::Tensor& G, const at::Tensor& w_hh_t, at::Tensor& y, at::Tensor& h, at::Tensor& c,
               at::IntArrayRef bs) {
  const int64_t T_ = y.size(0), B = y.size(1), H = y.size(2), G4 = 4 * H;
  T *Gp = G.data_ptr<T>(), *yp = y.data_ptr<T>(), *hp = h.data_ptr<T>(), *cp = c.data_ptr<T>();
  const Packed<T> W(w_hh_t);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = rows_at(bs, t, B);
    T* G_t = Gp + t * B * G4;
    W.gemm(n, hp, H, G_t, G4, G_t, G4);  // a_t = x_t W_ih^T + b + h_{t-1} W_hh^T
    for (int64_t r = 0; r < n; ++r) {
      const T* a = G_t + r * G4;
      T *cr = cp + r * H, *hr = hp + r * H, *yr = yp + (t * B + r) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = T(1) / (T(1) + exp_(-a[j])), f = T(1) / (T(1) + exp_(-a[H + j]));
        const T g = tanh_via_sigmoid(a[2 * H + j]);  // tanh
        const T o = T(1) / (T(1) + exp_(-a[3 * H + j]));
        cr[j] = f * cr[j] + i * g;
        hr[j] = yr[j] = o * (tanh_via_sigmoid(cr[j]));
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_rows(const at::Tensor& x, const at::Tensor& h0,
                                                         const at::Tensor& c0, const at::Tensor& w_ih,
                                                         const at::Tensor& w_hh,
                                                         const std::optional<at::Tensor>& b_ih,
                                                         const std::optional<at::Tensor>& b_hh, at::IntArrayRef bs) {
  check_buffers("rnnkit lstm_rows", x, h0, c0, w_ih, w_hh);
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  at::Tensor x2 = x.view({T_ * B, I});
  at::Tensor G = b_ih.has_value() ? at::addmm(*b_ih + *b_hh, x2, w_ih.t()) : at::mm(x2, w_ih.t());
  at::Tensor y = at::zeros({T_, B, H}, x.options()), h = h0.clone(), c = c0.clone();
  at::Tensor w_hh_t = w_hh.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_rows", [&] { rows_impl<scalar_t>(G, w_hh_t, y, h, c, bs); });
  return {y, h, c};
}

// `rnnkit sample` for a language model of plain LSTM layers, the whole loop here: per token the
// embedding row, each layer's step as `lstm_cell`, the output layer, softmax (of logits /
// temperature) and one multinomial draw from `generator`, the same calls in the same order as
// the Python loop (rnnkit.decoding.sample over LanguageModel.step), hence the same tokens.
at::Tensor lstm_lm_sample(const at::Tensor& token, const at::Tensor& h0, const at::Tensor& c0,
                          const at::Tensor& embedding, at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih,
                          at::TensorList b_hh, const at::Tensor& head_w, const std::optional<at::Tensor>& head_b,
                          int64_t steps, double temperature, std::optional<at::Generator> generator) {
  const int64_t L = static_cast<int64_t>(w_ih.size()), B = token.size(0);
  TORCH_CHECK(L >= 1 && w_hh.size() == w_ih.size() && b_ih.size() == w_ih.size() && b_hh.size() == w_ih.size() &&
                  h0.dim() == 3 && h0.size(0) == L && h0.size(1) == B && c0.sizes() == h0.sizes(),
              "rnnkit lstm_lm_sample: L layers' weights and biases, states (L, B, H)");
  std::vector<at::Tensor> h, c;
  for (int64_t k = 0; k < L; ++k) {
    h.push_back(h0[k].contiguous());
    c.push_back(c0[k].contiguous());
  }
  at::Tensor out = at::empty({B, steps}, token.options().dtype(at::kLong));
  at::Tensor tok = token;
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor x = at::embedding(embedding, tok);
    for (int64_t k = 0; k < L; ++k) {
      std::tie(h[k], c[k]) = lstm_cell(x, h[k], c[k], w_ih[k], w_hh[k], b_ih[k], b_hh[k]);
      x = h[k];
    }
    at::Tensor logits = at::linear(x, head_w, head_b);
    if (temperature != 1.0) logits = logits / temperature;  // as the Python loop: x / 1.0 is skipped
    tok = at::multinomial(at::softmax(logits, -1), 1, false, generator).select(1, 0);
    out.select(1, s).copy_(tok);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def(
      "lstm_rows(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "int[] batch_sizes) -> (Tensor, Tensor, Tensor)",
      &lstm_rows);
  m.def(
      "lstm_lm_sample(Tensor token, Tensor h0, Tensor c0, Tensor embedding, Tensor[] w_ih, Tensor[] w_hh, "
      "Tensor[] b_ih, Tensor[] b_hh, Tensor head_w, Tensor? head_b, int steps, float temperature, "
      "Generator? generator) -> Tensor",
      &lstm_lm_sample);
  m.def("lstm_cell(Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> (Tensor, Tensor)",
        &lstm_cell);
}
