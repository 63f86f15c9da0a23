"""Layer-normalised LSTM (Ba, Kiros and Hinton 2016, "Layer Normalization", section 3.1 and
appendix), torch's LSTM with three layer normalisations (`rnnkit.cells._layernorm`), gate order
i, f, g, o, and the optional projection of `rnnkit.cells.lstm`:

    [i~, f~, g~, o~]_t = LN_ih(W_ih x_t) + b_ih + LN_hh(W_hh h_{t-1}) + b_hh    (B, 4H)
    i_t, f_t, o_t = sigmoid(i~_t), sigmoid(f~_t), sigmoid(o~_t);   g_t = tanh(g~_t)
    c_t = f_t * c_{t-1} + i_t * g_t
    m_t = o_t * tanh(LN_c(c_t))
    h_t = m_t                    (no projection)
    h_t = W_hr m_t               (with projection)

Each LN normalises over its whole vector (the 4H pre-activation, all gates at once; the H cell
state) with its own gain and shift: LN_ih (4H,), LN_hh (4H,), LN_c (H,), gains initialised to 1
and shifts to 0. Other shapes as `rnnkit.cells.lstm`: x_t (B, I), c_t and m_t (B, H), h_t (B, P);
W_ih (4H, I), W_hh (4H, P), b_ih and b_hh (4H,), W_hr (P, H). The cell state c_t itself is not
normalised: only its copy read by the output is, so the memory keeps its scale across steps.

Biases: b_ih, b_hh and the shifts of LN_ih and LN_hh enter only through their sum. The biases
are kept (with `bias=True`, as torch) so that the parameter layout is torch's plus the LN
parameters: a plain LSTM's weights load into an LN-LSTM (`strict=False`), `bias=False` still
removes them, and the paper's equation has a bias b besides the shifts. The four sums get equal
gradients.

BPTT (the fused backward), t from T to 1, dh_t = g_t + W_hh^T da_{t+1} (g_t the gradient arriving
from y_t, plus dL/dh_T at the last step), a_t = W_hh h_{t-1} the raw recurrent product, and ~
marking a pre-activation's gradient:
    dm_t = dh_t                  (or W_hr^T dh_t with projection; dW_hr += dh_t^T m_t)
    dl_t = dm_t o_t (1 - tanh^2 LN_c(c_t))                   gradient at LN_c's output
    dc_t = dc_{t+1} f_{t+1} + LN_c'(dl_t)                    (the LN backward of _layernorm)
    dG_t = [dc_t g_t i_t(1-i_t), dc_t c_{t-1} f_t(1-f_t), dc_t i_t (1-g_t^2),
            dm_t tanh(LN_c(c_t)) o_t(1-o_t)]                 (pre-activation gradients)
    da_t = LN_hh'(dG_t)
The loop computes only what the recurrence needs; the LN parameters' gradients (sums over all
rows and steps of dG_t * ahat_t for LN_hh's gain, of dl_t * chat_t and dl_t for LN_c's) come
after it from one LN backward over all steps each, with dl_t kept from the loop. The input side
is not recurrent: W_ih x_t for all steps is one GEMM and LN_ih one normalisation before the
loop, and after it, dG (its gradient) goes back through LN_ih for all steps at once, then
dx_t = dp_t W_ih, dW_ih = sum_t dp_t^T x_t and dW_hh = sum_t da_t^T h_{t-1} as single GEMMs (dp
the gradient at W_ih x_t); every bias and shift outside a product gets sum_t dG_t.
"""

from __future__ import annotations

import torch

from rnnkit.cells import _workspace as workspace
from rnnkit.cells._common import (
    active_rows,
    add_final_grad,
    forbid_double_backward,
    ifog_order,
    input_grad,
    input_projection,
    last_valid,
    linear,
    next_rows,
    run_kernel,
    weight_grad,
    without_cycle_gc,
)
from rnnkit.cells._gemm import Product, weight_grads
from rnnkit.cells._layernorm import (
    EPS,
    check_layer_norm_args,
    layer_norm,
    normalize,
    normalize_backward,
    stacked_stats,
)


def ln_lstm_step(x_t, state, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c, w_hr=None, *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h, c)) -> (h', c'); ln_* = (gain, shift).
    `rec_mask` (B, P), if given, multiplies h_{t-1} where it enters W_hh (recurrent dropout)."""
    h, c = state
    h_in = h if rec_mask is None else h * rec_mask
    pre = layer_norm(linear(x_t, w_ih, None), ln_ih) + layer_norm(linear(h_in, w_hh, None), ln_hh)  # (B, 4H)
    for b in (b_ih, b_hh):
        pre = pre if b is None else pre + b
    i, f, g, o = pre.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m = torch.sigmoid(o) * torch.tanh(layer_norm(c, ln_c))
    return (m if w_hr is None else linear(m, w_hr, None)), c


class LNLSTMFused(torch.autograd.Function):
    """Whole-sequence LN-LSTM with the hand-derived BPTT of the module docstring.

    `shift` (4H,) is every constant the step adds outside a product: b_ih + b_hh plus the shifts
    of LN_ih and LN_hh. As in `LSTMFused` the gate blocks run in the order i, f, o, g inside (one
    sigmoid for three gates); a layer norm is blind to the order of its features, so the rows of
    W_ih and W_hh and the gains are permuted alike.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, c0, w_ih, w_hh, g_ih, shift, g_hh, g_c, s_c, w_hr, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[0] // 4
        order = ifog_order(H, x.device)
        w_ih_p, g_ih_p, shift_p, g_hh_p = (v.index_select(0, order) for v in (w_ih, g_ih, shift, g_hh))
        # The input side for all steps before the loop: one GEMM (kept for LN_ih's backward) and
        # one normalisation, whose output is then the gates' buffer, turned into gates in place.
        px = input_projection(x, w_ih_p, None)  # (T, B, 4H)
        gates, x_mean, x_rstd = normalize(px, g_ih_p, shift_p, pooled=True)  # (T, B, 4H), (T, B, 1) x2
        recurrent = Product(w_hh.index_select(0, order), B)  # h -> W_hh h
        P = H if w_hr is None else w_hr.shape[0]
        a, c, tanh_c, y = (workspace.empty((T, B, n), x, zero=bool(batch_sizes)) for n in (4 * H, H, H, P))
        # a: W_hh h_{t-1}, kept for LN_hh's backward; tanh_c: tanh(LN_c(c_t))
        m = y if w_hr is None else workspace.empty((T, B, H), x, zero=bool(batch_sizes))  # (T, B, H)
        project = None if w_hr is None else Product(w_hr, B)
        i, f, o, g = gates.split(H, dim=-1)
        steps = active_rows(batch_sizes, gates, gates[..., : 3 * H], a, i, f, o, g, c, tanh_c, m)
        steps.append(steps[-1] if w_hr is None else active_rows(batch_sizes, y)[0])  # y is m
        stats = []  # per step, LN_hh's and LN_c's (mean, 1/sigma), each (n, 1)
        h, c_prev = h0, c0
        ln = torch.native_layer_norm  # normalize's op, called directly in the loop
        for G_t, sig_t, a_t, i_t, f_t, o_t, g_t, c_t, tc_t, m_t, y_t in zip(*steps):
            if batch_sizes:  # the sequences still running are the first rows
                h, c_prev = h[: G_t.shape[0]], c_prev[: G_t.shape[0]]
            recurrent(h, out=a_t)  # (n, 4H)
            a_ln, a_mean, a_rstd = ln(a_t, (4 * H,), g_hh_p, None, EPS)
            G_t.add_(a_ln)  # the pre-activations
            sig_t.sigmoid_()
            g_t.tanh_()
            torch.mul(f_t, c_prev, out=c_t)
            c_t.addcmul_(i_t, g_t)  # c = f * c_{t-1} + i * g
            c_ln, c_mean, c_rstd = ln(c_t, (H,), g_c, s_c, EPS)
            torch.tanh(c_ln, out=tc_t)
            torch.mul(o_t, tc_t, out=m_t)
            if project is not None:
                project(m_t, out=y_t)
            stats.append((a_mean, a_rstd, c_mean, c_rstd))
            h, c_prev = y_t, c_t
        # All through save_for_backward: y kept as an attribute of ctx would be a reference
        # cycle (y -> its grad_fn -> ctx -> y) that only the cycle collector frees.
        kept = (px, x_mean, x_rstd, gates, a, c, tanh_c, m, y)
        ctx.save_for_backward(x, h0, c0, w_ih_p, w_hh, g_ih_p, shift_p, g_hh_p, g_c, s_c, w_hr, *kept)
        ctx.stats, ctx.batch_sizes = stats, batch_sizes
        return y, last_valid(y, batch_sizes), last_valid(c, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn, grad_cn):
        forbid_double_backward("layer-norm lstm")
        x, h0, c0, w_ih_p, w_hh, g_ih_p, shift_p, g_hh_p, g_c, s_c, w_hr, *kept = ctx.saved_tensors
        px, x_mean, x_rstd, gates, a, c, tanh_c, m, y = kept
        bs, need = ctx.batch_sizes, ctx.needs_input_grad
        T, B, H = c.shape
        order = ifog_order(H, c.device)
        i, f, o, g = gates.split(H, dim=-1)
        # Forward-only factors, as in LSTMFused: K (T, B, 4, H) multiplies dc (i, f, g blocks) or
        # dm (o block); E = o (1 - tanh^2) carries dm to LN_c's output.
        # Written in place, without (T, B, H) temporaries (fresh buffers fault in page by page).
        K = workspace.empty((T, B, 4, H), c)
        sig = gates[..., : 3 * H].unflatten(-1, (3, H))  # (T, B, 3, H): i, f, o
        torch.addcmul(sig, sig, sig, value=-1, out=K[:, :, :3])  # sigma (1 - sigma)
        K[:, :, 0].mul_(g)
        K[0, :, 1].mul_(c0)  # times c_{t-1}
        K[1:, :, 1].mul_(c[:-1])
        K[:, :, 2].mul_(tanh_c)
        one = c.new_ones(()).expand_as(c)
        torch.addcmul(one, g, g, value=-1, out=K[:, :, 3]).mul_(i)  # (1 - g^2) i
        E = torch.addcmul(one, tanh_c, tanh_c, value=-1, out=workspace.empty_like(c)).mul_(o)  # (T, B, H)
        g_h = add_final_grad(grad_y, grad_hn, bs)  # (T, B, P): dL/dy_t, plus dL/dh_T
        dG, da = (
            workspace.empty_like(a, zero=bool(bs)) for _ in range(2)
        )  # (T, B, 4H): pre-activations; W_hh h_{t-1}
        dl = workspace.empty_like(
            c, zero=bool(bs)
        )  # (T, B, H): the gradient at LN_c's output, kept for its gain and shift
        dG4 = dG.view(T, B, 4, H)
        carry = grad_cn.clone()  # dc_{t+1} f_{t+1}
        dc = torch.empty(B, 1, H, dtype=c.dtype, device=c.device)  # dc_t, also seen as (B, H)
        gs, Ks, K_os, Es, fs, cs, as_, das, dGs, dG4s, dGos, dls = active_rows(
            bs, g_h, K, K[:, :, 2], E, f, c, a, da, dG, dG4, dG4[:, :, 2], dl
        )
        # the same (B, ...) buffers at every step, cut to the rows still running
        carries, dcs3, dcs = ([v] * T if bs is None else [v[:n] for n in bs] for v in (carry, dc, dc[:, 0]))
        da_next = next_rows(bs, da)
        back = Product(w_hh.index_select(0, order).t(), B)  # da -> da W_hh
        unproject = None if w_hr is None else Product(w_hr.t(), B)  # dh -> dh W_hr
        ln_back, dx_only = torch.ops.aten.native_layer_norm_backward, (True, False, False)
        for t in range(T - 1, -1, -1):
            a_mean, a_rstd, c_mean, c_rstd = ctx.stats[t]
            # dh_t = g_t + da_{t+1} W_hh, accumulated in place in g
            dh = gs[t] if t == T - 1 else back(da_next[t], add=gs[t], out=gs[t])
            dm = dh if unproject is None else unproject(dh)
            torch.mul(dm, Es[t], out=dls[t])
            dc_ln = ln_back(dls[t], cs[t], (H,), c_mean, c_rstd, g_c, None, dx_only)[0]
            torch.add(carries[t], dc_ln, out=dcs[t])  # dc_t (n, H)
            torch.mul(Ks[t], dcs3[t], out=dG4s[t])  # i, f, g blocks (o overwritten next)
            torch.mul(dm, K_os[t], out=dGos[t])
            torch.mul(dcs[t], fs[t], out=carries[t])
            das[t].copy_(ln_back(dGs[t], as_[t], (4 * H,), a_mean, a_rstd, g_hh_p, None, dx_only)[0])
        # The gains and shifts of LN_c and LN_hh for all steps at once, from the loop's statistics
        # (a row past a sequence's end has zero gradients and adds nothing).
        a_stats = stacked_stats([s[:2] for s in ctx.stats], a, bs)
        c_stats = stacked_stats([s[2:] for s in ctx.stats], c, bs)
        _, dg_c, ds_c = normalize_backward(dl, c, *c_stats, g_c, s_c, (False, need[8], need[9]))
        dg_hh = normalize_backward(dG, a, *a_stats, g_hh_p, None, (False, need[7], False))[1]
        TB = T * B
        x_mask = (True, need[5], need[6])
        dpx, dg_ih, dshift = normalize_backward(dG, px, x_mean, x_rstd, g_ih_p, shift_p, x_mask, pooled=True)
        dx = input_grad(dpx, w_ih_p) if need[0] else None
        dw_ih = weight_grads(dpx.view(TB, -1), [[x.reshape(TB, -1)]])[0] if need[3] else None
        dw_hh = weight_grads(da.view(TB, -1), [[h0, y[:-1].reshape(TB - B, -1)]])[0] if need[4] else None
        dh0 = back(da[0]) if need[1] else None
        dc0 = carry if need[2] else None
        dw_hr = weight_grad(g_h, m) if w_hr is not None and need[10] else None
        # back to torch's gate order i, f, g, o
        dw_ih, dw_hh, dg_ih, dshift, dg_hh = (
            None if v is None else v.index_select(0, order) for v in (dw_ih, dw_hh, dg_ih, dshift, dg_hh)
        )
        return dx, dh0, dc0, dw_ih, dw_hh, dg_ih, dshift, dg_hh, dg_c, ds_c, dw_hr, None


def ln_lstm(
    x,
    h0,
    c0,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    *,
    ln_ih,
    ln_hh,
    ln_c,
    w_hr=None,
    batch_sizes=None,
    impl="fused",
):
    """Layer-normalised LSTM over a whole sequence: x (T, B, I), h0 (B, P) and c0 (B, H) or None
    (zeros) -> (y (T, B, P), h_n (B, P), c_n (B, H)). ln_ih, ln_hh: (gain, shift) pairs of shape
    (4H,); ln_c: (H,). Otherwise as `rnnkit.functional.lstm`: `batch_sizes` as in PackedSequence,
    `impl="fused"` the hand-derived BPTT, `"loop"` the step equations under autograd."""
    if isinstance(w_ih, torch.Tensor) and w_ih.dim() == 2 and w_ih.shape[0] % 4 == 0:
        H = w_ih.shape[0] // 4
        check_layer_norm_args("lstm", H, w_ih, ln_ih=ln_ih, ln_hh=ln_hh, ln_c=ln_c)

    def fused(h0, c0, bs):
        shift = ln_ih[1] + ln_hh[1]  # every constant added outside a product (module docstring)
        for b in (b_ih, b_hh):
            shift = shift if b is None else shift + b
        return LNLSTMFused.apply(x, h0, c0, w_ih, w_hh, ln_ih[0], shift, ln_hh[0], ln_c[0], ln_c[1], w_hr, bs)

    return run_kernel(
        x,
        {"h0": h0, "c0": c0},
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        gates=4,
        batch_sizes=batch_sizes,
        impl=impl,
        w_hr=w_hr,
        step=lambda x_t, s: ln_lstm_step(x_t, s, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c, w_hr),
        fused=fused,
    )
