"""The fused kernels' shared bookkeeping: the input projection hoisted out of the loop, variable
lengths (`batch_sizes`, as in `rnnkit.cells._kernel`), the gradient arriving at the last step,
and the large weight-gradient GEMMs after the backward loop; and the pieces a family's plain and
layer-normalised kernels share."""

from __future__ import annotations

import torch

from rnnkit.cells.speed.gemm import linear as gemm_linear
from rnnkit.cells.speed.gemm import weight_grads
from rnnkit.cells.speed.workspace import empty as workspace_empty


def add_biases(b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> torch.Tensor | None:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None):
    """W_ih x_t + bias for all T steps as one GEMM: (T, B, I) -> (T, B, G*H), a pooled buffer."""
    T, B, I = x.shape
    out = workspace_empty((T * B, w_ih.shape[0]), x)
    return gemm_linear(x.reshape(T * B, I), w_ih, bias, out=out).view(T, B, -1)


def active_rows(batch_sizes: list[int] | None, *seqs: torch.Tensor) -> list[list[torch.Tensor]]:
    """For each (T, B, *) tensor, its per-step views restricted to the rows active at that step,
    made once before a loop so the loop itself does no slicing."""
    if batch_sizes is None:
        return [list(s.unbind(0)) for s in seqs]
    return [[v[:n] for v, n in zip(s.unbind(0), batch_sizes)] for s in seqs]


def next_rows(batch_sizes: list[int] | None, seq: torch.Tensor) -> list[torch.Tensor]:
    """seq[t + 1] restricted to the rows active at step t, for t < T - 1 (the backward loop reads
    step t+1's gradient for the sequences still running at t; rows past step t+1's count are 0)."""
    views = seq.unbind(0)[1:]
    if batch_sizes is None:
        return list(views)
    return [v[:n] for v, n in zip(views, batch_sizes)]


def prev_rows(batch_sizes: list[int] | None, seq: torch.Tensor) -> list[torch.Tensor | None]:
    """seq[t - 1] restricted to the rows active at step t (None at t = 0): where a backward loop
    adds step t's contribution to dL/dh_{t-1} in place."""
    views = seq.unbind(0)
    rows = batch_sizes or [seq.shape[1]] * seq.shape[0]
    return [None] + [v[:n] if n < v.shape[0] else v for v, n in zip(views[:-1], rows[1:])]


def lengths_of(batch_sizes: list[int], B: int, device) -> torch.Tensor:
    """Per-sequence lengths (B,) from non-increasing batch sizes."""
    bs = torch.tensor(batch_sizes, device=device)
    return (bs[:, None] > torch.arange(B, device=device)[None, :]).sum(0)


def last_valid(y: torch.Tensor, batch_sizes: list[int] | None) -> torch.Tensor:
    """Each sequence's output at its own last valid step: (T, B, P) -> (B, P), a fresh tensor."""
    if batch_sizes is None:
        return y[-1].clone()
    B = y.shape[1]
    last = lengths_of(batch_sizes, B, y.device) - 1
    return y[last, torch.arange(B, device=y.device)]


def zero_padding_(y: torch.Tensor, batch_sizes: list[int] | None) -> torch.Tensor:
    """Zero, in place, the rows of each step that lie past a sequence's end: (T, B, *)."""
    if batch_sizes is not None:
        B = y.shape[1]
        steps = torch.tensor(batch_sizes, device=y.device)[:, None]  # (T, 1)
        y.mul_((torch.arange(B, device=y.device)[None, :] < steps).unsqueeze(-1).to(y.dtype))
    return y


def add_final_grad(grad_y, grad_last, batch_sizes: list[int] | None) -> torch.Tensor:
    """grad_y (T, B, P) plus the gradient of the final state put at each sequence's last step.

    Returns a fresh (pooled) tensor the backward loop may write into.
    """
    g = workspace_empty(grad_y.shape, grad_y).copy_(grad_y)
    if batch_sizes is None:
        g[-1] += grad_last
    else:
        B = g.shape[1]
        last = lengths_of(batch_sizes, B, g.device) - 1
        g[last, torch.arange(B, device=g.device)] += grad_last
    return g


def weight_grad(d_pre: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """sum_t d_pre[t]^T inputs[t] as one GEMM: (T, B, G*H), (T, B, K) -> (G*H, K)."""
    return torch.mm(d_pre.reshape(-1, d_pre.shape[-1]).t(), inputs.reshape(-1, inputs.shape[-1]))


def gate_weight_grads(ctx, d_pre, x, h0, y, ih_idx: int, hh_idx: int):
    """dW_ih = sum_t d_t^T x_t and dW_hh = sum_t d_t^T h_{t-1} (h_{-1} = h0, h_t = y[t]) as one
    large product after the backward loop; None for a weight that needs no gradient."""
    T, B, _ = x.shape
    need_ih, need_hh = ctx.needs_input_grad[ih_idx], ctx.needs_input_grad[hh_idx]
    blocks = ([[x.reshape(T * B, -1)]] if need_ih else []) + (
        [[h0, y[:-1].reshape(-1, y.shape[-1])]] if need_hh else []
    )
    if not blocks:
        return None, None
    grads = iter(weight_grads(d_pre.reshape(T * B, -1), blocks))
    return (next(grads) if need_ih else None), (next(grads) if need_hh else None)


def input_grad(d_pre_x: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
    """dL/dx_t = d_t W_ih for all steps as one GEMM: (T, B, G*H) -> (T, B, I)."""
    T, B, _ = d_pre_x.shape
    out = workspace_empty((T * B, w_ih.shape[1]), d_pre_x)
    return gemm_linear(d_pre_x.reshape(T * B, -1), w_ih.t(), out=out).view(T, B, -1)


def stack_prev(first: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The state entering each step: [first, y_0, ..., y_{T-2}] as (T, B, P)."""
    return torch.cat([first.unsqueeze(0), y[:-1]])


# --- pieces a family's plain and layer-normalised kernels share (cells.ln_lstm, cells.ln_gru) ---


def ifog_order(H: int, device) -> torch.Tensor:
    """Row order i, f, o, g from torch's i, f, g, o; swapping two blocks is its own inverse."""
    r = torch.arange(4 * H, device=device)
    return torch.cat([r[: 2 * H], r[3 * H :], r[2 * H : 3 * H]])


def gru_shared_factors_(a_n, a_z, z, n, h0, y):
    """The factors every GRU kernel shares (both forms, and the layer-normalised one), in place,
    for all steps (T, B, H) and without temporaries (fresh (T, B, H) buffers cost page faults
    here): a_n = dn~/dh = (1 - z)(1 - n^2) and
    a_z = dz~/dh = (h_{t-1} - n) z (1 - z)."""
    torch.addcmul(n.new_ones(()).expand_as(n), n, n, value=-1, out=a_n)  # 1 - n^2
    a_n.addcmul_(a_n, z, value=-1)  # (1 - n^2) - (1 - n^2) z
    torch.sub(h0, n[0], out=a_z[0])  # h_{t-1} - n_t, with h_{-1} = h0 ...
    torch.sub(y[:-1], n[1:], out=a_z[1:])  # ... and h_t = y_t: no shifted copy of y
    a_z.mul_(z).addcmul_(a_z, z, value=-1)  # times z (1 - z)
