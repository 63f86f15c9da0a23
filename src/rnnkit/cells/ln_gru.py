"""Layer-normalised GRU (Ba, Kiros and Hinton 2016, "Layer Normalization", section 3.1), torch's
GRU (the reset-after form of `rnnkit.cells.gru`, gate order r, z, n) with a layer normalisation
(`rnnkit.cells._layernorm`) on each of its two pre-activations:

    [xr, xz, xn]_t = LN_ih(W_ih x_t) + b_ih                  (B, 3H), the input side
    [hr, hz, hn]_t = LN_hh(W_hh h_{t-1}) + b_hh              (B, 3H), the recurrent side
    r_t = sigmoid(xr_t + hr_t)
    z_t = sigmoid(xz_t + hz_t)
    n_t = tanh(xn_t + r_t * hn_t)         r multiplies the n block of the normalised recurrent side
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Each LN normalises over the whole 3H vector (all gates at once) with its own gain and shift:
LN_ih (3H,) and LN_hh (3H,), gains initialised to 1 and shifts to 0. Other shapes as torch's GRU:
x_t (B, I), h_t (B, H), W_ih (3H, I), W_hh (3H, H), b_ih and b_hh (3H,).

Biases: each bias and the shift of the same LN enter only through their sum (b_ih with LN_ih's,
b_hh with LN_hh's). They are kept (with `bias=True`, as torch) so that the parameter layout is
torch's plus the LN parameters (a plain GRU's weights load with `strict=False`) and `bias=False`
still removes them; each pair gets equal gradients.

The paper's form (`reset_after=False`, n_t = tanh(W_in x_t + W_hn (r_t * h_{t-1}) + b_n)) is not
offered with layer normalisation: there W_hn's product needs r_t first, so no single recurrent
pre-activation exists to normalise as a whole; asking for it raises RnnkitUnsupportedError.

BPTT (the fused backward), t from T to 1, with dh_t the full gradient at h_t, a_t = W_hh h_{t-1}
the raw recurrent product, and ~ marking a pre-activation's gradient, as `rnnkit.cells.gru`:
    dn~_t = dh_t (1 - z_t)(1 - n_t^2),   dz~_t = dh_t (h_{t-1} - n_t) z_t (1 - z_t)
    dr~_t = dn~_t hn_t r_t (1 - r_t)
    da_t = LN_hh'([dr~_t, dz~_t, dn~_t r_t])                  (the LN backward of _layernorm)
    dh_{t-1} += dh_t z_t + da_t W_hh
The loop computes only what the recurrence needs, da_t; LN_hh's gain and shift gradients (sums
over all rows and steps) come after it from one LN backward over all steps. The input side is
not recurrent: W_ih x_t for all steps is one GEMM and LN_ih one normalisation before the loop,
and after it, [dr~, dz~, dn~]_t (its gradient) goes back through LN_ih for all steps at once,
then dx_t, dW_ih and dW_hh = sum_t da_t^T h_{t-1} as single GEMMs.
"""

from __future__ import annotations

import torch

from rnnkit._checks import check_bool
from rnnkit.cells._bptt import (
    active_rows,
    add_final_grad,
    gru_shared_factors_,
    input_grad,
    input_projection,
    last_valid,
    prev_rows,
    zero_padding_,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._layernorm import (
    EPS,
    GRU_SITES,
    check_layer_norm_args,
    layer_norm,
    layer_norm_args,
    layer_norm_shapes,
    normalize,
    normalize_backward,
    stacked_stats,
)
from rnnkit.cells._unit import Unit, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product, weight_grads
from rnnkit.cells.speed.tanh import Tanh
from rnnkit.errors import RnnkitUnsupportedError


def ln_gru_step(x_t, state, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h,)) -> (h',); ln_* = (gain, shift).
    `rec_mask` (B, H), if given, multiplies h_{t-1} where it enters W_hh (recurrent dropout); the
    final mix z_t * h_{t-1} keeps the unmasked state."""
    (h,) = state
    h_in = h if rec_mask is None else h * rec_mask
    xs = layer_norm(linear(x_t, w_ih, None), ln_ih)  # (B, 3H)
    hs = layer_norm(linear(h_in, w_hh, None), ln_hh)  # (B, 3H)
    xs = xs if b_ih is None else xs + b_ih
    hs = hs if b_hh is None else hs + b_hh
    xr, xz, xn = xs.chunk(3, dim=1)
    hr, hz, hn = hs.chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return ((1 - z) * n + z * h,)


def check_reset_after(reset_after, owner: str) -> None:
    """reset_after must be a bool, and True (torch's form) with layer normalisation."""
    check_bool("reset_after", reset_after)
    if not reset_after:
        raise RnnkitUnsupportedError(
            f"layer_norm=True in {owner} needs reset_after=True (torch's form): with "
            "reset_after=False, W_hn multiplies r_t * h_{t-1}, so there is no single recurrent "
            "pre-activation to normalise; use reset_after=True, or layer_norm=False"
        )


class LNGRUFused(torch.autograd.Function):
    """Whole-sequence LN-GRU with the hand-derived BPTT of the module docstring.

    `shift_x` (3H,) is what the step adds outside r's product: b_ih and LN_ih's shift, plus the
    r, z blocks of b_hh and LN_hh's shift; `s_n` (H,) is the n block of those two, inside it.

    The two loops over time run compiled on CPU where `rnnkit.cells.speed.native.ops` allows
    (native/ln_gru.cpp, same buffers and results); otherwise the Python loops below
    (`_forward_steps`, `_backward_steps`), which are also the compiled ones' reference in
    tests/test_native.py.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, w_hh, g_ih, shift_x, g_hh, s_n, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        shift = torch.cat([s_n.new_zeros(2 * H), s_n])  # (3H,): LN_hh's shift inside the loop
        # n's pre-activation is made as `Tanh` wants it (the n blocks of both LNs' gains and
        # shifts doubled on CPU: k below).
        tanh_ = Tanh(x)
        # The input side for all steps before the loop: one GEMM (kept for LN_ih's backward) and
        # one normalisation, whose output `rzn` is then the step's buffer: its r, z blocks turn
        # into the gates in place, its n block receives k hn_t (which r multiplies).
        px = input_projection(x, w_ih, None)  # (T, B, 3H)
        rzn, x_mean, x_rstd = normalize(px, tanh_.prep(g_ih, 2 * H), tanh_.prep(shift_x, 2 * H), pooled=True)
        n = workspace.empty((T, B, H), x).copy_(rzn[..., 2 * H :])  # (T, B, H): k xn, then n in place
        rzn[..., 2 * H :] = 0
        a = workspace.empty_like(
            rzn, zero=bool(batch_sizes)
        )  # (T, B, 3H): W_hh h_{t-1}, for LN_hh's backward
        y = workspace.empty_like(n, zero=bool(batch_sizes))  # (T, B, H)
        g_hh2, shift2 = tanh_.prep(g_hh, 2 * H), tanh_.prep(shift, 2 * H)
        native = _native.ops(x)
        if native is not None:
            stats = x.new_zeros(2, T, B)  # LN_hh's (mean, 1/sigma), every row and step
            native.ln_gru_forward(
                rzn,
                n,
                a,
                y,
                h0.contiguous(),
                w_hh.t().contiguous(),
                g_hh2,
                shift2,
                batch_sizes or [],
                stats,
                EPS,
            )
        else:
            stats = _forward_steps(rzn, n, a, y, h0, w_hh, g_hh2, shift2, batch_sizes, tanh_)
        tanh_.undo_(rzn[..., 2 * H :])  # hn itself, for the backward (exact)
        # All through save_for_backward: y kept as an attribute of ctx would be a reference
        # cycle (y -> its grad_fn -> ctx -> y) that only the cycle collector frees.
        ctx.save_for_backward(x, h0, w_ih, w_hh, g_ih, shift_x, g_hh, shift, px, x_mean, x_rstd, rzn, a, n, y)
        ctx.stats, ctx.batch_sizes, ctx.native = stats, batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("layer-norm gru")
        x, h0, w_ih, w_hh, g_ih, shift_x, g_hh, shift, px, x_mean, x_rstd, rzn, a, n, y = ctx.saved_tensors
        bs, need = ctx.batch_sizes, ctx.needs_input_grad
        T, B, H = y.shape
        r, z, hn = rzn.split(H, dim=2)  # (T, B, H) each
        # The factors multiplying dh_t, for all steps at once outside the loop: R = [dr~, dz~, dn~ r]
        # / dh_t, the gradient at LN_hh's output per unit dh_t, in the order r, z, n; f_n = dn~/dh_t.
        R = workspace.empty((T, B, 3, H), y)
        f_r, f_z, f_nr = R.unbind(2)
        f_n = workspace.empty_like(y)
        gru_shared_factors_(f_n, f_z, z, n, h0, y)
        torch.mul(f_n, r, out=f_nr)
        torch.mul(f_nr, hn, out=f_r)
        f_r.addcmul_(f_r, r, value=-1)  # dr~/dh = dn~/dh hn r (1 - r)
        # Each step scales its factors by dh_t in place. Rows past a sequence's end must read zero.
        D = zero_padding_(R.view(T, B, 3 * H), bs)  # (T, B, 3H)
        da = workspace.empty_like(a, zero=bool(bs))  # (T, B, 3H)
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): accumulates dh_t in place
        if ctx.native is not None:
            ctx.native.ln_gru_backward(
                D, g, rzn, a, ctx.stats, w_hh.contiguous(), g_hh.contiguous(), bs or [], da
            )
            a_mean, a_rstd = ctx.stats.unsqueeze(-1)
        else:
            _backward_steps(R, D, g, z, a, da, w_hh, g_hh, ctx.stats, bs)
            # the loop's statistics stacked (a row past a sequence's end has D = 0 and adds nothing)
            a_mean, a_rstd = stacked_stats(ctx.stats, a, bs)
        TB = T * B
        # LN_hh's gain and shift for all steps at once, then D becomes the input side's gradient,
        # whose n block is dn~ itself: f_n dh.
        dg_hh, ds_hh = normalize_backward(D, a, a_mean, a_rstd, g_hh, shift, (False, need[6], need[7]))[1:]
        D[..., 2 * H :] = zero_padding_(f_n.mul_(g), bs)
        x_mask = (True, need[4], need[5])
        dpx, dg_ih, dshift_x = normalize_backward(D, px, x_mean, x_rstd, g_ih, shift_x, x_mask, pooled=True)
        dx = input_grad(dpx, w_ih) if need[0] else None
        dh0 = torch.addcmul(Product(w_hh.t(), B)(da[0]), g[0], z[0]) if need[1] else None
        dw_ih = weight_grads(dpx.view(TB, -1), [[x.reshape(TB, -1)]])[0] if need[2] else None
        dw_hh = weight_grads(da.view(TB, -1), [[h0, y[:-1].reshape(TB - B, H)]])[0] if need[3] else None
        ds_n = None if ds_hh is None else ds_hh[2 * H :]
        return dx, dh0, dw_ih, dw_hh, dg_ih, dshift_x, dg_hh, ds_n, None


def _forward_steps(rzn, n, a, y, h0, w_hh, g_hh2, shift2, batch_sizes, tanh_) -> list:
    """The forward loop in eager ops (the compiled one's reference), in place on the buffers of
    `LNGRUFused.forward`; returns LN_hh's statistics per step, (mean, 1/sigma), each (n, 1)."""
    B, H = y.shape[1], y.shape[2]
    recurrent = Product(w_hh, B)  # h -> W_hh h
    steps = active_rows(
        batch_sizes, rzn, rzn[..., : 2 * H], rzn[..., :H], rzn[..., H : 2 * H], rzn[..., 2 * H :], a, n, y
    )
    stats = []
    h = h0
    ln = torch.native_layer_norm  # normalize's op, called directly in the loop
    for rzn_t, rz_t, r_t, z_t, hn_t, a_t, n_t, y_t in zip(*steps):
        if batch_sizes:  # the sequences still running are the first rows
            h = h[: y_t.shape[0]]
        recurrent(h, out=a_t)  # (n, 3H)
        a_ln, a_mean, a_rstd = ln(a_t, (3 * H,), g_hh2, shift2, EPS)
        rzn_t.add_(a_ln)  # [xr + hr, xz + hz, k hn]
        rz_t.sigmoid_()
        tanh_(n_t.addcmul_(r_t, hn_t))
        torch.lerp(n_t, h, z_t, out=y_t)  # (1 - z) n + z h
        stats.append((a_mean, a_rstd))
        h = y_t
    return stats


def _backward_steps(R, D, g, z, a, da, w_hh, g_hh, stats, bs) -> None:
    """The backward loop in eager ops (the compiled one's reference): R scaled by dh_t into D (a
    view of it), LN_hh's backward into da, dh_t accumulated in g (`LNGRUFused.backward`)."""
    T, B, H = g.shape
    dhs, dh3s, Rs, Ds, zs, as_, das = active_rows(bs, g, g.unsqueeze(2), R, D, z, a, da)
    g_prev = prev_rows(bs, g)
    back = Product(w_hh.t(), B)  # da -> da W_hh
    ln_back, dx_only = torch.ops.aten.native_layer_norm_backward, (True, False, False)
    for t in range(T - 1, -1, -1):
        a_mean, a_rstd = stats[t]
        dh = dhs[t]
        torch.mul(Rs[t], dh3s[t], out=Rs[t])  # [dr~, dz~, dn~ r]: at LN_hh's output
        das[t].copy_(ln_back(Ds[t], as_[t], (3 * H,), a_mean, a_rstd, g_hh, None, dx_only)[0])
        if t:  # dh_{t-1} += dh_t z_t + da_t W_hh
            g_prev[t].addcmul_(dh, zs[t])
            back(das[t], add=g_prev[t], out=g_prev[t])


def ln_gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, ln_ih, ln_hh, batch_sizes=None, impl="fused"):
    """Layer-normalised GRU over a whole sequence: x (T, B, I), h0 (B, H) or None (zeros) ->
    (y (T, B, H), h_n (B, H)). ln_ih, ln_hh: (gain, shift) pairs of shape (3H,). Otherwise as
    `rnnkit.functional.gru` in its default (reset-after) form: `batch_sizes` as in PackedSequence,
    `impl="fused"` the hand-derived BPTT, `"loop"` the step equations under autograd."""
    if isinstance(w_ih, torch.Tensor) and w_ih.dim() == 2 and w_ih.shape[0] % 3 == 0:
        check_layer_norm_args(GRU_SITES, w_ih.shape[0] // 3, w_ih, ln_ih=ln_ih, ln_hh=ln_hh)

    def fused(h0, bs):
        H = w_hh.shape[1]
        s_hh = ln_hh[1] if b_hh is None else ln_hh[1] + b_hh  # (3H,): the recurrent side's shift
        s_ih = ln_ih[1] if b_ih is None else ln_ih[1] + b_ih
        shift_x = s_ih + torch.cat([s_hh[: 2 * H], s_hh.new_zeros(H)])  # what adds outside r's product
        return LNGRUFused.apply(x, h0, w_ih, w_hh, ln_ih[0], shift_x, ln_hh[0], s_hh[2 * H :], bs)

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
        step=lambda x_t, s: ln_gru_step(x_t, s, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh),
        fused=fused,
    )


class LNGRUUnit(Unit):
    """The layer-normalised GRU's `Cell` (registered as "ln_gru"): the equations above (torch's
    reset-after form); torch's GRU parameters (`rnnkit.cells._unit.Unit`), then the gains
    layer_norm_{ih,hh}_weight (3H,) (1 at first) and shifts layer_norm_{ih,hh}_bias (3H,) (0)."""

    gates = 3
    gate_names = ("r", "z", "n")

    def extra_shapes(self):
        return layer_norm_shapes(GRU_SITES, self.hidden_size)

    def step(self, x_t, state, w, rec_mask=None):
        return ln_gru_step(x_t, state, *torch_weights(w), **layer_norm_args(w, GRU_SITES), rec_mask=rec_mask)

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        lns = layer_norm_args(w, GRU_SITES)
        y, h = ln_gru(x, state[0], *torch_weights(w), **lns, batch_sizes=batch_sizes, impl=impl)
        return y, (h,)
