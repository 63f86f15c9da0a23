"""The functional kernels' boundary and reference: the checks of their arguments, `run_kernel`
(which runs a family's fused kernel or, with impl="loop", the reference loop), and the reference
loop itself, the step equations under autograd.

Conventions, used by all fused kernels:
  x (T, B, I) time-major; states (B, H); gate pre-activations (T, B, G*H).
  `batch_sizes` is None (every sequence has length T) or a non-increasing list of T ints, as in
  `torch.nn.utils.rnn.PackedSequence`: at step t only the first batch_sizes[t] sequences are
  active, so sequences must be sorted by decreasing length. A finished sequence keeps its state
  and gets zero outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rnnkit._checks import check_choice, check_like, check_shape, check_tensor, shape_str
from rnnkit.cells.traced import length_mask
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


def run_loop(
    step: Step, x: torch.Tensor, state: tuple, batch_sizes: list[int] | None, per_step=(), lengths=None
):
    """Run `step` over time under autograd; return (outputs (T, B, P), final state tuple).

    The reference implementation (`impl="loop"`), and so written for clarity: sequences that have
    ended keep their state (torch.cat of new and old rows) and output zeros. `per_step`: further
    (T, B, *) tensors (the zoneout masks of `_regularize`) whose step-t rows are passed to `step`
    after the state, restricted to the active rows like x_t. `lengths` (B,) in place of
    batch_sizes is the traced form (no data-dependent slicing): every row steps, and a row past
    its length keeps its state and outputs zeros by masks.
    """
    if lengths is not None:
        return _masked_by_length(step, x, state, lengths, per_step)
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


def _masked_by_length(step: Step, x, state: tuple, lengths, per_step) -> tuple:
    active = length_mask(x, lengths)  # (T, B, 1)
    outputs = []
    for t, x_t in enumerate(x.unbind(0)):
        new = step(x_t, state, *(e[t] for e in per_step))
        m = active[t]
        state = tuple(torch.where(m, a, s) for a, s in zip(new, state))
        outputs.append(torch.where(m, new[0], 0.0))
    return torch.stack(outputs), state


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b, the affine map of the step equations."""
    return torch.nn.functional.linear(x, w, b)


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
