"""What every cell family's kernels share: the checks at the functional boundary, the reference
loop over time, and the bookkeeping of the fused kernels (the input projection hoisted out of the
loop, variable lengths, and the large weight-gradient GEMMs after the backward loop).

Conventions, used by all fused kernels:
  x (T, B, I) time-major; states (B, H); gate pre-activations (T, B, G*H).
  `batch_sizes` is None (every sequence has length T) or a non-increasing list of T ints, as in
  `torch.nn.utils.rnn.PackedSequence`: at step t only the first batch_sizes[t] sequences are
  active, so sequences must be sorted by decreasing length. A finished sequence keeps its state
  and gets zero outputs.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable

import torch

from rnnkit._checks import check_choice, check_like, check_shape, check_tensor, shape_str
from rnnkit.cells._gemm import linear as gemm_linear
from rnnkit.cells._gemm import weight_grads
from rnnkit.cells._workspace import empty as workspace_empty
from rnnkit.errors import RnnkitTypeError, RnnkitUnsupportedError, RnnkitValueError

IMPLS = ("fused", "loop")

# A step maps (x_t (B, I), state tuple of (B, *)) to the new state tuple; state[0] is the output.
Step = Callable[[torch.Tensor, tuple], tuple]


# --- checks at the functional boundary -------------------------------------------------------


def check_kernel_args(
    *,
    x,
    states: dict,
    w_ih,
    w_hh,
    b_ih,
    b_hh,
    gates: int,
    batch_sizes,
    impl: str,
    w_hr=None,
) -> list[int] | None:
    """Validate a functional kernel's arguments; return batch_sizes as a list of ints (or None).

    `states` maps argument names to state tensors; "c0" is (B, H), any other (B, P) where P is the
    output size (H, or proj_size when `w_hr` is given).
    """
    check_choice("impl", impl, IMPLS)
    check_tensor("x", x, ndim=3)
    T, B, I = x.shape
    if T == 0:
        raise RnnkitValueError("x must hold at least one time step, got a sequence of length 0")
    check_tensor("w_ih", w_ih, ndim=2)
    check_tensor("w_hh", w_hh, ndim=2)
    check_like("x", x, "w_ih", w_ih)
    if w_ih.shape[0] % gates or w_ih.shape[0] == 0:
        raise RnnkitValueError(
            f"w_ih must have {gates}*hidden_size rows (gates stacked), got shape {shape_str(w_ih)}"
        )
    H = w_ih.shape[0] // gates
    check_shape("w_ih", w_ih, (gates * H, I), f"(= ({gates}*hidden_size, input_size) for x {shape_str(x)})")
    P = H
    if w_hr is not None:
        check_tensor("w_hr", w_hr, ndim=2)
        check_like("w_hr", w_hr, "w_ih", w_ih)
        if w_hr.shape[1] != H:
            raise RnnkitValueError(
                f"w_hr must have shape (proj_size, {H}) (hidden_size columns), got {shape_str(w_hr)}"
            )
        P = w_hr.shape[0]
    check_shape(
        "w_hh",
        w_hh,
        (gates * H, P),
        f"(= ({gates}*hidden_size, {'proj_size' if w_hr is not None else 'hidden_size'}))",
    )
    check_like("w_hh", w_hh, "w_ih", w_ih)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_tensor(name, b, ndim=1)
            check_shape(name, b, (gates * H,), f"(= ({gates}*hidden_size,))")
            check_like(name, b, "w_ih", w_ih)
    for name, s in states.items():
        check_tensor(name, s, ndim=2)
        check_shape(name, s, (B, H if name == "c0" else P), "(batch, hidden)")
        check_like(name, s, "x", x)
    return check_batch_sizes(batch_sizes, T, B)


def check_batch_sizes(batch_sizes, T: int, B: int) -> list[int] | None:
    if batch_sizes is None:
        return None
    if isinstance(batch_sizes, torch.Tensor):
        if batch_sizes.is_floating_point() or batch_sizes.dim() != 1:
            raise RnnkitValueError(
                f"batch_sizes must be a 1-D integer tensor or a list of ints, got "
                f"{batch_sizes.dim()}-D {batch_sizes.dtype}"
            )
        batch_sizes = batch_sizes.tolist()
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in batch_sizes):
        raise RnnkitTypeError("batch_sizes must hold ints")
    bs = list(batch_sizes)
    if len(bs) != T:
        raise RnnkitValueError(f"batch_sizes must have one entry per time step ({T}), got {len(bs)}")
    if bs[0] != B or any(b < 1 for b in bs) or any(a < b for a, b in zip(bs, bs[1:])):
        raise RnnkitValueError(
            f"batch_sizes must be non-increasing, start at the batch size {B} and stay >= 1 "
            f"(sequences sorted by decreasing length), got {bs}"
        )
    return None if bs[-1] == B else bs


def run_kernel(x, states: dict, w_ih, w_hh, b_ih, b_hh, *, gates, batch_sizes, impl, step, fused, w_hr=None):
    """The functional boundary every cell family shares: zeros for states given as None, the
    checks, then the step equations under autograd (`impl="loop"`) or the fused kernel
    (`fused(*states, batch_sizes)`). Returns (y, *final states)."""
    if isinstance(x, torch.Tensor) and x.dim() == 3 and isinstance(w_hh, torch.Tensor) and w_hh.dim() == 2:
        sizes = {"c0": w_hh.shape[0] // gates}  # the cell state is (B, H); the others (B, P)
        states = {
            k: x.new_zeros(x.shape[1], sizes.get(k, w_hh.shape[1])) if v is None else v
            for k, v in states.items()
        }
    bs = check_kernel_args(
        x=x,
        states=states,
        w_ih=w_ih,
        w_hh=w_hh,
        b_ih=b_ih,
        b_hh=b_hh,
        gates=gates,
        batch_sizes=batch_sizes,
        impl=impl,
        w_hr=w_hr,
    )
    if impl == "loop" or x.shape[1] == 0:  # an empty batch: the step's shapes, nothing to fuse
        y, final = run_loop(step, x, tuple(states.values()), bs)
        return (y, *final)
    return fused(*states.values(), bs)


# --- the reference: step equations under autograd --------------------------------------------


def run_loop(step: Step, x: torch.Tensor, state: tuple, batch_sizes: list[int] | None, per_step=()):
    """Run `step` over time under autograd; return (outputs (T, B, P), final state tuple).

    The reference implementation (`impl="loop"`), and so written for clarity: sequences that have
    ended keep their state (torch.cat of new and old rows) and output zeros. `per_step`: further
    (T, B, *) tensors (the zoneout masks of `_regularize`) whose step-t rows are passed to `step`
    after the state, restricted to the active rows like x_t.
    """
    B = x.shape[1]
    outputs = []
    for t, x_t in enumerate(x.unbind(0)):
        n = B if batch_sizes is None else batch_sizes[t]
        extra = [e[t] for e in per_step]
        if n == B:
            state = step(x_t, state, *extra)
            outputs.append(state[0])
        else:
            new = step(x_t[:n], tuple(s[:n] for s in state), *(e[:n] for e in extra))
            state = tuple(torch.cat([a, s[n:]]) for a, s in zip(new, state))
            outputs.append(torch.cat([new[0], new[0].new_zeros(B - n, new[0].shape[1])]))
    return torch.stack(outputs), state


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b, the affine map of the step equations."""
    return torch.nn.functional.linear(x, w, b)


# --- bookkeeping of the fused kernels ---------------------------------------------------------


def add_biases(b_ih: torch.Tensor | None, b_hh: torch.Tensor | None) -> torch.Tensor | None:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor | None):
    """W_ih x_t + bias for all T steps as one GEMM: (T, B, I) -> (T, B, G*H), a pooled buffer."""
    T, B, I = x.shape
    out = workspace_empty((T * B, w_ih.shape[0]), x)
    return gemm_linear(x.reshape(T * B, I), w_ih, bias, out=out).view(T, B, -1)


def active_rows(batch_sizes: list[int] | None, *seqs: torch.Tensor) -> list[list[torch.Tensor]]:
    """For each (T, B, *) tensor, its per-step views restricted to the rows active at that step,
    made once before a loop so the loop itself does no slicing."""
    if batch_sizes is None:
        return [list(s.unbind(0)) for s in seqs]
    return [[v[:n] for v, n in zip(s.unbind(0), batch_sizes)] for s in seqs]


def next_rows(batch_sizes: list[int] | None, seq: torch.Tensor) -> list[torch.Tensor]:
    """seq[t + 1] restricted to the rows active at step t, for t < T - 1 (the backward loop reads
    step t+1's gradient for the sequences still running at t; rows past step t+1's count are 0)."""
    views = seq.unbind(0)[1:]
    if batch_sizes is None:
        return list(views)
    return [v[:n] for v, n in zip(views, batch_sizes)]


def prev_rows(batch_sizes: list[int] | None, seq: torch.Tensor) -> list[torch.Tensor | None]:
    """seq[t - 1] restricted to the rows active at step t (None at t = 0): where a backward loop
    adds step t's contribution to dL/dh_{t-1} in place."""
    views = seq.unbind(0)
    rows = batch_sizes or [seq.shape[1]] * seq.shape[0]
    return [None] + [v[:n] if n < v.shape[0] else v for v, n in zip(views[:-1], rows[1:])]


def lengths_of(batch_sizes: list[int], B: int, device) -> torch.Tensor:
    """Per-sequence lengths (B,) from non-increasing batch sizes."""
    bs = torch.tensor(batch_sizes, device=device)
    return (bs[:, None] > torch.arange(B, device=device)[None, :]).sum(0)


def last_valid(y: torch.Tensor, batch_sizes: list[int] | None) -> torch.Tensor:
    """Each sequence's output at its own last valid step: (T, B, P) -> (B, P), a fresh tensor."""
    if batch_sizes is None:
        return y[-1].clone()
    B = y.shape[1]
    last = lengths_of(batch_sizes, B, y.device) - 1
    return y[last, torch.arange(B, device=y.device)]


def zero_padding_(y: torch.Tensor, batch_sizes: list[int] | None) -> torch.Tensor:
    """Zero, in place, the rows of each step that lie past a sequence's end: (T, B, *)."""
    if batch_sizes is not None:
        B = y.shape[1]
        steps = torch.tensor(batch_sizes, device=y.device)[:, None]  # (T, 1)
        y.mul_((torch.arange(B, device=y.device)[None, :] < steps).unsqueeze(-1).to(y.dtype))
    return y


def add_final_grad(grad_y, grad_last, batch_sizes: list[int] | None) -> torch.Tensor:
    """grad_y (T, B, P) plus the gradient of the final state put at each sequence's last step.

    Returns a fresh (pooled) tensor the backward loop may write into.
    """
    g = workspace_empty(grad_y.shape, grad_y).copy_(grad_y)
    if batch_sizes is None:
        g[-1] += grad_last
    else:
        B = g.shape[1]
        last = lengths_of(batch_sizes, B, g.device) - 1
        g[last, torch.arange(B, device=g.device)] += grad_last
    return g


def weight_grad(d_pre: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """sum_t d_pre[t]^T inputs[t] as one GEMM: (T, B, G*H), (T, B, K) -> (G*H, K)."""
    return torch.mm(d_pre.reshape(-1, d_pre.shape[-1]).t(), inputs.reshape(-1, inputs.shape[-1]))


def gate_weight_grads(ctx, d_pre, x, h0, y, ih_idx: int, hh_idx: int):
    """dW_ih = sum_t d_t^T x_t and dW_hh = sum_t d_t^T h_{t-1} (h_{-1} = h0, h_t = y[t]) as one
    large product after the backward loop; None for a weight that needs no gradient."""
    T, B, _ = x.shape
    need_ih, need_hh = ctx.needs_input_grad[ih_idx], ctx.needs_input_grad[hh_idx]
    blocks = ([[x.reshape(T * B, -1)]] if need_ih else []) + (
        [[h0, y[:-1].reshape(-1, y.shape[-1])]] if need_hh else []
    )
    if not blocks:
        return None, None
    grads = iter(weight_grads(d_pre.reshape(T * B, -1), blocks))
    return (next(grads) if need_ih else None), (next(grads) if need_hh else None)


def input_grad(d_pre_x: torch.Tensor, w_ih: torch.Tensor) -> torch.Tensor:
    """dL/dx_t = d_t W_ih for all steps as one GEMM: (T, B, G*H) -> (T, B, I)."""
    T, B, _ = d_pre_x.shape
    out = workspace_empty((T * B, w_ih.shape[1]), d_pre_x)
    return gemm_linear(d_pre_x.reshape(T * B, -1), w_ih.t(), out=out).view(T, B, -1)


def without_cycle_gc(fn):
    """Runs a fused kernel's forward or backward with Python's cycle collector paused.

    Why: a kernel's loop over time makes thousands of tensor views (several per step), and torch
    tensors are objects the collector tracks. Alive for the whole loop, they outlive the young
    generations and get promoted, and every few calls a full collection then traces the whole
    heap (torch's own ~170k objects): ~90 ms here, against ~150 ms for the LN-LSTM's whole
    training step at T=1000. The views hold no cycles and are freed by reference counting when
    the kernel returns, so pausing the collector frees nothing later than it would have been; it
    only keeps them from being promoted. The collector's state is restored on the way out (left
    off if the caller had turned it off).
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return run


def forbid_double_backward(kernel: str) -> None:
    """Called first in every fused backward.

    Autograd runs a backward with grad mode on only when asked to build a graph of the gradients
    (create_graph=True). The hand-derived backward does not record one, so rather than return
    gradients that silently carry no graph, say so and name the path that does support it.
    """
    if torch.is_grad_enabled():
        raise RnnkitUnsupportedError(
            f"double backward through the fused {kernel} kernel is not supported: its backward is "
            "hand-derived and records no graph; use impl='loop' for higher-order gradients"
        )


def stack_prev(first: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The state entering each step: [first, y_0, ..., y_{T-2}] as (T, B, P)."""
    return torch.cat([first.unsqueeze(0), y[:-1]])


# --- tanh on CPU, from a sigmoid (every fused kernel with a tanh) -----------------------------

# Device types on which the fused kernels take tanh from a sigmoid (`Tanh`). Elsewhere (CUDA)
# torch's tanh costs what its sigmoid does and every op is a kernel launch, so they call tanh.
TANH_VIA_SIGMOID = {"cpu"}


class Tanh:
    """The fused kernels' tanh of a pre-activation, on CPU as 2 sigmoid(2v) - 1.

    Why: on CPU torch's tanh costs several sigmoids (this machine, float32, `python
    benchmarks/op_floor.py`: 3.1 us against 2.1 us for a sigmoid and the add below at 16 x 64
    floats, 7.0 against 3.1 at 32 x 128, 77 against 16 at 128 x 512). A kernel makes the
    pre-activation through weights, biases or gains passed through `prep`, which doubles them on
    CPU (a power of two: exact), so that the pre-activation arrives as 2v at no cost; then
    `tanh(pre)` in place, or `into(pre, out)`, gives tanh(v): on CPU a sigmoid and one add, the
    same function to a few units in the last place of 1 in absolute terms; elsewhere torch's
    tanh. `undo_` turns a kept pre-activation back into v for the backward. Where a tanh shares
    one sigmoid with the gates (the LSTMs), the kernel doubles its rows itself (`doubled`) on
    every device and calls `from_sigmoid`.
    """

    def __init__(self, like: torch.Tensor):
        self.via_sigmoid = like.device.type in TANH_VIA_SIGMOID
        self.k = 2.0 if self.via_sigmoid else 1.0  # what `prep` multiplies by
        self.offsets = {scale: like.new_full((), -scale) for scale in (1.0, 2.0)}

    def prep(self, v: torch.Tensor | None, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        """v with rows start:stop (all by default) times k: a copy on CPU, v itself elsewhere."""
        return doubled(v, start, stop) if self.via_sigmoid else v

    def undo_(self, v: torch.Tensor) -> torch.Tensor:
        """A pre-activation made through `prep`, back to v, in place."""
        return v.mul_(0.5) if self.via_sigmoid else v

    def __call__(self, pre: torch.Tensor) -> torch.Tensor:
        """pre (k v) -> tanh(v), in place."""
        return self.from_sigmoid(pre.sigmoid_()) if self.via_sigmoid else pre.tanh_()

    def into(self, pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """tanh(v) of pre (k v), into out."""
        if self.via_sigmoid:
            return self.from_sigmoid(torch.sigmoid(pre, out=out))
        return torch.tanh(pre, out=out)

    def from_sigmoid(self, s: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """s = sigmoid(2v) -> scale * tanh(v), in place (scale 1 or 2), on every device."""
        return torch.add(self.offsets[scale], s, alpha=2 * scale, out=s)


def doubled(v: torch.Tensor | None, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
    """A copy of v with rows start:stop (all by default) times 2: the weights, biases or gains
    that make a pre-activation which goes through a tanh (`Tanh`)."""
    if v is None:
        return None
    out = v.clone()
    out[start:stop] *= 2
    return out


# --- pieces a family's plain and layer-normalised kernels share (cells.ln_lstm, cells.ln_gru) ---


def ifog_order(H: int, device) -> torch.Tensor:
    """Row order i, f, o, g from torch's i, f, g, o; swapping two blocks is its own inverse."""
    r = torch.arange(4 * H, device=device)
    return torch.cat([r[: 2 * H], r[3 * H :], r[2 * H : 3 * H]])


def gru_shared_factors_(a_n, a_z, z, n, h0, y):
    """The factors every GRU kernel shares (both forms, and the layer-normalised one), in place,
    for all steps (T, B, H) and without temporaries (fresh (T, B, H) buffers cost page faults
    here): a_n = dn~/dh = (1 - z)(1 - n^2) and
    a_z = dz~/dh = (h_{t-1} - n) z (1 - z)."""
    torch.addcmul(n.new_ones(()).expand_as(n), n, n, value=-1, out=a_n)  # 1 - n^2
    a_n.addcmul_(a_n, z, value=-1)  # (1 - n^2) - (1 - n^2) z
    torch.sub(h0, n[0], out=a_z[0])  # h_{t-1} - n_t, with h_{-1} = h0 ...
    torch.sub(y[:-1], n[1:], out=a_z[1:])  # ... and h_t = y_t: no shifted copy of y
    a_z.mul_(z).addcmul_(a_z, z, value=-1)  # times z (1 - z)
