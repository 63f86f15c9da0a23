"""The peephole LSTM (Gers and Schmidhuber 2000), written against the public cell hook
(`rnnkit.cells.Cell`) as a user's cell would be. The input and forget gates also read the previous
cell state, and the output gate the new one, each through a diagonal (per-unit) weight:

    i_t = sigmoid(W_ii x_t + W_hi h_{t-1} + p_i * c_{t-1} + b_i)
    f_t = sigmoid(W_if x_t + W_hf h_{t-1} + p_f * c_{t-1} + b_f)
    g_t = tanh(W_ig x_t + W_hg h_{t-1} + b_g)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = sigmoid(W_io x_t + W_ho h_{t-1} + p_o * c_t + b_o)
    h_t = o_t * tanh(c_t)

Parameters as torch's LSTM cell (gate order i, f, g, o): weight_ih (4H, I), weight_hh (4H, H),
bias_ih and bias_hh (4H,), all U(-1/sqrt(H), 1/sqrt(H)); and peephole_i, peephole_f, peephole_o
(H,), zeros at first (the cell starts as a plain LSTM). State (h, c).

`forward_sequence` is the fused kernel: the input projection of all steps as one product, the loop,
and the hand-derived backward. With a_t the four pre-activations and dh, dc the gradients reaching
h_t and c_t (from y_t and from step t+1):

    do~ = dh * tanh(c_t) * o(1 - o)
    dc  = dc + dh * o * (1 - tanh(c_t)^2) + do~ * p_o          (o_t reads c_t)
    di~ = dc * g * i(1 - i),  df~ = dc * c_{t-1} * f(1 - f),  dg~ = dc * i * (1 - g^2)
    dL/dc_{t-1} = dc * f + di~ * p_i + df~ * p_f,  dL/dh_{t-1} = [di~ df~ dg~ do~] W_hh
    dL/dp_i = sum di~ * c_{t-1},  dL/dp_f = sum df~ * c_{t-1},  dL/dp_o = sum do~ * c_t
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from rnnkit._checks import check_bool
from rnnkit.cells.base import Cell
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed.gc_pause import without_cycle_gc  # no cycle collection inside the time loop


def _step(a, c_prev, p_i, p_f, p_o):
    """From the pre-activations a (n, 4H) and c_{t-1}: (i, f, g, o, c_t, h_t)."""
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
    i = torch.sigmoid(a_i + p_i * c_prev)
    f = torch.sigmoid(a_f + p_f * c_prev)
    g = torch.tanh(a_g)
    c = f * c_prev + i * g
    o = torch.sigmoid(a_o + p_o * c)
    return i, f, g, o, c, o * torch.tanh(c)


class _PeepholeSequence(torch.autograd.Function):
    """(x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H), bias (4H,) or None, p_i, p_f, p_o
    (H,), batch_sizes) -> (y (T, B, H), h_n, c_n); rows past a length keep their state."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias, p_i, p_f, p_o, batch_sizes):
        T, B, I = x.shape
        H = w_hh.shape[1]
        pre = x.reshape(T * B, I) @ w_ih.t()  # (T*B, 4H): every step's input projection at once
        if bias is not None:
            pre += bias
        pre = pre.view(T, B, 4 * H)
        cs, y = x.new_zeros(T, B, H), x.new_zeros(T, B, H)
        h, c = h0.contiguous().clone(), c0.contiguous().clone()
        native = ctx.native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/peephole.cpp), in pre itself
            ps = [p.contiguous() for p in (p_i, p_f, p_o)]
            native.peephole_forward(pre, w_hh.t().contiguous(), *ps, h, c, batch_sizes or [], cs, y)
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, p_i, p_f, p_o, pre, cs, y)
            ctx.batch_sizes, ctx.has_bias = batch_sizes, bias is not None
            return y, h, c
        gates = x.new_zeros(T, B, 4 * H)
        for t in range(T):
            n = B if batch_sizes is None else batch_sizes[t]
            i, f, g, o, c_new, h_new = _step(pre[t, :n] + h[:n] @ w_hh.t(), c[:n], p_i, p_f, p_o)
            gates[t, :n] = torch.cat([i, f, g, o], dim=1)
            cs[t, :n], y[t, :n], h[:n], c[:n] = c_new, h_new, h_new, c_new
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, p_i, p_f, p_o, gates, cs, y)
        ctx.batch_sizes, ctx.has_bias = batch_sizes, bias is not None
        return y, h, c

    @staticmethod
    @once_differentiable
    @without_cycle_gc
    def backward(ctx, grad_y, grad_h, grad_c):
        x, h0, c0, w_ih, w_hh, p_i, p_f, p_o, gates, cs, y = ctx.saved_tensors
        T, B, I = x.shape
        H = w_hh.shape[1]
        gh = h0.new_zeros(h0.shape) if grad_h is None else grad_h.contiguous().clone()  # dL/dh_t, (B, H)
        gc = c0.new_zeros(c0.shape) if grad_c is None else grad_c.contiguous().clone()  # dL/dc_t
        d = gates.new_zeros(gates.shape)  # dL/da_t, (T, B, 4H)
        peepholes, bs = (p_i, p_f, p_o), ctx.batch_sizes
        if ctx.native is not None:
            gy = None if grad_y is None else grad_y.contiguous()
            ps = [p.contiguous() for p in peepholes]
            ctx.native.peephole_backward(
                gy, gh, gc, gates, cs, c0.contiguous(), w_hh.contiguous(), *ps, bs or [], d
            )
            c_prev = torch.cat([c0[None], cs[:-1]])  # (T, B, H); d is 0 on rows past an end
            dp_i, dp_f = ((d[..., k * H : (k + 1) * H] * c_prev).sum((0, 1)) for k in (0, 1))
            dp_o = (d[..., 3 * H :] * cs).sum((0, 1))
        else:
            dp_i, dp_f, dp_o = _backward_steps(grad_y, gh, gc, gates, cs, c0, w_hh, peepholes, bs, d)
        d2 = d.view(T * B, 4 * H)
        # h_{t-1} of every step: a row active at t was active at t-1 (sorted by length)
        h_prev = torch.cat([h0[None], y[:-1]]).view(T * B, H)
        dx = (d2 @ w_ih).view(T, B, I) if ctx.needs_input_grad[0] else None
        dw_ih = d2.t() @ x.reshape(T * B, I) if ctx.needs_input_grad[3] else None
        dw_hh = d2.t() @ h_prev if ctx.needs_input_grad[4] else None
        db = d2.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
        return dx, gh, gc, dw_ih, dw_hh, db, dp_i, dp_f, dp_o, None


def _backward_steps(grad_y, gh, gc, gates, cs, c0, w_hh, peepholes, batch_sizes, d):
    """The backward loop in eager ops (the compiled one's reference): gh, gc from dL/dh_T, dL/dc_T
    to dL/dh_0, dL/dc_0, dL/da_t into d; returns the peepholes' gradients."""
    T, B, H = cs.shape
    p_i, p_f, p_o = peepholes
    dp_i, dp_f, dp_o = (torch.zeros_like(p) for p in peepholes)
    for t in reversed(range(T)):
        n = B if batch_sizes is None else batch_sizes[t]
        if grad_y is not None:
            gh[:n] += grad_y[t, :n]
        i, f, g, o = gates[t, :n].chunk(4, dim=1)
        c, c_prev = cs[t, :n], (c0[:n] if t == 0 else cs[t - 1, :n])
        tanh_c = torch.tanh(c)
        do = gh[:n] * tanh_c * o * (1 - o)
        dc = gc[:n] + gh[:n] * o * (1 - tanh_c**2) + do * p_o
        di = dc * g * i * (1 - i)
        df = dc * c_prev * f * (1 - f)
        dg = dc * i * (1 - g**2)
        d[t, :n] = torch.cat([di, df, dg, do], dim=1)
        dp_i += (di * c_prev).sum(0)
        dp_f += (df * c_prev).sum(0)
        dp_o += (do * c).sum(0)
        gc[:n] = dc * f + di * p_i + df * p_f
        gh[:n] = d[t, :n] @ w_hh
    return dp_i, dp_f, dp_o


class PeepholeLSTMCell(Cell):
    """One peephole-LSTM step; see the module docstring."""

    recurrent_weights = ("weight_hh",)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.bias = check_bool("bias", bias)
        self.state_sizes = (hidden_size, hidden_size)
        H, bound = hidden_size, 1.0 / math.sqrt(hidden_size)

        def uniform(*shape):
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        self.weight_ih, self.weight_hh = uniform(4 * H, input_size), uniform(4 * H, H)
        self.bias_ih, self.bias_hh = (uniform(4 * H), uniform(4 * H)) if bias else (None, None)
        self.peephole_i, self.peephole_f, self.peephole_o = (nn.Parameter(torch.zeros(H)) for _ in range(3))

    def _bias(self):
        return None if self.bias_ih is None else self.bias_ih + self.bias_hh

    def forward(self, x_t: torch.Tensor, state: tuple) -> tuple:
        h, c = state  # (B, H) each
        a = nn.functional.linear(x_t, self.weight_ih, self._bias()) + h @ self.weight_hh.t()  # (B, 4H)
        *_, c_new, h_new = _step(a, c, self.peephole_i, self.peephole_f, self.peephole_o)
        return h_new, c_new

    def forward_sequence(self, x: torch.Tensor, state: tuple, batch_sizes=None):
        h0, c0 = state
        peepholes = (self.peephole_i, self.peephole_f, self.peephole_o)
        y, h, c = _PeepholeSequence.apply(
            x, h0, c0, self.weight_ih, self.weight_hh, self._bias(), *peepholes, batch_sizes
        )
        return y, (h, c)
