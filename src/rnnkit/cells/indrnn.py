"""IndRNN, the independently recurrent network (Li et al. 2018), written against the public cell
hook (`rnnkit.cells.Cell`) as a user's cell would be:

    h_t = relu(W_ih x_t + b_ih + u * h_{t-1})        W_ih (H, I), b_ih (H,), u (H,) = weight_hh

Each unit recurs only on itself through one scalar u_j, so the gradient through T steps is
u_j^T times the relu gates: |u_j| <= gamma^(1/T) bounds its growth by gamma over T steps (the
paper's constraint). With `max_steps=T` the cell keeps |u| <= 2^(1/T) (u is clamped where it is
used) and draws u uniformly in [0, 2^(1/T)], the long-memory start of the paper's adding
experiments; by default u ~ U(0, 1). W_ih ~ U(-1/sqrt(H), 1/sqrt(H)) as torch's cells; b_ih = 0.

`forward_sequence` is the fused kernel: the input projection of all steps as one matrix product,
then the loop (compiled on CPU: speed/cpp/indrnn.cpp; the Python loop below is its reference and
the path elsewhere), and the hand-derived backward (BPTT):

    a_t = W_ih x_t + b_ih + u * h_{t-1},  h_t = relu(a_t)
    g_t = dL/dh_t (from y_t and from step t+1),  d_t = g_t * [a_t > 0]
    dL/du = sum_t d_t * h_{t-1},  dL/dh_{t-1} += d_t * u,  dL/dW_ih = sum_t d_t^T x_t,
    dL/db_ih = sum_t d_t,  dL/dx_t = d_t W_ih
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from rnnkit._checks import check_bool, check_positive_int
from rnnkit.cells.base import Cell
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed.gc_pause import without_cycle_gc  # no cycle collection inside the time loop


class _IndRNNSequence(torch.autograd.Function):
    """(x (T, B, I), h0 (B, H), w_ih (H, I), b_ih (H,) or None, u (H,), batch_sizes) ->
    (y (T, B, H), h_n (B, H)); rows past a sequence's length keep their state and output 0."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, b_ih, u, batch_sizes):
        T, B, I = x.shape
        H = w_ih.shape[0]
        pre = x.reshape(T * B, I) @ w_ih.t()  # (T*B, H): every step's input projection at once
        if b_ih is not None:
            pre += b_ih
        pre = pre.view(T, B, H)
        h = h0.contiguous().clone()
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/indrnn.cpp), into pre itself
            native.indrnn_forward(pre, h, u.contiguous(), batch_sizes or [])
            y = pre
        else:
            y = x.new_zeros(T, B, H)
            for t in range(T):
                n = B if batch_sizes is None else batch_sizes[t]
                h[:n] = torch.relu(pre[t, :n] + u * h[:n])
                y[t, :n] = h[:n]
        ctx.save_for_backward(x, h0, w_ih, u, y)
        ctx.batch_sizes, ctx.has_bias, ctx.native = batch_sizes, b_ih is not None, native
        return y, h

    @staticmethod
    @once_differentiable
    @without_cycle_gc
    def backward(ctx, grad_y, grad_h):
        x, h0, w_ih, u, y = ctx.saved_tensors
        T, B, I = x.shape
        H = w_ih.shape[0]
        g = h0.new_zeros(h0.shape) if grad_h is None else grad_h.contiguous().clone()  # dL/dh_t, (B, H)
        d = y.new_zeros(y.shape)  # dL/da_t, (T, B, H)
        du = u.new_zeros(u.shape)
        if ctx.native is not None:
            gy = None if grad_y is None else grad_y.contiguous()
            ctx.native.indrnn_backward(
                gy, g, y, h0.contiguous(), u.contiguous(), ctx.batch_sizes or [], d, du
            )
        else:
            _backward_steps(grad_y, g, y, h0, u, ctx.batch_sizes, d, du)
        d2 = d.view(T * B, H)
        dx = (d2 @ w_ih).view(T, B, I) if ctx.needs_input_grad[0] else None
        dw = d2.t() @ x.reshape(T * B, I) if ctx.needs_input_grad[2] else None
        db = d2.sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return dx, g, dw, db, du, None


def _backward_steps(grad_y, g, y, h0, u, batch_sizes, d, du) -> None:
    """The backward loop in eager ops (the compiled one's reference): g (B, H) from dL/dh_T to
    dL/dh_0, dL/da_t into d, dL/du into du."""
    T, B, _ = y.shape
    for t in reversed(range(T)):
        n = B if batch_sizes is None else batch_sizes[t]
        if grad_y is not None:
            g[:n] += grad_y[t, :n]
        d[t, :n] = g[:n] * (y[t, :n] > 0)  # relu'(a_t): h_t > 0 exactly where a_t > 0
        h_prev = h0[:n] if t == 0 else y[t - 1, :n]  # an active row was active at t-1 too
        du += (d[t, :n] * h_prev).sum(0)
        g[:n] = d[t, :n] * u


class IndRNNCell(Cell):
    """One IndRNN step, h_t = relu(W_ih x_t + b_ih + u * h_{t-1}); see the module docstring."""

    recurrent_weights = ("weight_hh",)

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, max_steps: int | None = None):
        super().__init__(input_size, hidden_size)
        self.bias = check_bool("bias", bias)
        self.max_steps = None if max_steps is None else check_positive_int("max_steps", max_steps)
        self.recurrent_max = None if max_steps is None else 2.0 ** (1.0 / max_steps)
        self.state_sizes = (hidden_size,)
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size).uniform_(0.0, self.recurrent_max or 1.0))
        self.bias_ih = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def _u(self) -> torch.Tensor:
        u = self.weight_hh
        return u if self.recurrent_max is None else u.clamp(-self.recurrent_max, self.recurrent_max)

    def forward(self, x_t: torch.Tensor, state: tuple) -> tuple:
        (h,) = state  # (B, H)
        return (torch.relu(nn.functional.linear(x_t, self.weight_ih, self.bias_ih) + self._u() * h),)

    def forward_sequence(self, x: torch.Tensor, state: tuple, batch_sizes=None):
        y, h = _IndRNNSequence.apply(x, state[0], self.weight_ih, self.bias_ih, self._u(), batch_sizes)
        return y, (h,)

    def extra_repr(self) -> str:
        extra = "" if self.bias else ", bias=False"
        return super().extra_repr() + extra + (f", max_steps={self.max_steps}" if self.max_steps else "")
