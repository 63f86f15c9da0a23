"""Gated recurrent unit (Cho et al. 2014), in both of its published forms, gate order r, z, n:

    r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)        reset gate
    z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)        update gate
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))   reset_after=True (torch, cuDNN)
    n_t = tanh(W_in x_t + b_in + W_hn (r_t * h_{t-1}) + b_hn)   reset_after=False (the paper)
    h_t = (1 - z_t) * n_t + z_t * h_{t-1}

Shapes: x_t (B, I), h_t (B, H); W_ih (3H, I), W_hh (3H, H), b_ih and b_hh (3H,), blocks r, z, n.
The two forms differ only in where the reset gate acts: torch's lets one GEMM compute all of
W_hh h_{t-1} per step (b_hn stays inside r * (...)); the paper's needs r_t before its second
product (and every bias simply adds, so all fold into the input projection).

BPTT (the fused backward), walking t from T to 1, with dh_t the full gradient at h_t (from y_t,
from dL/dh_T at the last step, and from step t+1), and ~ marking a pre-activation's gradient:
    dn~_t = dh_t (1 - z_t)(1 - n_t^2)
    dz~_t = dh_t (h_{t-1} - n_t) z_t (1 - z_t)
  reset_after=True, with a_t = W_hn h_{t-1} + b_hn:
    dr~_t = dn~_t a_t r_t (1 - r_t)
    dh_{t-1} += dh_t z_t + [dr~_t, dz~_t, dn~_t r_t] W_hh
  reset_after=False, with du_t = dn~_t W_hn the gradient at u_t = r_t * h_{t-1}:
    dr~_t = du_t h_{t-1} r_t (1 - r_t)
    dh_{t-1} += dh_t z_t + du_t r_t + [dr~_t, dz~_t] W_h(r,z)
The factors multiplying dh_t (and du_t) depend on the forward pass alone, so they are computed
for all steps before the loop; each step turns its factors into gradients in place. After the
loop, as single GEMMs over all steps: dW_ih = sum_t [dr~, dz~, dn~]_t^T x_t, dW_hh against
h_{t-1} (torch's form: [dr~, dz~, dn~ r]; the paper's W_hn against u_t), the biases as sums
(b_hn's of dn~ r in torch's form), and dx_t = [dr~, dz~, dn~]_t W_ih.
"""

from __future__ import annotations

import torch

from rnnkit._checks import check_bool
from rnnkit.cells import traced
from rnnkit.cells._bptt import (
    active_rows,
    add_biases,
    add_final_grad,
    gru_shared_factors_,
    input_grad,
    input_projection,
    last_valid,
    prev_rows,
    zero_padding_,
)
from rnnkit.cells._kernel import forbid_double_backward, linear, run_kernel
from rnnkit.cells._unit import Unit, torch_weights
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product, weight_grads
from rnnkit.cells.speed.tanh import Tanh


def gru_step(x_t, state, w_ih, w_hh, b_ih, b_hh, reset_after=True, *, rec_mask=None):
    """One step of the equations above: (x_t (B, I), (h,)) -> (h',). `rec_mask` (B, H), if given,
    multiplies h_{t-1} where it enters W_hh (recurrent dropout, `rnnkit.cells._regularize`); the
    final mix z_t * h_{t-1} keeps the unmasked state."""
    (h,) = state
    H = h.shape[1]
    h_in = h if rec_mask is None else h * rec_mask
    xr, xz, xn = linear(x_t, w_ih, b_ih).chunk(3, dim=1)
    b_hr, b_hz, b_hn = (None,) * 3 if b_hh is None else b_hh.chunk(3)
    w_hr, w_hz, w_hn = w_hh.split(H)
    r = torch.sigmoid(xr + linear(h_in, w_hr, b_hr))
    z = torch.sigmoid(xz + linear(h_in, w_hz, b_hz))
    if reset_after:
        n = torch.tanh(xn + r * linear(h_in, w_hn, b_hn))
    else:
        n = torch.tanh(xn + linear(r * h_in, w_hn, b_hn))
    return ((1 - z) * n + z * h,)


class GRUResetAfter(torch.autograd.Function):
    """Whole-sequence GRU, torch's form (reset_after=True), with the hand-derived BPTT above.

    In the backward the input side is ordered n, r, z, so that one broadcast product per step
    turns the factors (B, 4, H) into [dn~, dr~, dz~, dn~ r]: its first 3H columns are the
    input-side pre-activation gradients, its last 3H the recurrent side's (W_hh's order r, z, n).

    The two loops over time run compiled on CPU where `rnnkit.cells.speed.native.ops` allows
    (native/gru.cpp, same buffers and results); otherwise the Python loops below
    (`_reset_after_forward_steps`, `_reset_after_backward_steps`), which are also the compiled
    ones' reference in tests/test_native.py.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        zeros = x.new_zeros(3 * H)
        bi, bh = (zeros if b_ih is None else b_ih), (zeros if b_hh is None else b_hh)
        # n's pre-activation is made as `Tanh` wants it (doubled on CPU: the n rows of W_ih, W_hh
        # and the biases times 2; k below).
        tanh_ = Tanh(x)
        # One buffer a (T, B, 3H) receives every step's W_hh h_{t-1} in place: its r, z blocks
        # start as the input projection (so they end as the gates' pre-activations) and its n
        # block as k b_hn (so it ends as k a_t = k (W_hn h_{t-1} + b_hn), which r multiplies).
        b = torch.cat([bi[: 2 * H] + bh[: 2 * H], tanh_.prep(bi[2 * H :])])
        a = input_projection(x, tanh_.prep(w_ih, 2 * H), b)
        n = workspace.copy(a[..., 2 * H :])  # (T, B, H): k (W_in x + b_in), then n in place
        a[..., 2 * H :] = tanh_.prep(bh[2 * H :])
        w_hh_k = tanh_.prep(w_hh, 2 * H)
        y = workspace.empty_like(n, zero=bool(batch_sizes))  # (T, B, H)
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (native/gru.cpp)
            native.gru_forward(a, n, y, h0.contiguous(), w_hh_k.t().contiguous(), batch_sizes or [])
        else:
            _reset_after_forward_steps(a, n, y, h0, w_hh_k, batch_sizes, tanh_)
        tanh_.undo_(a[..., 2 * H :])  # a_t itself, for the backward (exact)
        ctx.save_for_backward(x, h0, w_ih, w_hh, a, n, y)
        ctx.batch_sizes, ctx.native = batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("GRU")
        x, h0, w_ih, w_hh, a, n, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = y.shape
        r, z, an = a.split(H, dim=2)  # (T, B, H) each
        # The factors multiplying dh_t, for all steps at once outside the loop.
        A = workspace.empty((T, B, 4, H), y)  # n, r, z, n r
        a_n, a_r, a_z, a_nr = A.unbind(2)
        gru_shared_factors_(a_n, a_z, z, n, h0, y)
        torch.mul(a_n, r, out=a_nr)  # dn~ r / dh
        torch.mul(a_nr, an, out=a_r).addcmul_(a_r, r, value=-1)  # dr~/dh = dn~/dh a r (1 - r)
        # Each step overwrites its factors with the gradients they give (D_t = A_t dh_t), so
        # there is no second (T, B, 4H) buffer; rows past a sequence's end must then read zero.
        D = zero_padding_(A.view(T, B, 4 * H), bs)  # (T, B, 4H): n, r, z | r, z, n r
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): accumulates dh_t in place
        if ctx.native is not None:
            ctx.native.gru_backward(D, g, a, w_hh.contiguous(), bs or [])
        else:
            _reset_after_backward_steps(A, D, g, z, w_hh, bs)
        back = Product(w_hh.t(), B)  # [dr~, dz~, dn~ r] -> that W_hh
        D_hh0 = D[0, :, H:]
        need = ctx.needs_input_grad
        dx = dh0 = dw_ih = dw_hh = None
        if need[0]:
            # Against W_ih's rows in D's order n, r, z plus H zero rows: D is then read whole, in
            # place (a strided slice would miss the faster GEMM backend; a copy costs more).
            dx = input_grad(D, torch.cat([w_ih.roll(H, 0), w_ih.new_zeros(H, w_ih.shape[1])]))
        if need[1]:
            dh0 = torch.addcmul(back(D_hh0), g[0], z[0])
        if need[2] or need[3]:
            # One product for both, (4H, I + H): W_ih takes rows n, r, z against x, W_hh rows
            # r, z, n r against h_{t-1} (a quarter computed in vain costs less than two passes).
            TB, I = T * B, x.shape[2]
            g_x, g_h = weight_grads(D.view(TB, 4 * H), [[x.reshape(TB, I)], [h0, y[:-1].reshape(-1, H)]])
            dw_ih = g_x[: 3 * H].roll(-H, 0) if need[2] else None  # back to r, z, n
            dw_hh = g_h[H:] if need[3] else None
        sums = D.sum((0, 1)) if need[4] or need[5] else None  # (4H,): n, r, z, n r
        db_ih = sums[: 3 * H].roll(-H, 0) if need[4] else None
        db_hh = sums[H:] if need[5] else None
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None


def _reset_after_forward_steps(a, n, y, h0, w_hh_k, batch_sizes, tanh_) -> None:
    """`GRUResetAfter`'s forward loop in eager ops (the compiled one's reference), in place on its
    buffers: a's r, z blocks become the gates and its n block k a_t; n becomes n_t, y h_t."""
    B, H = y.shape[1], y.shape[2]
    recurrent = Product(w_hh_k, B)  # h -> h W_hh^T, on the faster GEMM backend
    steps = active_rows(batch_sizes, a, a[..., : 2 * H], a[..., :H], a[..., H : 2 * H], a[..., 2 * H :], n, y)
    h = h0
    for a_t, rz_t, r_t, z_t, an_t, n_t, y_t in zip(*steps):
        if batch_sizes:  # the sequences still running are the first rows
            h = h[: y_t.shape[0]]
        recurrent(h, add=a_t, out=a_t)
        rz_t.sigmoid_()
        tanh_(n_t.addcmul_(r_t, an_t))
        torch.lerp(n_t, h, z_t, out=y_t)  # (1 - z) n + z h
        h = y_t


def _reset_after_backward_steps(A, D, g, z, w_hh, bs) -> None:
    """`GRUResetAfter`'s backward loop in eager ops (the compiled one's reference): A (T, B, 4, H)
    scaled by dh_t in place (D, its (T, B, 4H) view, then holds the gradients), dh_t
    accumulated in g."""
    T, B, H = g.shape
    dhs, As, zs, D_hh = active_rows(bs, g, A, z, D[..., H:])
    g_prev = prev_rows(bs, g)
    back = Product(w_hh.t(), B)  # [dr~, dz~, dn~ r] -> that W_hh
    for t in range(T - 1, 0, -1):
        dh = dhs[t]
        torch.mul(As[t], dh.unsqueeze(1), out=As[t])
        # dh_{t-1} += dh_t z_t + [dr~, dz~, dn~ r] W_hh
        g_prev[t].addcmul_(dh, zs[t])
        back(D_hh[t], add=g_prev[t], out=g_prev[t])
    torch.mul(As[0], dhs[0].unsqueeze(1), out=As[0])


class GRUResetBefore(torch.autograd.Function):
    """Whole-sequence GRU, the paper's form (reset_after=False), with the hand-derived BPTT above.
    Two products per step: W_h(r,z) h_{t-1}, then W_hn u_t with u_t = r_t * h_{t-1}. The loops run
    compiled on CPU where `rnnkit.cells.speed.native.ops` allows (speed/cpp/gru_reset_before.cpp);
    otherwise `_reset_before_forward_steps` and `_reset_before_backward_steps`, their reference."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        # (T, B, 3H), all biases folded in; each step turns its r, z, n blocks into the gates.
        # n's pre-activation is made as `Tanh` wants it (doubled on CPU).
        tanh_ = Tanh(x)
        gates = input_projection(x, tanh_.prep(w_ih, 2 * H), tanh_.prep(add_biases(b_ih, b_hh), 2 * H))
        new = workspace.allocator(zero=bool(batch_sizes))
        u = new(gates[..., :H])  # (T, B, H): r_t * h_{t-1}
        y = new(u)  # (T, B, H)
        native = _native.ops(x)
        if native is not None:  # the same loop, compiled (speed/cpp/gru_reset_before.cpp)
            w_rz_t, w_hn_t = (w.t().contiguous() for w in (w_hh[: 2 * H], tanh_.prep(w_hh[2 * H :])))
            native.gru_reset_before_forward(gates, u, y, h0.contiguous(), w_rz_t, w_hn_t, batch_sizes or [])
        else:
            _reset_before_forward_steps(gates, u, y, h0, w_hh, batch_sizes, tanh_)
        ctx.save_for_backward(x, h0, w_ih, w_hh, gates, u, y)
        ctx.batch_sizes, ctx.native = batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_hn):
        forbid_double_backward("GRU")
        x, h0, w_ih, w_hh, gates, u, y = ctx.saved_tensors
        bs = ctx.batch_sizes
        T, B, H = y.shape
        g = add_final_grad(grad_y, grad_hn, bs)  # (T, B, H): accumulates dh_t in place
        if ctx.native is not None:
            D = workspace.empty((T, B, 3 * H), y, zero=bool(bs))
            du = h0.new_empty(h0.shape)
            w_rz, w_hn = w_hh[: 2 * H].contiguous(), w_hh[2 * H :].contiguous()
            ctx.native.gru_reset_before_backward(g, gates, y, h0.contiguous(), w_rz, w_hn, bs or [], D, du)
        else:
            D, du = _reset_before_backward_steps(gates, u, y, h0, w_hh, bs, g)
        need = ctx.needs_input_grad
        dx = dh0 = dw_ih = dw_hh = None
        if need[0]:
            dx = input_grad(D, w_ih)
        if need[1]:  # dL/dh_0 = dh_0 z_0 + du_0 r_0 + [dr~, dz~]_0 W_h(r,z)
            r0, z0 = gates[0, :, :H], gates[0, :, H : 2 * H]
            dh0 = Product(w_hh[: 2 * H].t(), B)(D[0, :, : 2 * H]).addcmul_(g[0], z0).addcmul_(du, r0)
        if need[2] or need[3]:
            # One product for all, (3H, I + 2H): W_ih against x; W_hh's rows r, z against h_{t-1},
            # its rows n against u.
            TB = T * B
            g_x, g_h, g_u = weight_grads(
                D.view(TB, 3 * H), [[x.reshape(TB, -1)], [h0, y[:-1].reshape(-1, H)], [u.view(TB, H)]]
            )
            dw_ih = g_x if need[2] else None
            dw_hh = torch.cat([g_h[: 2 * H], g_u[2 * H :]]) if need[3] else None
        db = D.sum((0, 1)) if need[4] or need[5] else None
        return dx, dh0, dw_ih, dw_hh, db, db, None


def _reset_before_forward_steps(gates, u, y, h0, w_hh, batch_sizes, tanh_) -> None:
    """GRUResetBefore's forward loop in eager ops (the compiled one's reference), in place on its
    buffers: gates holds the input projection and becomes r, z, n; u gets r_t h_{t-1}, y h_t."""
    B, H = y.shape[1], y.shape[2]
    gates_rz = Product(w_hh[: 2 * H], B)  # h -> h W_h(r,z)^T
    candidate = Product(tanh_.prep(w_hh[2 * H :]), B)  # u -> u W_hn^T (times k)
    steps = active_rows(
        batch_sizes, gates[..., : 2 * H], gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :], u, y
    )
    h = h0
    for rz_t, r_t, z_t, n_t, u_t, y_t in zip(*steps):
        if batch_sizes:  # the sequences still running are the first rows
            h = h[: y_t.shape[0]]
        gates_rz(h, add=rz_t, out=rz_t).sigmoid_()
        torch.mul(r_t, h, out=u_t)
        tanh_(candidate(u_t, add=n_t, out=n_t))
        torch.lerp(n_t, h, z_t, out=y_t)  # (1 - z) n + z h
        h = y_t


def _reset_before_backward_steps(gates, u, y, h0, w_hh, bs, g):
    """GRUResetBefore's backward loop in eager ops (the compiled one's reference): dh_t
    accumulated in g; returns D (T, B, 3H) = [dr~, dz~, dn~] and du of the first step."""
    T, B, H = y.shape
    r, z, n = gates.split(H, dim=2)  # (T, B, H) each
    # The factors, for all steps outside the loop, in torch's order r, z, n: a_r multiplies
    # du_t, a_z and a_n multiply dh_t. Each step overwrites them with [dr~, dz~, dn~].
    A = workspace.empty((T, B, 3, H), y)
    a_r, a_z, a_n = A.unbind(2)
    gru_shared_factors_(a_n, a_z, z, n, h0, y)
    torch.addcmul(u, u, r, value=-1, out=a_r)  # h_{t-1} r (1 - r) = u - u r
    D = zero_padding_(A.view(T, B, 3 * H), bs)  # (T, B, 3H): r, z, n
    dhs, A_zn, D_r, D_n, D_rz, rs, zs = active_rows(bs, g, A[:, :, 1:], a_r, a_n, D[..., : 2 * H], r, z)
    g_prev = prev_rows(bs, g)
    back_n = Product(w_hh[2 * H :].t(), B)  # dn~ -> du = dn~ W_hn
    back_rz = Product(w_hh[: 2 * H].t(), B)  # [dr~, dz~] -> that W_h(r,z)
    du = None
    for t in range(T - 1, -1, -1):
        dh = dhs[t]
        torch.mul(A_zn[t], dh.unsqueeze(1), out=A_zn[t])  # dz~, dn~
        du = back_n(D_n[t])
        D_r[t].mul_(du)  # dr~
        if t:  # dh_{t-1} += dh_t z_t + du_t r_t + [dr~, dz~] W_h(r,z)
            g_prev[t].addcmul_(dh, zs[t]).addcmul_(du, rs[t])
            back_rz(D_rz[t], add=g_prev[t], out=g_prev[t])
    return D, du


def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, batch_sizes=None, impl="fused"):
    """GRU over a whole sequence: x (T, B, I), h0 (B, H) or None (zeros) -> (y (T, B, H),
    h_n (B, H)). `reset_after` picks the form (see the module docstring); `batch_sizes` as in
    PackedSequence (sequences sorted by decreasing length); `impl="fused"` runs the hand-derived
    BPTT, `"loop"` the step equations under autograd."""
    check_bool("reset_after", reset_after)
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


class GRUUnit(Unit):
    """The GRU's `Cell` (registered as "gru"; `GRUResetBeforeUnit`, "gru_reset_before"): the
    equations above in the form `reset_after` picks; parameters as `rnnkit.cells._unit.Unit`."""

    gates = 3
    gate_names = ("r", "z", "n")

    def __init__(self, input_size, hidden_size, *, bias=True, reset_after=True):
        check_bool("reset_after", reset_after)
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias=bias)

    def options(self):
        return {**super().options(), "reset_after": self.reset_after}

    def step(self, x_t, state, w, rec_mask=None):
        return gru_step(x_t, state, *torch_weights(w), self.reset_after, rec_mask=rec_mask)

    def onnx_sequence(self, x, state, w, lengths=None):
        # ONNX's GRU: gates z, r, h; linear_before_reset=1 is torch's reset-after form
        before = int(self.reset_after)
        return traced.onnx_recurrent("GRU", x, state, w, [1, 0, 2], lengths, linear_before_reset=before)

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        y, h = gru(
            x, state[0], *torch_weights(w), reset_after=self.reset_after, batch_sizes=batch_sizes, impl=impl
        )
        return y, (h,)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class GRUResetBeforeUnit(GRUUnit):
    """`GRUUnit` in the original form of Cho et al. 2014 by default (reset_after=False)."""

    def __init__(self, input_size, hidden_size, *, bias=True, reset_after=False):
        super().__init__(input_size, hidden_size, bias=bias, reset_after=reset_after)
