"""minGRU and minLSTM (Feng, Tung, Ahmed, Bengio and Hajimirsadeghi 2024, "Were RNNs All We
Needed?"): gates that read only x_t, so the recurrence is linear in h and runs as a scan
(`rnnkit.cells.scan`). Gate order z, h~ (minGRU) and f, i, h~ (minLSTM).

minGRU, with W_ih (2H, I) and b_ih (2H,):
    z_t  = sigmoid(W_iz x_t + b_iz)
    h~_t = W_ih~ x_t + b_ih~
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t            a_t = 1 - z_t,  b_t = z_t * h~_t
minLSTM, with W_ih (3H, I) and b_ih (3H,):
    f_t = sigmoid(W_if x_t + b_if),  i_t = sigmoid(W_ii x_t + b_ii),  h~_t = W_ih~ x_t + b_ih~
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)   (the paper's time-independent scaling)
    h_t = f'_t * h_{t-1} + i'_t * h~_t                  a_t = f'_t,  b_t = i'_t * h~_t
Shapes: x_t (B, I), h_t (B, H). Initialisation (the layers') as torch's GRU: U(-1/sqrt(H), 1/sqrt(H)).

Log-space variant (the paper's appendix): h~ goes through g(x) = x + 0.5 (x >= 0), sigmoid(x)
(x < 0), which is positive and continuous, so every state is positive and the scan runs on logs:
    log a_t = -softplus(k_z),  log b_t = -softplus(-k_z) + log g(h~_t)            (minGRU)
    d_t = softplus(-k_f) - softplus(-k_i),  log a_t = -softplus(d_t),
    log b_t = -softplus(-d_t) + log g(h~_t)                                         (minLSTM)
The state passed in (hx) is the state itself and must be >= 0, so a final state can be passed
back in to continue a sequence; with none given, h_0 = g(0) = 0.5, the paper's g applied to zeros.

Backward of the gates (`gate_grads`), from da, db (or dlog a, dlog b), with gate values
recomputed from the pre-activations; the scan's own backward is in `rnnkit.cells.scan`:
    minGRU:   dk_z = (db h~ - da) z (1 - z),      dh~ = db z
       log:   dk_z = dlog b (1 - z) - dlog a z,   dh~ = dlog b (log g)'(h~)
    minLSTM:  with a = f', d = log i - log f:  dd = (db h~ - da) f' i'  (log: dlog b f' - dlog a i'),
              dk_f = -dd (1 - f),  dk_i = dd (1 - i),  dh~ = db i'  (log: dlog b (log g)'(h~))
    (log g)'(x) = 1 / (x + 0.5) for x >= 0, 1 - sigmoid(x) below.
`MinRNN` fuses the whole layer (input GEMM, gates, scan and their backward) and runs it over
time in pieces of a few hundred steps on CPU, the state carried between pieces.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus

from rnnkit._checks import (
    allocating,
    check_bool,
    check_choice,
    check_like,
    check_positive_int,
    check_shape,
    check_tensor,
    shape_str,
)
from rnnkit.cells._kernel import check_batch_sizes, forbid_double_backward, linear
from rnnkit.cells._unit import Unit
from rnnkit.cells.scan import MODES, scan, scan_backward
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product
from rnnkit.errors import RnnkitValueError

# The two forms, as min_rnn's `cell=` names them, and their gate counts. (These spell the forms of
# this family's kernel, not registry names: the cells are registered as min_gru and min_lstm.)
MIN_GRU, MIN_LSTM = "gru", "lstm"
GATES = {MIN_GRU: 2, MIN_LSTM: 3}


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for h~ in log space: x + 0.5 for x >= 0, sigmoid(x) else."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    # relu inside the log keeps the branch not taken finite, so its gradient is not NaN
    return torch.where(x >= 0, torch.log(torch.relu(x) + 0.5), -softplus(-x))


def coefficients(pre: torch.Tensor, cell: str, log_space: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate pre-activations W_ih x + b_ih (..., G*H) -> the recurrence's (a, b), or (log a, log b)
    when log_space, each (..., H): the equations of the module docstring."""
    if cell == MIN_GRU:
        k, h_tilde = pre.chunk(2, dim=-1)
        if log_space:
            return -softplus(k), -softplus(-k) + log_g(h_tilde)
        z = torch.sigmoid(k)
        return 1 - z, z * h_tilde
    k_f, k_i, h_tilde = pre.chunk(3, dim=-1)
    if log_space:
        d = softplus(-k_f) - softplus(-k_i)  # log i - log f
        return -softplus(d), -softplus(-d) + log_g(h_tilde)
    f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
    total = f + i
    return f / total, i / total * h_tilde


def _log_g_grad(h_tilde):
    """d log g / dx: 1 / (x + 0.5) for x >= 0, 1 - sigmoid(x) below."""
    return torch.where(h_tilde >= 0, (h_tilde.clamp(min=0) + 0.5).reciprocal_(), torch.sigmoid(-h_tilde))


def gate_values(pre, cell, log_space, out=None):
    """`coefficients` without autograd: (a, b) or (log a, log b), into `out` (two (..., H)
    buffers) where given and not in log space. In place is safe here: no graph is recorded."""
    if log_space:
        return coefficients(pre, cell, log_space)
    k, *_, h_tilde = pre.chunk(GATES[cell], dim=-1)
    a, b = out if out is not None else (torch.empty_like(h_tilde), torch.empty_like(h_tilde))
    if cell == MIN_GRU:
        z = torch.sigmoid(k, out=a)
        torch.mul(z, h_tilde, out=b)
        return z.neg_().add_(1), b  # a = 1 - z
    torch.sigmoid(k, out=a)  # f
    torch.sigmoid(pre.chunk(3, dim=-1)[1], out=b)  # i
    a.div_(b.add_(a))  # f' = f / (f + i)
    torch.mul(a, h_tilde, out=b)
    return a, torch.sub(h_tilde, b, out=b)  # f', i' h~ = (1 - f') h~


def gate_grads(pre, da, db, cell, log_space, out=None, scratch=None):
    """dL/dpre (..., G*H) from dL/da, dL/db (or dL/dlog a, dL/dlog b), the backward of the module
    docstring, written into one buffer, `out` if given (autograd would keep a temporary per op
    and then concatenate the gate blocks); `scratch` (..., H) an optional buffer for the minLSTM's
    f'. Gate values are recomputed from the pre-activations."""
    d_pre = torch.empty_like(pre) if out is None else out
    if cell == MIN_GRU:
        (k, h_tilde), (dk, dh) = pre.chunk(2, dim=-1), d_pre.chunk(2, dim=-1)
        z = torch.sigmoid(k, out=dh)  # recomputed into dh~'s slot
        if log_space:  # dk = dlb (1 - z) - dla z
            torch.add(db, da, out=dk).mul_(z)
            torch.sub(db, dk, out=dk)
        else:  # dk = (db h~ - da) z (1 - z)
            torch.mul(db, h_tilde, out=dk).sub_(da).mul_(z)
            dk.addcmul_(dk, z, value=-1)
            z.mul_(db)  # dh~ = db z
            return d_pre
    else:
        (k_f, k_i, h_tilde), (dkf, dki, dh) = pre.chunk(3, dim=-1), d_pre.chunk(3, dim=-1)
        # f and i are recomputed into their gradients' slots, dd goes into dh~'s until dh~ is
        # computed, and a = f' into the one other buffer
        f, i = torch.sigmoid(k_f, out=dkf), torch.sigmoid(k_i, out=dki)
        a = torch.add(f, i, out=scratch)
        torch.div(f, a, out=a)  # f'
        dd = torch.add(db, da, out=dh) if log_space else torch.mul(db, h_tilde, out=dh)
        if log_space:  # dd = dlb a - dla i'
            dd.mul_(a).sub_(da)
        else:  # dd = (db h~ - da) a i'
            dd.sub_(da).mul_(a)
            dd.addcmul_(dd, a, value=-1)
        f.mul_(dd).sub_(dd)  # dk_f = -dd (1 - f), in f's slot
        i.mul_(dd).neg_().add_(dd)  # dk_i = dd (1 - i), in i's slot
        if not log_space:  # dh~ = db i' = db - db f'
            torch.mul(db, a, out=dh)
            torch.sub(db, dh, out=dh)
            return d_pre
    torch.mul(db, _log_g_grad(h_tilde), out=dh)  # dh~ = dlb (log g)'(h~)
    return d_pre


# Steps per piece of `MinRNN`: chosen so a piece's pre-activations (steps * B * G*H floats) stay
# near BLOCK_ELEMS, a few MB that the gate and scan ops find in cache after the GEMM wrote them.
BLOCK_ELEMS = 1 << 21


def time_block(T: int, B: int, GH: int, device: torch.device) -> int:
    # On a GPU the whole sequence is one piece: its scan is parallel over all steps.
    return T if device.type != "cpu" else max(1, min(T, BLOCK_ELEMS // (B * GH)))


class MinRNN(torch.autograd.Function):
    """minGRU/minLSTM over a whole sequence, fused: projection, gates, masks and scan, forward and
    backward, run piece by piece over time (`time_block` steps at a time, the state carried from
    piece to piece forwards and the scan's gradient backwards).

    Why pieces: on CPU the work between the GEMMs is a handful of elementwise passes, which cost
    little on a piece that sits in cache but a full trip to memory each on (T, B, H) tensors, and
    every fresh tensor of that size faults in page by page (docs/benchmarks.md). Only the
    pre-activations (saved for the backward), the output and dL/dx are sequence-sized. Gate
    values are recomputed in the backward from the saved pre-activations.
    """

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, h0, w_ih, b_ih, cell, log_space, mode, mask, block):
        T, B, _ = x.shape
        GH, H = w_ih.shape[0], h0.shape[1]
        pres = []  # each piece's pre-activations, (n, B, G*H), as the GEMM returned them
        y = torch.empty(T, B, H, dtype=x.dtype, device=x.device)
        project = Product(w_ih, block * B, b_ih)
        ab = torch.empty(2, block, B, H, dtype=x.dtype, device=x.device)  # a piece's (a, b)
        h = h0
        for t0 in range(0, T, block):
            s = slice(t0, min(t0 + block, T))
            n = s.stop - s.start
            pres.append(project(x[s].reshape(n * B, -1)).view(n, B, GH))
            a, b = _masked(gate_values(pres[-1], cell, log_space, out=ab[:, :n]), mask, s, log_space)
            if log_space and mode == "parallel":
                scan(a, b, h.log(), log_space=True, out=y[s]).exp_()
            else:
                if log_space:  # the paper's sequential mode steps on values
                    a, b = a.exp_(), b.exp_()
                scan(a, b, h, mode=mode, out=y[s])
            h = y[s.stop - 1].clone()  # the state carried on (padded rows keep theirs)
        if mask is not None:
            y.mul_(mask)  # outputs past each sequence's end are zeros
        ctx.save_for_backward(x, h0, w_ih, y, mask, *pres)  # pieces kept apart: no copy into one
        ctx.cell, ctx.log_space, ctx.mode, ctx.block = cell, log_space, mode, block
        return y, h

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_h):
        forbid_double_backward("minimal RNN")
        x, h0, w_ih, y, mask, *pres = ctx.saved_tensors
        cell, log_space, mode, block = ctx.cell, ctx.log_space, ctx.mode, ctx.block
        T, B, I = x.shape
        GH = w_ih.shape[0]
        need_x, need_h0, need_w, need_b = ctx.needs_input_grad[:4]
        # contiguous whatever x is (a batch-first input arrives as a transposed view): rows are viewed below
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        dw = torch.zeros_like(w_ih) if need_w else None
        db_ih = w_ih.new_zeros(GH) if need_b else None
        to_x = Product(w_ih.t(), block * B) if need_x else None
        # A piece's buffers, reused from piece to piece: (a, b, g, da, f'), and dL/dpre
        work = torch.empty(5, block, B, y.shape[-1], dtype=x.dtype, device=x.device)
        d_pre_work = torch.empty(block, B, GH, dtype=x.dtype, device=x.device)
        carry = grad_h  # g_{T-1} = dL/dy_{T-1} + dL/dh_n: h_n is the state after the last step
        for t0, pre in reversed(list(zip(range(0, T, block), pres))):  # the forward's pieces
            s = slice(t0, min(t0 + block, T))
            n = s.stop - s.start
            a, b = _masked(gate_values(pre, cell, log_space, out=work[:2, :n]), mask, s, log_space)
            if log_space:
                a, b = a.exp_(), b.exp_()
            dy = grad_y[s] if mask is None else grad_y[s] * mask[s]  # y is the masked state
            # h_{t-1} at a piece's first step; a row padded there has da = 0 whatever it is
            h_first = h0 if s.start == 0 else y[s.start - 1]
            da, db, carry = scan_backward(a, y[s], h_first, dy, mode, carry=carry, out=work[2:4, :n])
            if mask is not None:  # padded steps were a = 1, b = 0: constants
                da.mul_(mask[s])
                db.mul_(mask[s])
            if log_space:  # dL/dlog a = a dL/da, dL/dlog b = b dL/db
                da.mul_(a)
                db.mul_(b)
            d_pre = gate_grads(pre, da, db, cell, log_space, d_pre_work[:n], work[4, :n]).view(n * B, GH)
            if need_x:
                to_x(d_pre, out=dx[s].view(n * B, I))
            if need_w:
                dw.addmm_(d_pre.t(), x[s].reshape(n * B, I))
            if need_b:
                db_ih.add_(d_pre.sum(0))
        return dx, carry if need_h0 else None, dw, db_ih, None, None, None, None, None


def _masked(ab, mask, s, log_space):
    """(a, b) of steps s with padded steps made a no-op, a = 1 and b = 0 (log a = 0, log b = -inf),
    so each finished sequence keeps its state."""
    a, b = ab
    if mask is not None:
        pad = ~mask[s]
        a.masked_fill_(pad, 0.0 if log_space else 1.0)
        b.masked_fill_(pad, float("-inf") if log_space else 0.0)
    return a, b


def initial_state(like: torch.Tensor, B: int, H: int, log_space: bool) -> torch.Tensor:
    """The state used when none is given: zeros, or g(0) = 0.5 in log space (the paper's)."""
    return like.new_full((B, H), 0.5 if log_space else 0.0)


def check_log_state(name: str, h: torch.Tensor) -> None:
    """A log-space state must be >= 0 (its log is taken)."""
    if bool((h < 0).any()):
        raise RnnkitValueError(
            f"{name} must be >= 0 with log_space=True (the scan runs on log h), got a minimum of "
            f"{float(h.min()):.4g}"
        )


def min_rnn(
    x, h0, w_ih, b_ih=None, *, cell=MIN_GRU, log_space=False, mode="parallel", batch_sizes=None, block=None
):
    """minGRU (cell="gru") or minLSTM (cell="lstm") over a whole sequence: x (T, B, I), h0 (B, H)
    or None -> (y (T, B, H), h_n (B, H)). `batch_sizes` as in PackedSequence: a finished sequence
    keeps its state (a = 1, b = 0 on its padded steps) and outputs zeros. `mode` is the scan's:
    "parallel" (blocked) or "sequential" (a loop); both give the same numbers. `block`: time
    steps per piece of the fused kernel (`MinRNN`), by default chosen from the sizes."""
    check_choice("cell", cell, tuple(GATES))
    check_choice("mode", mode, MODES)
    check_tensor("x", x, ndim=3)
    T, B, I = x.shape
    if T == 0:
        raise RnnkitValueError("x must hold at least one time step, got a sequence of length 0")
    check_tensor("w_ih", w_ih, ndim=2)
    check_like("x", x, "w_ih", w_ih)
    G = GATES[cell]
    if w_ih.shape[0] % G or w_ih.shape[0] == 0:
        raise RnnkitValueError(
            f"w_ih must have {G}*hidden_size rows for min{cell.upper()}, got shape {shape_str(w_ih)}"
        )
    H = w_ih.shape[0] // G
    check_shape("w_ih", w_ih, (G * H, I), f"(= ({G}*hidden_size, input_size) for x {shape_str(x)})")
    if b_ih is not None:
        check_tensor("b_ih", b_ih, ndim=1)
        check_shape("b_ih", b_ih, (G * H,), f"(= ({G}*hidden_size,))")
        check_like("b_ih", b_ih, "w_ih", w_ih)
    if h0 is None:
        h0 = initial_state(x, B, H, log_space)
    check_tensor("h0", h0, ndim=2)
    check_shape("h0", h0, (B, H), "(batch, hidden_size)")
    check_like("h0", h0, "x", x)
    if log_space:
        check_log_state("h0", h0)
    bs = check_batch_sizes(batch_sizes, T, B)
    mask = None
    if bs is not None:  # (T, B, 1): step t of sequence b is valid
        steps = torch.tensor(bs, device=x.device)[:, None]  # (T, 1)
        mask = (torch.arange(B, device=x.device)[None, :] < steps).unsqueeze(-1)
    if block is None:
        block = time_block(T, B, G * H, x.device)
    else:
        check_positive_int("block", block)
    return MinRNN.apply(x, h0, w_ih, b_ih, cell, log_space, mode, mask, block)


def min_step(x_t, h, w_ih, b_ih, *, cell, log_space):
    """One step: (x_t (B, I), h (B, H)) -> h' (B, H), on values (as the paper's sequential mode)."""
    a, b = coefficients(linear(x_t, w_ih, b_ih), cell, log_space)
    if log_space:
        a, b = a.exp(), b.exp()
    return torch.addcmul(b, a, h)


class _MinCell(nn.Module):
    """One step of minGRU/minLSTM: forward(input (B, I) or (I,), hx (B, H) or (H,) or None) -> h'
    of hx's shape. Parameters weight_ih (G*H, I) and bias_ih (G*H,), U(-1/sqrt(H), 1/sqrt(H)) as
    torch's GRUCell; no recurrent weights, as the gates read only x_t."""

    gates = 2
    cell = MIN_GRU

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, log_space=False):
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        for name, flag in (("bias", bias), ("log_space", log_space)):
            check_bool(name, flag)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias, self.log_space = (
            input_size,
            hidden_size,
            bias,
            log_space,
        )
        G = self.gates
        with allocating(f"{type(self).__name__}(input_size={input_size}, hidden_size={hidden_size})"):
            self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size, **factory))
            self.bias_ih = nn.Parameter(torch.empty(G * hidden_size, **factory)) if bias else None
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s + ("" if self.bias else ", bias=False") + (", log_space=True" if self.log_space else "")

    def forward(self, input, hx=None):
        check_tensor("input", input, ndim=(1, 2))
        check_like("input", input, "weight_ih", self.weight_ih)
        x = input if input.dim() == 2 else input.unsqueeze(0)  # (B, I)
        B, H = x.shape[0], self.hidden_size
        check_shape("input", x, (B, self.input_size), "(batch, input_size)")
        if hx is None:
            h = initial_state(x, B, H, self.log_space)
        else:
            check_tensor("hx", hx, ndim=input.dim())
            check_like("hx", hx, "input", input)
            h = hx if hx.dim() == 2 else hx.unsqueeze(0)  # (B, H)
            check_shape("hx", h, (B, H), "(batch, hidden_size)")
            if self.log_space:
                check_log_state("hx", h)
        h = min_step(x, h, self.weight_ih, self.bias_ih, cell=self.cell, log_space=self.log_space)
        return h if input.dim() == 2 else h.squeeze(0)


class MinGRUCell(_MinCell):
    """One minGRU step (module docstring); weight_ih (2H, I) stacked z, h~."""

    gates = 2
    cell = MIN_GRU


class MinLSTMCell(_MinCell):
    """One minLSTM step (module docstring); weight_ih (3H, I) stacked f, i, h~."""

    gates = 3
    cell = MIN_LSTM


class _MinUnit(Unit):
    """The `Cell` of minGRU ("min_gru") and minLSTM ("min_lstm"): the equations above, on values
    or in log space (`log_space`), the whole sequence by the scan of `mode` ("parallel" or
    "sequential"). Parameters weight_ih (G*H, I) and bias_ih (G*H,), U(-1/sqrt(H), 1/sqrt(H));
    no recurrent weights (the gates read only x_t), so no weight or recurrent dropout."""

    recurrent_weights = ()
    cell = MIN_GRU

    def __init__(self, input_size, hidden_size, *, bias=True, log_space=False, mode="parallel"):
        check_bool("log_space", log_space)
        check_choice("mode", mode, MODES)
        self.log_space, self.mode = log_space, mode
        super().__init__(input_size, hidden_size, bias=bias)

    def parameter_shapes(self):
        GH = self.gates * self.hidden_size
        return {"weight_ih": (GH, self.input_size), **({"bias_ih": (GH,)} if self.bias else {})}

    def options(self):
        return {**super().options(), "log_space": self.log_space, "mode": self.mode}

    def default_state(self, like: torch.Tensor, batch: int) -> tuple:
        """The state when none is given: zeros, or g(0) = 0.5 in log space (the paper's)."""
        return (initial_state(like, batch, self.hidden_size, self.log_space),)

    def step(self, x_t, state, w, rec_mask=None):
        return (
            min_step(
                x_t, state[0], w["weight_ih"], w.get("bias_ih"), cell=self.cell, log_space=self.log_space
            ),
        )

    def sequence(self, x, state, w, batch_sizes=None, impl="fused"):
        y, h = min_rnn(
            x,
            state[0],
            w["weight_ih"],
            w.get("bias_ih"),
            cell=self.cell,
            log_space=self.log_space,
            mode=self.mode,
            batch_sizes=batch_sizes,
        )
        return y, (h,)

    def extra_repr(self) -> str:
        s = super().extra_repr() + (", log_space=True" if self.log_space else "")
        return s + (f", mode={self.mode!r}" if self.mode != "parallel" else "")


class MinGRUUnit(_MinUnit):
    """minGRU's `Cell` (module docstring); weight_ih (2H, I) stacked z, h~."""

    gates = 2
    cell = MIN_GRU


class MinLSTMUnit(_MinUnit):
    """minLSTM's `Cell` (module docstring); weight_ih (3H, I) stacked f, i, h~."""

    gates = 3
    cell = MIN_LSTM
