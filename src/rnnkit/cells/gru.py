"""Gated recurrent unit (Cho et al. 2014), in both of its published forms, gate order r, z, n:

    r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)        reset gate
    z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)        update gate
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   reset_after=True (torch, cuDNN)
    n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)   reset_after=False (the paper)
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Shapes: x_t (B, I), h_t (B, H); W_ih (3H, I), W_hh (3H, H), b_ih and b_hh (3H,), blocks r, z, n.
The two forms differ only in where the reset gate acts; torch's (reset_after=True) lets one GEMM
compute all of W_hh h_{t-1} per step, the paper's needs r_t before the second product.

BPTT (the fused backward), walking t from T to 1, with dh_t the full gradient at h_t (from y_t,
from dL/dh_T at the last step, and from step t+1):
    dn~ = dh_t (1 - z_t)(1 - n_t^2)                      (gradient of n's pre-activation)
    dz~ = dh_t (h_{t-1} - n_t) z_t (1 - z_t)
  reset_after=True, with a_t = W_hn h_{t-1} + b_hn:
    dr~ = dn~ a_t r_t (1 - r_t)
    dh_{t-1} += dh_t z_t + [dr~, dz~, dn~ r_t] W_hh
  reset_after=False, with d(rh) = dn~ W_hn:
    dr~ = d(rh) h_{t-1} r_t (1 - r_t)
    dh_{t-1} += dh_t z_t + d(rh) r_t + [dr~, dz~] W_h(r,z)
and after the loop, as single GEMMs over all steps: dW_ih = sum_t [dr~, dz~, dn~]^T x_t, the
recurrent weight gradients against h_{t-1} (and against r_t * h_{t-1} for the paper's W_hn),
the biases as sums, dx_t = [dr~, dz~, dn~] W_ih.
"""

from __future__ import annotations

import torch

from rnnkit.cells._common import (
    active_rows,
    add_biases,
    add_final_grad,
    forbid_double_backward,
    input_grad,
    input_projection,
    last_valid,
    linear,
    prev_rows,
    run_kernel,
    stack_prev,
)
from rnnkit.cells._gemm import Product, weight_grads
from rnnkit.cells._module import CellBase
from rnnkit.errors import RnnkitTypeError


def gru_step(x_t, state, w_ih, w_hh, b_ih, b_hh, reset_after=True):
    """One step of the equations above: (x_t (B, I), (h,)) -> (h',)."""
    (h,) = state
    H = h.shape[1]
    xr, xz, xn = linear(x_t, w_ih, b_ih).chunk(3, dim=1)
    b_hh = (None,) * 3 if b_hh is None else b_hh.chunk(3)
    w_hr, w_hz, w_hn = w_hh.split(H)
    r = torch.sigmoid(xr + linear(h, w_hr, b_hh[0]))
    z = torch.sigmoid(xz + linear(h, w_hz, b_hh[1]))
    if reset_after:
        n = torch.tanh(xn + r * linear(h, w_hn, b_hh[2]))
    else:
        n = torch.tanh(xn + linear(r * h, w_hn, b_hh[2]))
    return ((1 - z) * n + z * h,)


def _blocks(b: torch.Tensor | None, H: int, like: torch.Tensor) -> list[torch.Tensor]:
    """A bias (3H,) as its r, z, n blocks (zeros when absent)."""
    return list(b.split(H)) if b is not None else [like.new_zeros(H)] * 3


def _nrz(H: int, device) -> torch.Tensor:
    """Row order n, r, z from r, z, n, and its inverse (r, z, n from n, r, z)."""
    r = torch.arange(3 * H, device=device)
    return torch.cat([r[2 * H :], r[: 2 * H]]), torch.cat([r[H:], r[:H]])


class GRUResetAfter(torch.autograd.Function):
    """Whole-sequence GRU, torch's form (reset_after=True), with the hand-derived BPTT above.

    Internally the input side is ordered n, r, z so that one broadcast product per backward step
    yields [dn~, dr~, dz~, dn~ r] (T, B, 4H), whose first 3H columns are the input-side and last 3H
    the recurrent-side pre-activation gradients (r, z, n: W_hh's own order).
    """

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        bi, bh = _blocks(b_ih, H, x), _blocks(b_hh, H, x)
        # One buffer a (T, B, 3H) receives every step's W_hh h_{t-1} in place: its r, z blocks
        # start as the input projection (so they end as the gates' pre-activations) and its n
        # block as b_hn (so it ends as W_hn h_{t-1} + b_hn, which r multiplies).
        a = input_projection(x, w_ih, torch.cat([bi[0] + bh[0], bi[1] + bh[1], bi[2]]))  # (T, B, 3H)
        n = a[..., 2 * H :].clone()  # (T, B, H): W_in x + b_in, then n in place
        a[..., 2 * H :] = bh[2]
        recurrent = Product(w_hh, B)  # h -> W_hh h
        y = (torch.zeros_like if batch_sizes else torch.empty_like)(n)  # (T, B, H)
        steps = active_rows(
            batch_sizes, a, a[..., : 2 * H], a[..., :H], a[..., H : 2 * H], a[..., 2 * H :], n, y
        )
        h = h0
        for a_t, rz_t, r_t, z_t, an_t, n_t, y_t in zip(*steps):
            if batch_sizes:  # the sequences still running are the first rows
                h = h[: y_t.shape[0]]
            recurrent(h, add=a_t, out=a_t)
            rz_t.sigmoid_()
            n_t.addcmul_(r_t, an_t).tanh_()
            torch.lerp(n_t, h, z_t, out=y_t)  # (1 - z) n + z h
            h = y_t
        rz = a[..., : 2 * H]
        ctx.save_for_backward(x, h0, w_ih, w_hh, a[..., 2 * H :], rz, n, y)
        ctx.batch_sizes = batch_sizes
        return y, last_valid(y, batch_sizes)

    @staticmethod
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("gru")
        x, h0, w_ih, w_hh, an, rz, n, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = y.shape
        to_nrz, to_rzn = _nrz(H, x.device)
        r, z = rz[..., :H], rz[..., H:]
        # Factors that depend only on the forward pass, for all steps at once outside the loop.
        A = torch.empty(T, B, 4, H, dtype=y.dtype, device=y.device)  # multiplies dh_t
        torch.mul(1 - z, 1 - n * n, out=A[:, :, 0])  # dn~ / dh
        torch.mul(A[:, :, 0], an * r * (1 - r), out=A[:, :, 1])  # dr~ / dh
        torch.mul(stack_prev(h0, y) - n, z * (1 - z), out=A[:, :, 2])  # dz~ / dh
        torch.mul(A[:, :, 0], r, out=A[:, :, 3])  # recurrent-side dn~ r / dh
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): accumulates dh_t in place
        D = torch.zeros_like(A) if bs else torch.empty_like(A)  # (T, B, 4, H)
        Df = D.view(T, B, 4 * H)
        dhs, As, Ds, zs, dGh = active_rows(bs, g, A, D, z, Df[..., H:])
        g_prev = prev_rows(bs, g)
        back = Product(w_hh.t(), B)  # [dr~, dz~, dn~ r] -> that W_hh
        for t in range(T - 1, -1, -1):
            dh = dhs[t]
            torch.mul(As[t], dh.unsqueeze(1), out=Ds[t])
            if t:  # dh_{t-1} += dh_t z_t + [dr~, dz~, dn~ r] W_hh
                g_prev[t].addcmul_(dh, zs[t])
                back(dGh[t], add=g_prev[t], out=g_prev[t])
        need = ctx.needs_input_grad
        dx = input_grad(Df[..., : 3 * H], w_ih.index_select(0, to_nrz)) if need[0] else None
        dh0 = torch.addcmul(back(dGh[0]), dhs[0], zs[0]) if need[1] else None
        dw_ih = dw_hh = None
        if need[2] or need[3]:
            full = weight_grads(
                Df.reshape(T * B, 4 * H), [[x.reshape(T * B, -1)], [h0, y[:-1].reshape(-1, H)]]
            )
            grads = torch.cat(full, dim=1)  # (4H, I + H)
            I = x.shape[2]
            dw_ih = grads[: 3 * H, :I].index_select(0, to_rzn) if need[2] else None
            dw_hh = grads[H:, I:] if need[3] else None
        sums = Df.sum((0, 1))  # (4H,): n, r, z, n r
        db_ih = sums[: 3 * H].index_select(0, to_rzn) if need[4] else None
        db_hh = sums[H:] if need[5] else None
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None


class GRUResetBefore(torch.autograd.Function):
    """Whole-sequence GRU, the paper's form (reset_after=False), with the hand-derived BPTT above.
    Two products per step: W_h(r,z) h_{t-1}, then W_hn (r_t * h_{t-1})."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        xw = input_projection(x, w_ih, add_biases(b_ih, b_hh))  # (T, B, 3H); all biases add here
        gates_rz = Product(w_hh[: 2 * H], B)  # h -> W_h(r,z) h
        candidate = Product(w_hh[2 * H :], B)  # r*h -> W_hn (r*h)
        new = torch.zeros_like if batch_sizes else torch.empty_like
        rz = new(xw[..., : 2 * H])  # (T, B, 2H)
        rh = new(xw[..., :H])  # (T, B, H): r * h_{t-1}
        n = new(rh)
        y = new(rh)
        steps = active_rows(
            batch_sizes, xw[..., : 2 * H], xw[..., 2 * H :], rz, rz[..., :H], rz[..., H:], rh, n, y
        )
        h = h0
        for xrz_t, xn_t, rz_t, r_t, z_t, rh_t, n_t, y_t in zip(*steps):
            if batch_sizes:
                h = h[: y_t.shape[0]]
            gates_rz(h, add=xrz_t, out=rz_t).sigmoid_()
            torch.mul(r_t, h, out=rh_t)
            candidate(rh_t, add=xn_t, out=n_t).tanh_()
            torch.lerp(n_t, h, z_t, out=y_t)
            h = y_t
        ctx.save_for_backward(x, h0, w_ih, w_hh, rz, rh, n, y)
        ctx.batch_sizes = batch_sizes
        return y, last_valid(y, batch_sizes)

    @staticmethod
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("gru")
        x, h0, w_ih, w_hh, rz, rh, n, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = y.shape
        r, z = rz[..., :H], rz[..., H:]
        h_prev = stack_prev(h0, y)
        A = torch.empty(T, B, 2, H, dtype=y.dtype, device=y.device)  # multiplies dh_t: z~, n~
        torch.mul(h_prev - n, z * (1 - z), out=A[:, :, 0])
        torch.mul(1 - z, 1 - n * n, out=A[:, :, 1])
        A_r = h_prev * r * (1 - r)  # (T, B, H): multiplies d(rh)
        g = add_final_grad(grad_y, grad_hn, bs)
        dG = (torch.zeros if bs else torch.empty)(T, B, 3 * H, dtype=y.dtype, device=y.device)
        dhs, As, A_rs, zs, rs, dzn, dr, dn, drz = active_rows(
            bs, g, A, A_r, z, r, dG[..., H:].view(T, B, 2, H), dG[..., :H], dG[..., 2 * H :], dG[..., : 2 * H]
        )
        g_prev = prev_rows(bs, g)
        back_n = Product(w_hh[2 * H :].t(), B)  # dn~ -> d(rh) = dn~ W_hn
        back_rz = Product(w_hh[: 2 * H].t(), B)  # [dr~, dz~] -> that W_h(r,z)
        drh0 = None
        for t in range(T - 1, -1, -1):
            dh = dhs[t]
            torch.mul(As[t], dh.unsqueeze(1), out=dzn[t])  # dz~, dn~
            drh = back_n(dn[t])
            torch.mul(drh, A_rs[t], out=dr[t])  # dr~
            if t:  # dh_{t-1} += dh_t z_t + d(rh) r_t + [dr~, dz~] W_h(r,z)
                g_prev[t].addcmul_(dh, zs[t]).addcmul_(drh, rs[t])
                back_rz(drz[t], add=g_prev[t], out=g_prev[t])
            else:
                drh0 = drh
        need = ctx.needs_input_grad
        dx = input_grad(dG, w_ih) if need[0] else None
        dh0 = None
        if need[1]:
            dh0 = back_rz(drz[0]).addcmul_(dhs[0], zs[0]).addcmul_(drh0, rs[0])
        dw_ih = dw_hh = None
        if need[2] or need[3]:
            TB = T * B
            dw_ih, dw_hprev, dw_rh = weight_grads(
                dG.reshape(TB, 3 * H), [[x.reshape(TB, -1)], [h0, y[:-1].reshape(-1, H)], [rh.reshape(TB, H)]]
            )
            dw_hh = torch.cat([dw_hprev[: 2 * H], dw_rh[2 * H :]]) if need[3] else None
            dw_ih = dw_ih if need[2] else None
        db = dG.sum((0, 1)) if need[4] or need[5] else None
        return dx, dh0, dw_ih, dw_hh, db, db, None


def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, batch_sizes=None, impl="fused"):
    """GRU over a whole sequence: x (T, B, I), h0 (B, H) or None (zeros) -> (y (T, B, H),
    h_n (B, H)). `reset_after` picks the form (see the module docstring); `batch_sizes` as in
    PackedSequence; `impl="fused"` runs the hand-derived BPTT, `"loop"` the step equations."""
    if not isinstance(reset_after, bool):
        raise RnnkitTypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
    kernel = GRUResetAfter if reset_after else GRUResetBefore
    return run_kernel(
        x,
        {"h0": h0},
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        gates=3,
        batch_sizes=batch_sizes,
        impl=impl,
        step=lambda x_t, s: gru_step(x_t, s, w_ih, w_hh, b_ih, b_hh, reset_after),
        fused=lambda h0, bs: kernel.apply(x, h0, w_ih, w_hh, b_ih, b_hh, bs),
    )


class GRUCell(CellBase):
    """One GRU step, drop-in for `torch.nn.GRUCell` (same arguments, parameters and shapes), plus
    `reset_after` (False: the original form of Cho et al. 2014).

    forward(input (B, I) or (I,), hx (B, H) or (H,) or None) -> h' of hx's shape.
    """

    gates = 3

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True):
        if not isinstance(reset_after, bool):
            raise RnnkitTypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self.reset_after = reset_after

    def forward(self, input, hx=None):
        x, (h,), unbatched = self._batched(input, {"hx": hx})
        (h,) = gru_step(x, (h,), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.reset_after)
        return h.squeeze(0) if unbatched else h
