// The diagonal linear recurrence of minGRU and minLSTM on values (rnnkit.cells.scan), compiled,
// for CPU: the sequential mode's loop and every short scan the blocked mode runs as a loop, forwards
// and (the backward's reversed scan) backwards in time.
//
//   out_t = a_t * h_{t-1} + b_t,  h_{-1} = h0        (reverse: t from T-1 down, h_T = h0)
//
// a, b, out (T, B, H) and h0 (B, H), contiguous; out may be b itself (each element of b is read
// before its slot is written). The columns are independent through time, so each thread takes a
// block of columns and walks all of time over it: one pass over a, b and out, where the Python
// loop (`scan._sequential`) pays an op per step.

#include "common.h"

namespace {

using namespace rnnkit_native;

template <typename T>
void scan_impl(const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0, at::Tensor& out, bool reverse) {
  const int64_t T_ = a.size(0), N = h0.numel();
  const T *ap = a.data_ptr<T>(), *bp = b.data_ptr<T>(), *hp = h0.data_ptr<T>();
  T* op = out.data_ptr<T>();
  constexpr int64_t kColumns = 512;  // a block's state stays in L1 from step to step
  at::parallel_for(0, N, std::max<int64_t>(kColumns, kGrainElems / std::max<int64_t>(T_, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t j0 = begin; j0 < end; j0 += kColumns) {
                       const int64_t j1 = std::min(end, j0 + kColumns);
                       const T* prev = hp;
                       for (int64_t s = 0; s < T_; ++s) {
                         const int64_t off = (reverse ? T_ - 1 - s : s) * N;
                         const T *at_ = ap + off, *bt = bp + off;
                         T* ot = op + off;
#pragma omp simd
                         for (int64_t j = j0; j < j1; ++j) ot[j] = at_[j] * prev[j] + bt[j];
                         prev = ot;
                       }
                     }
                   });
}

void linear_scan(const at::Tensor& a, const at::Tensor& b, const at::Tensor& h0, at::Tensor out, bool reverse) {
  check_buffers("rnnkit linear_scan", a, b, h0, out);
  TORCH_CHECK(a.dim() == 3 && b.sizes() == a.sizes() && out.sizes() == a.sizes() && h0.numel() == a.size(1) * a.size(2),
              "rnnkit linear_scan: a, b, out (T, B, H) and h0 (B, H)");
  at::AutoDispatchBelowADInplaceOrView guard;  // plain tensors only: skip autograd's dispatch
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "linear_scan", [&] { scan_impl<scalar_t>(a, b, h0, out, reverse); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) {
  m.def("linear_scan(Tensor a, Tensor b, Tensor h0, Tensor(a!) out, bool reverse) -> ()", &linear_scan);
}
