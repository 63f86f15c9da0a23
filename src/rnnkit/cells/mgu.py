"""Minimal gated unit (Zhou, Wu, Zhang and Zhou 2016, "Minimal gated unit for recurrent neural
networks"): a GRU with a single gate f that both resets and updates, gate order f, n:

    f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    n_t = tanh(W_in x_t + b_in + W_hn (f_t * h_{t-1}) + b_hn)
    h_t = (1 - f_t) * h_{t-1} + f_t * n_t            (f plays the role of GRU's 1 - z)

Shapes: x_t (B, I), h_t (B, H); W_ih (2H, I), W_hh (2H, H), b_ih and b_hh (2H,), blocks f, n.

BPTT (the fused backward), walking t from T to 1, with dh_t the full gradient at h_t:
    dn~ = dh_t f_t (1 - n_t^2)                                  (n's pre-activation)
    d(fh) = dn~ W_hn
    df~ = [dh_t (n_t - h_{t-1}) + d(fh) h_{t-1}] f_t (1 - f_t)    (f's pre-activation)
    dh_{t-1} += dh_t (1 - f_t) + d(fh) f_t + df~ W_hf
and after the loop, as single GEMMs over all steps: dW_ih = sum_t [df~, dn~]^T x_t,
dW_hf = sum_t df~^T h_{t-1}, dW_hn = sum_t dn~^T (f_t * h_{t-1}), the biases as sums of
[df~, dn~], dx_t = [df~, dn~] W_ih.
"""

from __future__ import annotations

import torch

from rnnkit.cells._bptt import (
    active_rows,
    add_biases,
    add_final_grad,
    input_grad,
    input_projection,
    last_valid,
    prev_rows,
    stack_prev,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._unit import Unit, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product, weight_grads
from rnnkit.cells.speed.tanh import Tanh


def mgu_step(x_t, state, w_ih, w_hh, b_ih, b_hh, *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h,)) -> (h',). `rec_mask` (B, H), if given,
    multiplies h_{t-1} where it enters W_hh (recurrent dropout, `rnnkit.cells._regularize`); the
    final mix (1 - f_t) * h_{t-1} keeps the unmasked state."""
    (h,) = state
    H = h.shape[1]
    h_in = h if rec_mask is None else h * rec_mask
    xf, xn = linear(x_t, w_ih, b_ih).chunk(2, dim=1)
    b_hf, b_hn = (None, None) if b_hh is None else b_hh.chunk(2)
    f = torch.sigmoid(xf + linear(h_in, w_hh[:H], b_hf))
    n = torch.tanh(xn + linear(f * h_in, w_hh[H:], b_hn))
    return ((1 - f) * h + f * n,)


class MGUFused(torch.autograd.Function):
    """Whole-sequence MGU with the hand-derived BPTT backward of the module docstring. Two
    products per step: W_hf h_{t-1}, then W_hn (f_t * h_{t-1}). The loops over time run compiled
    on CPU where `rnnkit.cells.speed.native.ops` allows (speed/cpp/mgu.cpp, same buffers and
    results); otherwise `_forward_steps` and `_backward_steps`, the compiled ones' reference in
    tests/test_native.py."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        bias = add_biases(b_ih, b_hh)  # all biases add to the input projection here
        b_f, b_n = (None, None) if bias is None else bias.split(H)
        # The projections are computed into the buffers of f and n, and each step adds its
        # recurrent product in place: a product into its own input needs no copy.
        tanh_ = Tanh(x)  # n's pre-activation is made as it wants it (doubled on CPU)
        f = input_projection(x, w_ih[:H], b_f)  # (T, B, H)
        n = input_projection(x, tanh_.prep(w_ih[H:]), tanh_.prep(b_n))  # (T, B, H)
        new = workspace.allocator(zero=bool(batch_sizes))
        fh = new(f)  # (T, B, H): f * h_{t-1}
        y = new(f)
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/mgu.cpp)
            w_hf_t, w_hn_t = (w.t().contiguous() for w in (w_hh[:H], tanh_.prep(w_hh[H:])))
            native.mgu_forward(f, n, fh, y, h0.contiguous(), w_hf_t, w_hn_t, batch_sizes or [])
        else:
            _forward_steps(f, n, fh, y, h0, w_hh, batch_sizes, tanh_)
        ctx.save_for_backward(x, h0, w_ih, w_hh, f, fh, n, y)
        ctx.batch_sizes, ctx.native = batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("MGU")
        x, h0, w_ih, w_hh, f, fh, n, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = y.shape
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): accumulates dh_t in place
        dG = workspace.empty((T, B, 2 * H), y, zero=bool(bs))
        if ctx.native is not None:
            dfh0 = h0.new_empty(h0.shape)
            w_hf, w_hn = w_hh[:H].contiguous(), w_hh[H:].contiguous()
            ctx.native.mgu_backward(g, f, n, y, h0.contiguous(), w_hf, w_hn, bs or [], dG, dfh0)
        else:
            dfh0 = _backward_steps(g, f, n, y, h0, w_hh, bs, dG)
        need = ctx.needs_input_grad
        dx = input_grad(dG, w_ih) if need[0] else None
        if need[1]:  # dL/dh_0 = dh_0 (1 - f_0) + d(fh)_0 f_0 + df~_0 W_hf
            dh0 = Product(w_hh[:H].t(), B)(dG[0, :, :H]).addcmul_(g[0], 1 - f[0]).addcmul_(dfh0, f[0])
        else:
            dh0 = None
        dw_ih = dw_hh = None
        if need[2] or need[3]:
            TB = T * B
            dw_ih, dw_hprev, dw_fh = weight_grads(
                dG.reshape(TB, 2 * H), [[x.reshape(TB, -1)], [h0, y[:-1].reshape(-1, H)], [fh.reshape(TB, H)]]
            )
            dw_hh = torch.cat([dw_hprev[:H], dw_fh[H:]]) if need[3] else None
            dw_ih = dw_ih if need[2] else None
        db = dG.sum((0, 1)) if need[4] or need[5] else None
        return dx, dh0, dw_ih, dw_hh, db, db, None


def _forward_steps(f, n, fh, y, h0, w_hh, batch_sizes, tanh_) -> None:
    """The forward loop in eager ops (the compiled one's reference), in place on the buffers of
    `MGUFused.forward`: f and n hold the input projections and become f_t and n_t."""
    B, H = y.shape[1], y.shape[2]
    gate = Product(w_hh[:H], B)  # h -> W_hf h
    candidate = Product(tanh_.prep(w_hh[H:]), B)  # f*h -> W_hn (f*h) (times k)
    h = h0
    for f_t, fh_t, n_t, y_t in zip(*active_rows(batch_sizes, f, fh, n, y)):
        if batch_sizes:  # the sequences still running are the first rows
            h = h[: y_t.shape[0]]
        gate(h, add=f_t, out=f_t).sigmoid_()
        torch.mul(f_t, h, out=fh_t)
        tanh_(candidate(fh_t, add=n_t, out=n_t))
        torch.lerp(h, n_t, f_t, out=y_t)  # (1 - f) h + f n
        h = y_t


def _backward_steps(g, f, n, y, h0, w_hh, bs, dG):
    """The backward loop in eager ops (the compiled one's reference): dh_t accumulated in g,
    [df~, dn~] into dG (module docstring). Returns d(fh) of the first step, for dL/dh_0."""
    T, B, H = y.shape
    h_prev = stack_prev(h0, y)
    # Factors that depend only on the forward pass, for all steps at once outside the loop.
    df_dh = f * (1 - f)  # (T, B, H)
    A = workspace.empty((T, B, 2, H), y)  # multiplies dh_t: f~, n~
    torch.mul(n - h_prev, df_dh, out=A[:, :, 0])
    torch.mul(f, 1 - n * n, out=A[:, :, 1])
    A_fh = h_prev * df_dh  # multiplies d(fh) for df~
    one_minus_f = 1 - f
    dhs, As, A_fhs, fs, omfs, dGs, dfs, dns = active_rows(
        bs, g, A, A_fh, f, one_minus_f, dG.view(T, B, 2, H), dG[..., :H], dG[..., H:]
    )
    g_prev = prev_rows(bs, g)
    back_n = Product(w_hh[H:].t(), B)  # dn~ -> d(fh) = dn~ W_hn
    back_f = Product(w_hh[:H].t(), B)  # df~ -> df~ W_hf
    dfh0 = None
    for t in range(T - 1, -1, -1):
        dh = dhs[t]
        torch.mul(As[t], dh.unsqueeze(1), out=dGs[t])  # df~ (direct part), dn~
        dfh = back_n(dns[t])
        dfs[t].addcmul_(dfh, A_fhs[t])  # df~ += d(fh) h_{t-1} f (1 - f)
        if t:  # dh_{t-1} += dh_t (1 - f_t) + d(fh) f_t + df~ W_hf
            g_prev[t].addcmul_(dh, omfs[t]).addcmul_(dfh, fs[t])
            back_f(dfs[t], add=g_prev[t], out=g_prev[t])
        else:
            dfh0 = dfh
    return dfh0


def mgu(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, batch_sizes=None, impl="fused"):
    """MGU over a whole sequence: x (T, B, I), h0 (B, H) or None (zeros) -> (y (T, B, H),
    h_n (B, H)). `batch_sizes` as in PackedSequence; `impl="fused"` runs the hand-derived BPTT,
    `"loop"` the step equations under autograd."""
    return run_kernel(
        x,
        {"h0": h0},
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        gates=2,
        batch_sizes=batch_sizes,
        impl=impl,
        step=lambda x_t, s: mgu_step(x_t, s, w_ih, w_hh, b_ih, b_hh),
        fused=lambda h0, bs: MGUFused.apply(x, h0, w_ih, w_hh, b_ih, b_hh, bs),
    )


class MGUUnit(Unit):
    """The MGU's `Cell` (registered as "mgu"): the equations above; parameters as
    `rnnkit.cells._unit.Unit`."""

    gates = 2
    gate_names = ("f", "n")

    def step(self, x_t, state, w, rec_mask=None):
        return mgu_step(x_t, state, *torch_weights(w), rec_mask=rec_mask)

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        y, h = mgu(x, state[0], *torch_weights(w), batch_sizes=batch_sizes, impl=impl)
        return y, (h,)
