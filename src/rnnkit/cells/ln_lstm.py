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
The loop does only what the recurrence needs. What depends on the forward alone is computed
for all steps at once after the forward loop,
    K_t = [i_t(1-i_t) g_t, f_t(1-f_t) c_{t-1}, (1-g_t^2) i_t, o_t(1-o_t) tanh(LN_c(c_t))]  (B, 4H)
    E_t = o_t (1 - tanh^2 LN_c(c_t))                                                      (B, H)
so that a step of the backward forms dl_t = dm_t E_t and dG_t = K_t * [dc_t, dc_t, dc_t, dm_t].
The LN parameters' gradients (sums over all rows and steps of dG_t * ahat_t for LN_hh's gain,
of dl_t * chat_t and dl_t for LN_c's) come after the backward loop from one LN backward over all
steps each, with dG_t and dl_t kept from the loop. The input side is not recurrent: W_ih x_t for
all steps is one GEMM and LN_ih one normalisation before the loop, and after it, dG goes back
through LN_ih for all steps at once, then dx_t = dp_t W_ih, dW_ih = sum_t dp_t^T x_t and dW_hh =
sum_t da_t^T h_{t-1} as single GEMMs (dp the gradient at W_ih x_t); every bias and shift outside
a product gets sum_t dG_t.
"""

from __future__ import annotations

import torch

from rnnkit.cells._bptt import (
    active_rows,
    add_final_grad,
    input_grad,
    input_projection,
    last_valid,
    weight_grad,
    zero_padding_,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._layernorm import (
    EPS,
    LSTM_SITES,
    check_layer_norm_args,
    layer_norm,
    layer_norm_args,
    layer_norm_shapes,
    normalize,
    normalize_backward,
    stacked_stats,
)
from rnnkit.cells._unit import LSTMShaped, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product, weight_grads
from rnnkit.cells.speed.record import StepRecord
from rnnkit.cells.speed.tanh import Tanh, doubled


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


# The blocks of one step's record (`rnnkit.cells.speed.record`), each (B, width): what the backward
# reads (K, E, a, c and the gates G, for f) come first, so that it copies one span a step.
def _record(B: int, H: int, P: int | None) -> StepRecord:
    """K: the backward's factors [K_i, K_f, K_g, K_o] (4H), E (H), a = W_hh h_{t-1} (4H), c_t (H),
    G: the gates [i, f, tanh(g~), o] (4H), tc = tanh(LN_c(c_t)) (H), m_t (H), and y_t = W_hr m_t
    (P) with a projection (P given)."""
    return StepRecord(B, K=4 * H, E=H, a=4 * H, c=H, G=4 * H, tc=H, m=H, **({} if P is None else {"y": P}))


class LNLSTMFused(torch.autograd.Function):
    """Whole-sequence LN-LSTM with the hand-derived BPTT of the module docstring.

    `shift` (4H,) is every constant the step adds outside a product: b_ih + b_hh plus the shifts of
    LN_ih and LN_hh. Each loop works in a step record (`_record`): the Python loops in a scratch
    one, copied to or from the sequence's records once a step. tanh(v) is computed as 2 sigmoid(2v)
    - 1 (`Tanh`, cheaper than torch's tanh on CPU): the LNs in front of a tanh run with doubled
    gain and shift (exact in floating point; g~'s block always, so one sigmoid covers all four
    gates; LN_c's on CPU). The backward reads what it needs from the records; K and E, which depend
    on the forward alone, are computed for all steps at once after the Python forward loop (when a
    backward can follow), or by the compiled one as it goes.

    The two loops over time run compiled on CPU where `rnnkit.cells.speed.native.ops` allows
    (native/ln_lstm.cpp, same buffers and results); otherwise the Python loops below
    (`_forward_steps`, `_backward_steps`), which are also the compiled ones' reference in
    tests/test_native.py.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, c0, w_ih, w_hh, g_ih, shift, g_hh, g_c, s_c, w_hr, batch_sizes, train):
        T, B, _ = x.shape
        H = w_hh.shape[0] // 4
        P = None if w_hr is None else w_hr.shape[0]
        tanh_ = Tanh(x)  # g~'s block is made doubled, LN_c's output as `Tanh` wants it
        # The input side for all steps before the loop: one GEMM (kept for LN_ih's backward) and
        # one normalisation.
        px = input_projection(x, w_ih, None)  # (T, B, 4H)
        g_ih2, shift2 = doubled(g_ih, 2 * H, 3 * H), doubled(shift, 2 * H, 3 * H)
        gx, x_mean, x_rstd = normalize(px, g_ih2, shift2, pooled=True)  # (T, B, 4H), (T, B, 1) x2
        g_hh2, g_c2, s_c2 = doubled(g_hh, 2 * H, 3 * H), tanh_.prep(g_c), tanh_.prep(s_c)
        rec = _record(B, H, P)
        train = train and any(ctx.needs_input_grad)
        native = _native.ops(x)
        # the compiled loop writes only active rows; the padding is read later, so zeroed
        records = workspace.empty((T, rec.size), x, zero=native is not None and bool(batch_sizes))
        if native is not None:
            stats = x.new_zeros(4, T, B)  # LN_hh's and LN_c's (mean, 1/sigma), every row and step
            native.ln_lstm_forward(
                gx, w_hh.t().contiguous(), g_hh2, g_c2, s_c2, h0.contiguous(), c0.contiguous(),
                None if w_hr is None else w_hr.t().contiguous(), batch_sizes or [], records, stats,
                _offsets(rec), EPS, train,
            )  # fmt: skip
        else:
            stats = _forward_steps(
                rec, records, gx, h0, c0, w_hh, g_hh2, g_c2, s_c2, w_hr, batch_sizes, tanh_
            )
            if train:
                _backward_factors(rec, records, c0, H)
        out = workspace.empty((T, B, H if P is None else P), x)
        out.copy_(rec.block(records, "m" if P is None else "y"))
        zero_padding_(out, batch_sizes)  # a finished sequence's rows hold its last state
        c = rec.block(records, "c")
        # All through save_for_backward: y kept as an attribute of ctx would be a reference
        # cycle (y -> its grad_fn -> ctx -> y) that only the cycle collector frees.
        kept = (px, x_mean, x_rstd, records, out)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, g_ih, shift, g_hh, g_c, s_c, w_hr, *kept)
        ctx.stats, ctx.batch_sizes, ctx.native = stats, batch_sizes, native
        return out, last_valid(out, batch_sizes), last_valid(c, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn, grad_cn):
        forbid_double_backward("layer-norm lstm")
        x, h0, c0, w_ih, w_hh, g_ih, shift, g_hh, g_c, s_c, w_hr, *kept = ctx.saved_tensors
        px, x_mean, x_rstd, records, y = kept
        bs, need, native = ctx.batch_sizes, ctx.needs_input_grad, ctx.native
        T, B, _ = x.shape
        H = w_hh.shape[0] // 4
        rec = _record(B, H, None if w_hr is None else w_hr.shape[0])
        # The loop's outputs: dG (pre-activations, 4H) and dl (at LN_c's output, H), kept for the
        # LN parameters' gradients and LN_ih's backward, in records of their own; da (= d(W_hh
        # h_{t-1}), 4H) in a buffer of its own, for dW_hh's product. Rows past a sequence's end
        # stay 0.
        grads = StepRecord(B, dG=4 * H, dl=H)
        grad_records = workspace.empty((T, grads.size), x, zero=native is not None and bool(bs))
        da = workspace.empty((T, B, 4 * H), x, zero=bool(bs))
        g_h = add_final_grad(grad_y, grad_hn, bs)  # (T, B, P): dL/dy_t, plus dL/dh_T
        # y is 0 past a sequence's end whatever the weights, and the records' m is not: dW_hr's
        # product must not see gradients there
        zero_padding_(g_h, bs)
        carry = grad_cn.contiguous().clone()  # dc_{t+1} f_{t+1}; dc_0 after the loop
        if native is not None:
            native.ln_lstm_backward(
                records, ctx.stats, g_h, w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(),
                g_hh.contiguous(), g_c.contiguous(), bs or [], _offsets(rec),
                [grads.blocks["dG"][0], grads.blocks["dl"][0]], grad_records, da, carry,
            )  # fmt: skip
            a_stats, c_stats = ctx.stats.unsqueeze(-1)[:2], ctx.stats.unsqueeze(-1)[2:]
        else:
            _backward_steps(
                rec, records, grads, grad_records, da, g_h, carry, w_hh, w_hr, g_hh, g_c, ctx.stats, bs
            )
        dG, dl = grads.block(grad_records, "dG"), grads.block(grad_records, "dl")  # (T, B, 4H), (T, B, H)
        a, c = rec.block(records, "a"), rec.block(records, "c")
        if native is None:
            # the loop's statistics stacked (a row past a sequence's end has zero gradients and
            # adds nothing)
            a_stats = stacked_stats([s[:2] for s in ctx.stats], a, bs)
            c_stats = stacked_stats([s[2:] for s in ctx.stats], c, bs)
        # The gains and shifts of LN_c and LN_hh for all steps at once
        _, dg_c, ds_c = normalize_backward(dl, c, *c_stats, g_c, s_c, (False, need[8], need[9]), pooled=True)
        dg_hh = normalize_backward(dG, a, *a_stats, g_hh, None, (False, need[7], False), pooled=True)[1]
        TB = T * B
        x_mask = (True, need[5], need[6])
        dpx, dg_ih, dshift = normalize_backward(dG, px, x_mean, x_rstd, g_ih, shift, x_mask, pooled=True)
        dx = input_grad(dpx, w_ih) if need[0] else None
        dw_ih = weight_grads(dpx.view(TB, -1), [[x.reshape(TB, -1)]])[0] if need[3] else None
        h_prev = [h0, y[:-1].reshape(TB - B, y.shape[-1])]  # h_{t-1} for every step
        dw_hh = weight_grads(da.view(TB, -1), [h_prev])[0] if need[4] else None
        dh0 = Product(w_hh.t(), B)(da[0]) if need[1] else None
        dc0 = carry if need[2] else None
        dw_hr = weight_grad(g_h, rec.block(records, "m")) if w_hr is not None and need[10] else None
        return dx, dh0, dc0, dw_ih, dw_hh, dg_ih, dshift, dg_hh, dg_c, ds_c, dw_hr, None, None


def _offsets(rec: StepRecord) -> list[int]:
    """The record's block offsets in the order the compiled loops take them (y: -1 if absent)."""
    return [rec.blocks[k][0] if k in rec.blocks else -1 for k in ("K", "E", "a", "c", "G", "tc", "m", "y")]


def _forward_steps(rec, records, gx, h0, c0, w_hh, g_hh2, g_c2, s_c2, w_hr, batch_sizes, tanh_) -> list:
    """The forward loop in eager ops (the compiled one's reference): each step into `records`;
    returns LN_hh's and LN_c's statistics, per step (mean, 1/sigma, mean, 1/sigma), each (n, 1).
    It works in a scratch record and copies each step out once."""
    B, H = gx.shape[1], gx.shape[2] // 4
    P = None if w_hr is None else w_hr.shape[0]
    recurrent = Product(w_hh, B)
    project = None if w_hr is None else Product(w_hr, B)
    written = rec.span("a", "m" if P is None else "y")  # what a step of the forward writes
    scratch = gx.new_empty(rec.size)
    step_out = scratch[written]
    h_name = "m" if P is None else "y"
    rec.block(scratch, "c").copy_(c0)
    rec.block(scratch, h_name).copy_(h0)
    ln = torch.native_layer_norm  # normalize's op, called directly in the loop
    stats, rows = [], None
    for gx_t, rec_t in zip(active_rows(batch_sizes, gx)[0], records[:, written].unbind(0)):
        if gx_t.shape[0] != rows:  # the sequences still running are the first rows
            rows = gx_t.shape[0]
            h, a, c, G, tc, m = (rec.block(scratch, k, rows) for k in (h_name, "a", "c", "G", "tc", "m"))
            i, f, g, o = G.split(H, dim=1)
            y = None if P is None else rec.block(scratch, "y", rows)
        recurrent(h, out=a)  # (n, 4H)
        a_ln, a_mean, a_rstd = ln(a, (4 * H,), g_hh2, None, EPS)
        torch.add(gx_t, a_ln, out=G)  # the pre-activations, g~'s doubled
        G.sigmoid_()
        tanh_.from_sigmoid(g)  # tanh(g~)
        c.mul_(f).addcmul_(i, g)  # c = f * c_{t-1} + i * g
        c_ln, c_mean, c_rstd = ln(c, (H,), g_c2, s_c2, EPS)  # k LN_c(c)
        tanh_.into(c_ln, out=tc)  # tanh(LN_c(c))
        torch.mul(o, tc, out=m)
        if project is not None:
            project(m, out=y)
        rec_t.copy_(step_out)
        stats.append((a_mean, a_rstd, c_mean, c_rstd))
    return stats


def _backward_steps(
    rec, records, grads, grad_records, da, g_h, carry, w_hh, w_hr, g_hh, g_c, stats, bs
) -> None:
    """The backward loop in eager ops (the compiled one's reference): dG and dl into
    `grad_records`, da into `da`, dc_0 into `carry` (module docstring). It reads each step's
    record into a scratch one with one copy."""
    T, B, _ = da.shape
    H = da.shape[2] // 4
    read = rec.span("K", "G")  # what a step of the backward reads
    scratch = da.new_empty(rec.size)
    step_in = scratch[read]
    grad_scratch = da.new_zeros(grads.size)  # rows past a sequence's end stay 0
    dc, dm = da.new_empty(B, 1, H), da.new_empty(B, H)  # dc_t (also seen as (B, H)); dm_t
    back = Product(w_hh.t(), B)  # da -> da W_hh
    unproject = None if w_hr is None else Product(w_hr.t(), B)  # dh -> dh W_hr
    ln_back, dx_only = torch.ops.aten.native_layer_norm_backward, (True, False, False)
    steps = zip(
        range(T - 1, -1, -1),
        reversed(records[:, read].unbind(0)),
        reversed(grad_records.unbind(0)),
        *(reversed(v) for v in active_rows(bs, g_h, da)),
    )
    da_next = da.new_zeros(B, 4 * H) if bs is None else None  # da_{t+1}; 0 at the last step
    rows = None
    for t, rec_t, grad_t, g_t, da_t in steps:
        if g_t.shape[0] != rows:  # the sequences still running are the first rows
            rows = g_t.shape[0]
            K, E, a, c, G = (rec.block(scratch, k, rows) for k in ("K", "E", "a", "c", "G"))
            K4, f, Ko = K.unflatten(1, (4, H)), G[:, H : 2 * H], K[:, 3 * H :]
            dG, dl = grads.block(grad_scratch, "dG", rows), grads.block(grad_scratch, "dl", rows)
            dG4, dGo = dG.unflatten(1, (4, H)), dG[:, 3 * H :]
            dc3, dc2, dm_n, carry_n = dc[:rows], dc[:rows, 0], dm[:rows], carry[:rows]
        step_in.copy_(rec_t)
        if bs is not None:  # step t+1's gradient on the rows running at t (0 past its own)
            da_next = da[t + 1, :rows] if t < T - 1 else da_t.new_zeros(da_t.shape)
        # dh_t = g_t + da_{t+1} W_hh: into dm directly, or kept in g for dW_hr's product
        if unproject is None:
            back(da_next, add=g_t, out=dm_n)
        else:
            unproject(back(da_next, add=g_t, out=g_t), out=dm_n)
        torch.mul(dm_n, E, out=dl)
        a_mean, a_rstd, c_mean, c_rstd = stats[t]
        dc_ln = ln_back(dl, c, (H,), c_mean, c_rstd, g_c, None, dx_only)[0]
        torch.add(carry_n, dc_ln, out=dc2)  # dc_t
        torch.mul(K4, dc3, out=dG4)  # i, f, g blocks (o overwritten next)
        torch.mul(dm_n, Ko, out=dGo)
        torch.mul(dc2, f, out=carry_n)
        da_next = ln_back(dG, a, (4 * H,), a_mean, a_rstd, g_hh, None, dx_only)[0]
        da_t.copy_(da_next)
        grad_t.copy_(grad_scratch)


def _backward_factors(rec: StepRecord, records: torch.Tensor, c0: torch.Tensor, H: int) -> None:
    """The backward's forward-only factors, for all steps at once, into the records' K and E:
    K multiplies dc (i, f, g blocks) or dm (o block) into dG, and E = o (1 - tc^2) carries dm to
    LN_c's output (module docstring). Written in place, without (T, B, H) temporaries."""
    i, f, g, o = rec.block(records, "G").unflatten(-1, (4, H)).unbind(2)  # g: tanh(g~)
    K_i, K_f, K_g, K_o = rec.block(records, "K").unflatten(-1, (4, H)).unbind(2)
    c, tc, E = (rec.block(records, k) for k in ("c", "tc", "E"))
    one = c.new_ones(()).expand_as(c)
    torch.addcmul(i, i, i, value=-1, out=K_i).mul_(g)  # i (1 - i) g
    torch.addcmul(f, f, f, value=-1, out=K_f)  # f (1 - f) c_{t-1}
    K_f[0].mul_(c0)
    K_f[1:].mul_(c[:-1])
    torch.addcmul(one, g, g, value=-1, out=K_g).mul_(i)  # (1 - g^2) i
    torch.addcmul(o, o, o, value=-1, out=K_o).mul_(tc)  # o (1 - o) tc
    torch.addcmul(one, tc, tc, value=-1, out=E).mul_(o)  # o (1 - tc^2)


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
        check_layer_norm_args(LSTM_SITES, H, w_ih, ln_ih=ln_ih, ln_hh=ln_hh, ln_c=ln_c)

    def fused(h0, c0, bs):
        shift = ln_ih[1] + ln_hh[1]  # every constant added outside a product (module docstring)
        for b in (b_ih, b_hh):
            shift = shift if b is None else shift + b
        train = torch.is_grad_enabled()  # (inside the Function, needs_input_grad says True anyway)
        return LNLSTMFused.apply(
            x, h0, c0, w_ih, w_hh, ln_ih[0], shift, ln_hh[0], ln_c[0], ln_c[1], w_hr, bs, train
        )

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


class LNLSTMUnit(LSTMShaped):
    """The layer-normalised LSTM's `Cell` (registered as "ln_lstm"): the equations above, states
    (h, c) of sizes (P, H); torch's LSTM parameters (`rnnkit.cells._unit.Unit`), then the gains
    layer_norm_{ih,hh}_weight (4H,) (1 at first), shifts layer_norm_{ih,hh}_bias (4H,) (0) and
    layer_norm_c_weight, _bias (H,)."""

    def extra_shapes(self):
        return layer_norm_shapes(LSTM_SITES, self.hidden_size)

    def step(self, x_t, state, w, rec_mask=None):
        lns = layer_norm_args(w, LSTM_SITES)
        return ln_lstm_step(x_t, state, *torch_weights(w), **lns, w_hr=w.get("weight_hr"), rec_mask=rec_mask)

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        lns = layer_norm_args(w, LSTM_SITES)
        y, h, c = ln_lstm(
            x, *state, *torch_weights(w), **lns, w_hr=w.get("weight_hr"), batch_sizes=batch_sizes, impl=impl
        )
        return y, (h, c)
