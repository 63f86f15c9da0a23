"""Long short-term memory (Hochreiter and Schmidhuber 1997, with the forget gate of Gers et al.
2000), in torch's form and gate order i, f, g, o, with the optional output projection of Sak et
al. 2014 (torch's `proj_size`):

    i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)      input gate
    f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)      forget gate
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)         candidate cell
    o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)      output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    m_t = o_t * tanh(c_t)
    h_t = m_t                    (no projection)
    h_t = W_hr m_t               (with projection)

Shapes: x_t (B, I), c_t and m_t (B, H), h_t (B, P) with P = proj_size or H; W_ih (4H, I),
W_hh (4H, P), b_ih and b_hh (4H,), W_hr (P, H); gate blocks stacked i, f, g, o.

BPTT (the fused backward), walking t from T to 1 with dh_t = g_t + W_hh^T dG_{t+1} (g_t the
gradient arriving from y_t, plus dL/dh_T at the last step) and dc carried from step t+1:
    dm_t = dh_t                  (or W_hr^T dh_t with projection; dW_hr += dh_t^T m_t)
    dc_t = dc_{t+1} f_{t+1} + dm_t * o_t * (1 - tanh^2 c_t)
    dG_t = [dc_t g_t i_t(1-i_t),  dc_t c_{t-1} f_t(1-f_t),  dc_t i_t (1-g_t^2),
            dm_t tanh(c_t) o_t(1-o_t)]                          (pre-activation gradients)
and after the loop, as single GEMMs over all steps: dW_ih = sum_t dG_t^T x_t,
dW_hh = sum_t dG_t^T h_{t-1}, db = sum_t dG_t, dx_t = dG_t W_ih.

Inside the fused kernel the gate blocks are reordered to i, f, o, g, so that one sigmoid covers
the gates (and g's tanh, computed from a sigmoid); gradients are put back in torch's order after
the loop.
"""

from __future__ import annotations

import torch

from rnnkit.cells import speed, traced
from rnnkit.cells._bptt import (
    active_rows,
    add_biases,
    add_final_grad,
    gate_weight_grads,
    ifog_order,
    input_grad,
    input_projection,
    last_valid,
    next_rows,
    stack_prev,
    weight_grad,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._unit import LSTMShaped, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product
from rnnkit.cells.speed.tanh import Tanh, doubled

# Up to this many rows a step without gradients runs the compiled single step (speed/cpp/step.cpp,
# which reads each weight row once for all rows: 2.9x torch.lstm_cell at one row of 512 units
# here, 2.1x at four); past it, torch.lstm_cell's GEMM.
STEP_MAX_ROWS = 8


def _needs_grad(x_t, state, *weights) -> bool:
    return torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in (x_t, *state, *weights))


def lstm_step(x_t, state, w_ih, w_hh, b_ih, b_hh, w_hr=None, *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h, c)) -> (h', c'). `rec_mask` (B, P), if
    given, multiplies h_{t-1} where it enters W_hh (recurrent dropout, `rnnkit.cells._regularize`)."""
    h, c = state
    if rec_mask is None and w_hr is None and not traced.tracing():
        native = (
            _native.ops(x_t)
            if 1 <= x_t.shape[0] <= STEP_MAX_ROWS and not _needs_grad(x_t, state, w_ih, w_hh, b_ih, b_hh)
            else None
        )
        if native is not None and (b_ih is None) == (b_hh is None):  # compiled: speed/cpp/step.cpp
            w = (v if v is None else v.contiguous() for v in (x_t, h, c, w_ih, w_hh, b_ih, b_hh))
            return native.lstm_cell(*w)
        if speed.on("aten_cells"):
            return torch.lstm_cell(x_t, (h, c), w_ih, w_hh, b_ih, b_hh)  # the same ops in C++
    h_in = h if rec_mask is None else h * rec_mask
    i, f, g, o = (linear(x_t, w_ih, b_ih) + linear(h_in, w_hh, b_hh)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    m = torch.sigmoid(o) * torch.tanh(c)
    return (m if w_hr is None else linear(m, w_hr, None)), c


def sample_loop(token, states, embedding, layers, head_w, head_b, steps: int, temperature: float, generator):
    """A language model's whole sampling loop over plain LSTM layers, compiled
    (speed/cpp/step.cpp, `lstm_lm_sample`): token (B,) -> (B, steps) drawn tokens, the very ones
    of `rnnkit.decoding.sample` over the model's step (the same calls in the same order), without
    a Python round trip per token. `layers`: each layer's (w_ih, w_hh, b_ih, b_hh); `states`:
    (h, c), (L, B, H) each. None where it does not apply (no compiled loops, more than
    STEP_MAX_ROWS rows, gradients wanted, a generator of another device): the caller's loop runs."""
    native = _native.ops(embedding)
    if (
        native is None
        or not 1 <= token.shape[0] <= STEP_MAX_ROWS
        or torch.is_grad_enabled()
        or (generator is not None and generator.device.type != "cpu")
        or traced.tracing()
    ):
        return None
    w_ih, w_hh, b_ih, b_hh = (list(ws) for ws in zip(*layers))
    h0, c0 = (s.contiguous() for s in states)
    return native.lstm_lm_sample(
        token, h0, c0, embedding, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps, float(temperature), generator
    )


class LSTMFused(torch.autograd.Function):
    """Whole-sequence LSTM with the hand-derived BPTT backward of the module docstring.

    The two loops over time run compiled on CPU where `rnnkit.cells.speed.native.ops` allows
    (speed/cpp/lstm.cpp, same buffers and results); otherwise the Python loops below
    (`_forward_steps`, `_backward_steps`), which are also the compiled ones' reference in
    tests/test_native.py.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[0] // 4
        order = ifog_order(H, x.device)
        bias = add_biases(b_ih, b_hh)
        w_ih_p = w_ih.index_select(0, order)  # (4H, I), blocks i, f, o, g
        # g's pre-activation is made doubled (its rows times 2), so that one sigmoid covers all
        # four blocks and tanh(g~) = 2 sigmoid(2 g~) - 1 (`Tanh.from_sigmoid`).
        tanh_ = Tanh(x)
        bias_p = None if bias is None else doubled(bias.index_select(0, order), 3 * H)
        gates = input_projection(x, doubled(w_ih_p, 3 * H), bias_p)
        w_hh_p2 = doubled(w_hh.index_select(0, order), 3 * H)
        new = workspace.allocator(zero=bool(batch_sizes))
        c = new(gates[..., :H])  # (T, B, H)
        tanh_c = new(c)  # (T, B, H), kept for backward
        y = new(c) if w_hr is None else new(gates[..., : w_hr.shape[0]])  # (T, B, P)
        m = y if w_hr is None else new(c)  # (T, B, H): o * tanh(c)
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/lstm.cpp); g and c unscaled
            w_hr_t = None if w_hr is None else w_hr.t().contiguous()
            native.lstm_forward(
                gates, w_hh_p2.t().contiguous(), h0.contiguous(), c0.contiguous(), w_hr_t, batch_sizes or [],
                c, tanh_c, m, y,
            )  # fmt: skip
        else:
            _forward_steps(gates, h0, c0, w_hh_p2, w_hr, batch_sizes, c, tanh_c, m, y, tanh_)
        ctx.save_for_backward(x, h0, c0, w_ih_p, w_hh, w_hr, gates, c, tanh_c, m, y)
        ctx.batch_sizes, ctx.native = batch_sizes, native
        return y, last_valid(y, batch_sizes), last_valid(c, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn, grad_cn):
        forbid_double_backward("LSTM")
        x, h0, c0, w_ih_p, w_hh, w_hr, gates, c, tanh_c, m, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = c.shape
        order = ifog_order(H, x.device)
        w_hh_p = w_hh.index_select(0, order)
        g_h = add_final_grad(grad_y, grad_hn, bs)  # (T, B, P): dL/dy_t, plus dL/dh_T
        dG = workspace.empty_like(gates, zero=bool(bs))  # (T, B, 4H)
        carry = grad_cn.contiguous().clone()  # dc_{t+1} f_{t+1}; rows not yet reached: dL/dc_n
        if ctx.native is not None:
            ctx.native.lstm_backward(
                gates, c, c0.contiguous(), tanh_c, g_h, w_hh_p.contiguous(),
                None if w_hr is None else w_hr.contiguous(), bs or [], dG, carry,
            )  # fmt: skip
        else:
            _backward_steps(gates, c, c0, tanh_c, g_h, w_hh_p, w_hr, bs, dG, carry)
        back = Product(w_hh_p.t(), B)  # dG -> dG W_hh
        dx = input_grad(dG, w_ih_p) if ctx.needs_input_grad[0] else None
        dw_ih, dw_hh = gate_weight_grads(ctx, dG, x, h0, y, 3, 4)
        dh0 = back(dG[0]) if ctx.needs_input_grad[1] else None
        dc0 = carry if ctx.needs_input_grad[2] else None
        # back to torch's gate order i, f, g, o
        dw_ih = None if dw_ih is None else dw_ih.index_select(0, order)
        dw_hh = None if dw_hh is None else dw_hh.index_select(0, order)
        db = dG.sum((0, 1)).index_select(0, order) if any(ctx.needs_input_grad[5:7]) else None
        dw_hr = weight_grad(g_h, m) if w_hr is not None and ctx.needs_input_grad[7] else None
        return dx, dh0, dc0, dw_ih, dw_hh, db, db, dw_hr, None


def _forward_steps(gates, h0, c0, w_hh_p2, w_hr, batch_sizes, c, tanh_c, m, y, tanh_) -> None:
    """The forward loop in eager ops (the compiled one's reference), in place on the buffers of
    `LSTMFused.forward` (gate blocks i, f, o, g; g's rows of W_hh doubled in w_hh_p2). Where
    `Tanh` takes tanh from a sigmoid (CPU: k = 2), the loop keeps k g_t and so k c_t (c's update
    is linear), whose sigmoid then gives tanh(c_t); both are divided by k after it (exact)."""
    B, H = c.shape[1], c.shape[2]
    recurrent = Product(w_hh_p2, B)  # h -> h W_hh^T
    project = None if w_hr is None else Product(w_hr, B)  # m -> m W_hr^T
    i, f, o, g = gates.split(H, dim=-1)  # (T, B, H) views; activations once computed
    steps = active_rows(batch_sizes, gates, i, f, o, g, c, tanh_c, m, y)
    h, c_prev = h0, tanh_.prep(c0)
    for G_t, i_t, f_t, o_t, g_t, c_t, tc_t, m_t, y_t in zip(*steps):
        if batch_sizes:  # the sequences still running are the first rows
            h, c_prev = h[: G_t.shape[0]], c_prev[: G_t.shape[0]]
        recurrent(h, add=G_t, out=G_t)  # (n, 4H) pre-activations, in place
        G_t.sigmoid_()  # i, f, o and g's in one call: why the blocks are reordered
        tanh_.from_sigmoid(g_t, tanh_.k)  # k g
        torch.mul(f_t, c_prev, out=c_t)
        c_t.addcmul_(i_t, g_t)  # k c = f * k c_{t-1} + i * k g
        tanh_.into(c_t, out=tc_t)  # tanh(c)
        torch.mul(o_t, tc_t, out=m_t)
        if project is not None:
            project(m_t, out=y_t)
        h, c_prev = y_t, c_t
    tanh_.undo_(g)
    tanh_.undo_(c)


def _backward_steps(gates, c, c0, tanh_c, g_h, w_hh_p, w_hr, bs, dG, carry) -> None:
    """The backward loop in eager ops (the compiled one's reference): dh_t accumulated in g_h,
    the pre-activations' gradients into dG, dL/dc_0 left in carry (module docstring)."""
    T, B, H = c.shape
    i, f, o, g = gates.split(H, dim=-1)  # (T, B, H) activations
    # Factors that depend only on the forward pass, for all steps at once outside the loop:
    # K (T, B, 4, H) = [i(1-i) g, f(1-f) c_{t-1}, o(1-o) tanh(c_t), (1-g^2) i]; the first three
    # multiply dc (i, f, g blocks) or dm (o block), and E = o (1 - tanh^2 c) carries dm to dc.
    K = workspace.empty((T, B, 4, H), c)
    sig = gates[..., : 3 * H].unflatten(-1, (3, H))  # (T, B, 3, H): i, f, o
    torch.mul(sig, 1 - sig, out=K[:, :, :3]).mul_(torch.stack([g, stack_prev(c0, c), tanh_c], dim=2))
    torch.mul(g, g, out=K[:, :, 3]).neg_().add_(1).mul_(i)
    E = o * (1 - tanh_c * tanh_c)  # (T, B, H)
    dG4 = dG.view(T, B, 4, H)
    dc = torch.empty(B, 1, H, dtype=c.dtype, device=c.device)  # dc_t, also seen as (B, H)
    gs, Ks, K_os, Es, fs, dG4s, dGos, carries, dcs3, dcs = active_rows(
        bs,
        g_h,
        K,
        K[:, :, 2],
        E,
        f,
        dG4,
        dG4[:, :, 2],
        carry.expand(T, B, H),
        dc.expand(T, B, 1, H),
        dc[:, 0].expand(T, B, H),
    )
    dG_next = next_rows(bs, dG)
    back = Product(w_hh_p.t(), B)  # dG -> dG W_hh
    unproject = None if w_hr is None else Product(w_hr.t(), B)  # dh -> dh W_hr
    for t in range(T - 1, -1, -1):
        # dh_t = g_t + dG_{t+1} W_hh, accumulated in place in g (which then holds dh_t)
        dh = gs[t] if t == T - 1 else back(dG_next[t], add=gs[t], out=gs[t])
        dm = dh if unproject is None else unproject(dh)
        torch.addcmul(carries[t], dm, Es[t], out=dcs[t])  # dc_t (n, H)
        torch.mul(Ks[t], dcs3[t], out=dG4s[t])  # i, f, g blocks (o overwritten next)
        torch.mul(dm, K_os[t], out=dGos[t])
        torch.mul(dcs[t], fs[t], out=carries[t])


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, batch_sizes=None, impl="fused"):
    """LSTM over a whole sequence: x (T, B, I), h0 (B, P) and c0 (B, H) or None (zeros) ->
    (y (T, B, P), h_n (B, P), c_n (B, H)); P = H, or w_hr's rows with a projection.
    `batch_sizes` as in PackedSequence (sequences sorted by decreasing length); `impl="fused"`
    runs the hand-derived BPTT, `"loop"` the step equations under autograd."""
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
        step=lambda x_t, s: lstm_step(x_t, s, w_ih, w_hh, b_ih, b_hh, w_hr),
        fused=lambda h0, c0, bs: _fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, bs),
    )


def _fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes):
    """The fused kernel; for a few rows without gradients (inference at batch 1-8), the compiled
    single step at every time step instead (speed/cpp/step.cpp `lstm_rows`): it reads the weights
    in place, where the kernel prepares reordered and packed copies of them at every call."""
    if w_hr is None and 1 <= x.shape[1] <= STEP_MAX_ROWS and not traced.tracing():
        native = None if _needs_grad(x, (h0, c0), w_ih, w_hh, b_ih, b_hh) else _native.ops(x)
        if native is not None and (b_ih is None) == (b_hh is None):
            w = (v if v is None else v.contiguous() for v in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
            return native.lstm_rows(*w, batch_sizes or [])
    return LSTMFused.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes)


class LSTMUnit(LSTMShaped):
    """The LSTM's `Cell` (registered as "lstm"): the equations above, states (h, c) of sizes
    (P, H); parameters and their use as `rnnkit.cells._unit.Unit`, weight_hr with `proj_size`."""

    def step(self, x_t, state, w, rec_mask=None):
        return lstm_step(x_t, state, *torch_weights(w), w.get("weight_hr"), rec_mask=rec_mask)

    def onnx_sequence(self, x, state, w, lengths=None):
        if self.proj_size:  # ONNX's LSTM has no projection: a Scan of the step
            return None
        return traced.onnx_recurrent("LSTM", x, state, w, [0, 3, 1, 2], lengths)  # i, o, f, c

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        y, h, c = lstm(
            x, *state, *torch_weights(w), w_hr=w.get("weight_hr"), batch_sizes=batch_sizes, impl=impl
        )
        return y, (h, c)
