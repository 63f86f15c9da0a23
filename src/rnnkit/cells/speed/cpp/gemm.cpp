// The packed GEMM of the compiled loops (common.h, `Packed`) as an op of its own: c += a w,
// `repeats` times with w packed once (as a loop over time packs its weight once a call), for the
// tests (against torch.addmm) and `benchmarks/bench_gemm.py`; the loops call `Packed` directly.

#include "common.h"

namespace {

using namespace rnnkit_native;

void packed_addmm(at::Tensor c, const at::Tensor& a, const at::Tensor& w, int64_t repeats) {
  check_buffers("rnnkit packed_addmm", c, a, w);
  TORCH_CHECK(a.dim() == 2 && w.dim() == 2 && c.dim() == 2 && a.size(1) == w.size(0) && c.size(0) == a.size(0) &&
                  c.size(1) == w.size(1),
              "rnnkit packed_addmm: c (n, N) += a (n, K) w (K, N)");
  at::AutoDispatchBelowADInplaceOrView guard;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "packed_addmm", [&] {
    const Packed<scalar_t> W(w);
    scalar_t* cp = c.data_ptr<scalar_t>();
    for (int64_t r = 0; r < repeats; ++r) W.gemm(a.size(0), a.data_ptr<scalar_t>(), a.size(1), cp, c.size(1), cp, c.size(1));
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rnnkit, m) { m.def("packed_addmm(Tensor(a!) c, Tensor a, Tensor w, int repeats=1) -> ()", &packed_addmm); }
