"""The matrix products of the fused kernels, on the fastest backend torch offers for them.

Why: on CPU, torch.mm goes to MKL, which on some processors (AMD EPYC with AVX-512, measured
here) runs at less than half the machine's GEMM throughput, while torch's oneDNN linear kernel
(`torch.ops.mkldnn._linear_pointwise`, what torch.compile emits for CPU linears) reaches it. A
step's recurrent product is the same product T times, so the choice is made once per kernel call.
oneDNN has a fixed per-call cost, so small products (where per-op overhead dominates) stay on MKL,
as do float64, non-CPU tensors and builds without oneDNN. Both give the same product up to
floating-point summation order.
"""

from __future__ import annotations

import functools

import torch

from rnnkit.cells import speed

# Products smaller than this many multiply-adds go to torch.mm: below it oneDNN's fixed cost per
# call outweighs its faster inner kernel (measured crossover on 2 cores: ~1.5M, e.g. 32x128x384).
ONEDNN_MIN_MACS = 2_000_000
# Inner size from which a product written into a given buffer still goes to oneDNN (`linear`).
ONEDNN_OUT_MIN_K = 256


@functools.cache
def _onednn_linear():
    """torch's oneDNN linear (x W^T) if this build has it and it computes correctly, else None.
    Checked on first use, not at import, on numbers of its own: nothing here may draw from the
    global generator (a user who seeds before `import rnnkit` must get what one seeding after does)."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
        own = torch.Generator().manual_seed(0)
        a, w = torch.randn(3, 5, generator=own), torch.randn(4, 5, generator=own)
        if not torch.allclose(op(a, w, None, "none", [], ""), a @ w.t(), atol=1e-5):
            return None
        return op
    except (AttributeError, RuntimeError):
        return None


def use_onednn(rows: int, w: torch.Tensor) -> bool:
    return (
        speed.on("onednn")
        and _onednn_linear() is not None
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and rows * w.shape[0] * w.shape[1] >= ONEDNN_MIN_MACS
    )


class Product:
    """x -> x W^T (+ bias) (+ add), for many x of up to `rows` rows against one weight W (N, K).

    Holds W in the layout its backend wants: as is for oneDNN, transposed and contiguous for MKL
    (a product with a contiguous right operand is 2-4x faster there than with `W.t()`).
    """

    def __init__(self, w: torch.Tensor, rows: int, bias: torch.Tensor | None = None):
        self.onednn = use_onednn(rows, w)
        self.w = w.contiguous() if self.onednn else w.t().contiguous()
        self.bias = bias

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None, out: torch.Tensor | None = None):
        if self.onednn:
            y = _onednn_linear()(x.contiguous(), self.w, self.bias, "none", [], "")
            if add is None:
                return y if out is None else out.copy_(y)
            return torch.add(add, y, out=out) if out is not None else y.add_(add)
        if add is None and self.bias is not None:
            add = self.bias
        if add is None:
            return torch.mm(x, self.w, out=out) if out is not None else torch.mm(x, self.w)
        if self.bias is not None and add is not self.bias:
            add = add + self.bias
        return torch.addmm(add, x, self.w, out=out) if out is not None else torch.addmm(add, x, self.w)


def linear(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
):
    """x W^T + bias for a single large product (the input projection of all steps, dx), into
    `out` if given. oneDNN has no out= form: into `out` it costs a temporary as large as the
    result (a page fault every 4 KiB when fresh, ~1.5 ns an element here, see
    `rnnkit.cells.speed.workspace`) and a copy, which its faster kernel repays only for long inner
    products (measured on 2 cores, N=16,000 rows: MKL ahead at K=64, level at K=256)."""
    onednn = use_onednn(x.shape[0], w) and x.is_contiguous()
    if onednn and (out is None or w.shape[1] >= ONEDNN_OUT_MIN_K):
        y = _onednn_linear()(x, w.contiguous(), bias, "none", [], "")
        return y if out is None else out.copy_(y)
    if bias is None:
        return torch.mm(x, w.t(), out=out) if out is not None else torch.mm(x, w.t())
    return torch.addmm(bias, x, w.t(), out=out) if out is not None else torch.addmm(bias, x, w.t())


def weight_grads(d: torch.Tensor, blocks: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """d^T [A_1, A_2, ...] for the weight gradients after a backward loop.

    d is (N, G) (N = T*B pre-activation gradients); each block A_k (N, K_k) is given as a list of
    row chunks that stack to N rows (so the shifted states [h_0; y_0 .. y_{T-2}] need no copy).
    Returns [d^T A_1 (G, K_1), d^T A_2, ...].

    The contraction runs over N, the leading dimension of both operands. MKL reads the transposed
    operand in place; oneDNN's linear kernel cannot, and its operands' transposes cost more than
    the product saves: on this 2-core EPYC, N=16,000, MKL took 3.4 ms for (G, K) = (192, 64) and
    38 ms for (768, 256), oneDNN over row slabs 9.6 and 47 ms.
    """
    out = []
    for blk in blocks:
        grad, row = None, 0
        for chunk in blk:
            part = torch.mm(d[row : row + chunk.shape[0]].t(), chunk)
            grad = part if grad is None else grad.add_(part)
            row += chunk.shape[0]
        out.append(grad)
    return out
