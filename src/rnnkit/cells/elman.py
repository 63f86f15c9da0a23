"""Elman RNN: the simple recurrent network (Elman 1990).

    h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   phi = tanh or relu

Shapes: x_t (B, I), h_t (B, H), W_ih (H, I), W_hh (H, H), b_ih and b_hh (H,). One gate (G = 1).

BPTT (the fused backward): with z_t the pre-activation and dL/dh_t = g_t + W_hh^T dz_{t+1}
(g_t the gradient arriving from y_t, plus dL/dh_T at the last step),
    dz_t = dL/dh_t * phi'(z_t),   phi'(z) = 1 - h_t^2 (tanh), [h_t > 0] (relu)
then after the loop, as single GEMMs over all steps:
    dW_ih = sum_t dz_t^T x_t,  dW_hh = sum_t dz_t^T h_{t-1},  db = sum_t dz_t,  dx_t = dz_t W_ih.
"""

from __future__ import annotations

import torch

from rnnkit._checks import check_choice
from rnnkit.cells import speed, traced
from rnnkit.cells._bptt import (
    active_rows,
    add_biases,
    add_final_grad,
    gate_weight_grads,
    input_grad,
    input_projection,
    last_valid,
    next_rows,
    zero_padding_,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._unit import Unit, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product
from rnnkit.cells.speed.tanh import Tanh

NONLINEARITIES = ("tanh", "relu")
_ACT = {"tanh": torch.tanh, "relu": torch.relu}


def elman_step(x_t, state, w_ih, w_hh, b_ih, b_hh, nonlinearity: str = "tanh", *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h,)) -> (h',). `rec_mask` (B, H), if given,
    multiplies h_{t-1} where it enters W_hh (recurrent dropout, `rnnkit.cells._regularize`)."""
    (h,) = state
    if rec_mask is None and speed.on("aten_cells") and not traced.tracing():  # the same ops in C++
        cell = torch.rnn_tanh_cell if nonlinearity == "tanh" else torch.rnn_relu_cell
        return (cell(x_t, h, w_ih, w_hh, b_ih, b_hh),)
    h_in = h if rec_mask is None else h * rec_mask
    return (_ACT[nonlinearity](linear(x_t, w_ih, b_ih) + linear(h_in, w_hh, b_hh)),)


class ElmanFused(torch.autograd.Function):
    """Whole-sequence Elman RNN with the hand-derived BPTT backward of the module docstring.

    The two loops over time run compiled on CPU where `rnnkit.cells.speed.native.ops` allows
    (speed/cpp/elman.cpp, same buffers and results); otherwise the Python loops, which are also
    the compiled ones' reference in tests/test_native.py."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes):
        T, B, _ = x.shape
        bias = add_biases(b_ih, b_hh)
        tanh_ = Tanh(x) if nonlinearity == "tanh" else None
        # with tanh, the products make what `Tanh` wants (2z on CPU)
        w_ih_z, w_hh_z, bias = (v if tanh_ is None else tanh_.prep(v) for v in (w_ih, w_hh, bias))
        recurrent = Product(w_hh_z, B)  # h -> h W_hh^T, on the faster GEMM backend for this size
        # The input projection is computed into the output buffer, and each step adds its
        # recurrent product in place: a product into its own input needs no copy.
        y = input_projection(x, w_ih_z, bias)  # (T, B, H)
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/elman.cpp)
            forward_loop = getattr(native, f"rnn_{nonlinearity}_forward")
            forward_loop(y, w_hh_z.t().contiguous(), h0.contiguous(), batch_sizes or [])
        else:
            h = h0
            for (y_t,) in zip(*active_rows(batch_sizes, y)):
                if batch_sizes:  # the sequences still running are the first rows
                    h = h[: y_t.shape[0]]
                recurrent(h, add=y_t, out=y_t)
                h = y_t.relu_() if tanh_ is None else tanh_(y_t)
        zero_padding_(y, batch_sizes)
        ctx.save_for_backward(x, h0, w_ih, w_hh, y)
        ctx.nonlinearity, ctx.batch_sizes, ctx.native = nonlinearity, batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("Elman RNN")
        x, h0, w_ih, w_hh, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): dL/dy_t, plus dL/dh_T at the end
        dz = workspace.empty_like(y, zero=bool(bs))  # (T, B, H)
        if ctx.native is not None:
            backward_loop = getattr(ctx.native, f"rnn_{ctx.nonlinearity}_backward")
            backward_loop(g, y, w_hh.contiguous(), bs or [], dz)
        else:
            _backward_steps(g, y, w_hh, ctx.nonlinearity, bs, dz)
        dx = input_grad(dz, w_ih) if ctx.needs_input_grad[0] else None
        dw_ih, dw_hh = gate_weight_grads(ctx, dz, x, h0, y, 2, 3)
        dh0 = torch.mm(dz[0], w_hh) if ctx.needs_input_grad[1] else None
        db = dz.sum((0, 1)) if any(ctx.needs_input_grad[4:6]) else None
        return dx, dh0, dw_ih, dw_hh, db, db, None, None


def _backward_steps(g, y, w_hh, nonlinearity, bs, dz) -> None:
    """The backward loop in eager ops (the compiled one's reference): dL/dh_t accumulated in g,
    the pre-activations' gradients into dz (module docstring)."""
    T, B, _ = y.shape
    # phi'(z_t) for all steps at once, outside the sequential loop.
    deriv = 1 - y * y if nonlinearity == "tanh" else (y > 0).to(y.dtype)  # (T, B, H)
    gs, ds, dzs = active_rows(bs, g, deriv, dz)  # per-step views of the active rows
    dzs_next = next_rows(bs, dz)  # dz_{t+1} restricted to the rows active at t
    back = Product(w_hh.t(), B)  # dz -> dz W_hh
    for t in range(T - 1, -1, -1):
        # dL/dh_t = g_t + dz_{t+1} W_hh  (rows of sequences that ended before t+1 are zero)
        dh = gs[t] if t == T - 1 else back(dzs_next[t], add=gs[t], out=gs[t])
        torch.mul(dh, ds[t], out=dzs[t])


def _elman(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, batch_sizes, impl):
    return run_kernel(
        x,
        {"h0": h0},
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        gates=1,
        batch_sizes=batch_sizes,
        impl=impl,
        step=lambda x_t, s: elman_step(x_t, s, w_ih, w_hh, b_ih, b_hh, nonlinearity),
        fused=lambda h0, bs: ElmanFused.apply(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, bs),
    )


def rnn_tanh(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, batch_sizes=None, impl="fused"):
    """Elman RNN with tanh over a whole sequence: x (T, B, I), h0 (B, H) or None -> (y (T, B, H),
    h_n (B, H)). `batch_sizes` as in PackedSequence (sequences sorted by decreasing length);
    `impl="fused"` runs the hand-derived BPTT, `"loop"` the step equations under autograd."""
    return _elman(x, h0, w_ih, w_hh, b_ih, b_hh, "tanh", batch_sizes, impl)


def rnn_relu(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, batch_sizes=None, impl="fused"):
    """Elman RNN with relu; otherwise as `rnn_tanh`."""
    return _elman(x, h0, w_ih, w_hh, b_ih, b_hh, "relu", batch_sizes, impl)


class ElmanUnit(Unit):
    """The Elman family's `Cell` (registered as "rnn"; `ElmanReluUnit`, "rnn_relu"): the equations
    above with phi = `nonlinearity`; parameters and their use as `rnnkit.cells._unit.Unit`."""

    gate_names = ("hh",)

    def __init__(self, input_size, hidden_size, *, bias=True, nonlinearity="tanh"):
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias=bias)

    def options(self):
        return {**super().options(), "nonlinearity": self.nonlinearity}

    def step(self, x_t, state, w, rec_mask=None):
        return elman_step(x_t, state, *torch_weights(w), self.nonlinearity, rec_mask=rec_mask)

    def onnx_sequence(self, x, state, w, lengths=None):
        act = {"tanh": "Tanh", "relu": "Relu"}[self.nonlinearity]
        return traced.onnx_recurrent("RNN", x, state, w, [0], lengths, activations=[act])

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        y, h = _elman(x, state[0], *torch_weights(w), self.nonlinearity, batch_sizes, impl)
        return y, (h,)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity!r}"


class ElmanReluUnit(ElmanUnit):
    """`ElmanUnit` with phi = relu by default."""

    def __init__(self, input_size, hidden_size, *, bias=True, nonlinearity="relu"):
        super().__init__(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity)
