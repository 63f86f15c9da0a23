"""Recurrent regularisation, shared by the cells and the layers: zoneout, variational recurrent
dropout and DropConnect on W_hh, and the one time loop that applies them.

For each state s (h, and the LSTM's c), with s~_t the cell's new state and m, M, d_t masks:

    zoneout (Krueger et al. 2016), per unit and per step, rate p (p_h for h, p_c for c):
        s_t = d_t * s_{t-1} + (1 - d_t) * s~_t,   d_t ~ Bernoulli(p)       training
        s_t = p * s_{t-1} + (1 - p) * s~_t                                 eval (the expectation)
    recurrent dropout (variational, Gal and Ghahramani 2016), rate p:
        W_hh (m * h_{t-1})  in place of  W_hh h_{t-1},   m (B, P) ~ Bernoulli(1 - p) / (1 - p)
        one m per sequence, drawn once per call and shared by every step; the gates' mixing
        (GRU's z_t * h_{t-1}, MGU's (1 - f_t) * h_{t-1}) keeps the unmasked h_{t-1}, as Keras
        does: the mask drops what the recurrent products read, not the memory itself
    weight dropout (DropConnect on W_hh; Wan et al. 2013, AWD-LSTM of Merity et al. 2017):
        W_hh * M,   M (G*H, P) ~ Bernoulli(1 - p) / (1 - p), once per call
Both dropouts scale by 1/(1 - p) (inverted dropout), so at eval they are the identity. Rates are
probabilities in [0, 1); a rate of 0 draws no mask and changes nothing.

Why a loop under autograd rather than masks inside the fused kernels: zoneout and recurrent
dropout change every step's equations, so each cell family's hand-derived BPTT would need a
masked twin (five kernels, forward and backward); the step equations already exist, and running
them in `run_loop` with the masks applied lets autograd derive the backward. It is slower than
the fused kernels, and used only when such a mask is in play (training, or zoneout at eval).
DropConnect changes only W_hh, so it composes with the fused kernels: mask W_hh, then call.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rnnkit.cells._kernel import run_loop
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


class Masks(NamedTuple):
    """The masks of one call (of a cell) or of one layer-direction (of a layer); None where a
    regulariser is off. All carry the dtype and device of the weights they meet.

    recurrent: (B, P), scaled by 1/(1 - p), multiplies h_{t-1} where it enters W_hh.
    weight: (G*H, P), scaled by 1/(1 - p), multiplies W_hh.
    zoneout: one entry per state (h, then the LSTM's c): None, a probability p (the eval-time
        expectation), or a 0/1 tensor where 1 keeps the previous value: (B, n) for a cell's one
        step, (T, B, n) for a layer's T steps.
    """

    recurrent: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    zoneout: tuple = ()


def check_rate(name: str, p) -> float:
    """A dropout-style probability: a real number in [0, 1) (1 would drop everything and make
    the inverted scaling 1/(1 - p) infinite)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise RnnkitTypeError(f"{name} must be a number in [0, 1), got {type(p).__name__}")
    if not 0 <= p < 1:
        raise RnnkitValueError(f"{name} must be a probability in [0, 1), got {p}")
    return float(p)


def check_zoneout(zoneout, num_states: int) -> tuple[float, ...]:
    """zoneout as given (a rate for every state, or for the LSTM a pair (p_h, p_c)) -> one rate
    per state."""
    if isinstance(zoneout, (tuple, list)):
        if num_states == 1:
            raise RnnkitValueError(
                "zoneout must be a single rate for a cell with one state (h); a pair (p_h, p_c) "
                f"is for the LSTM, got {zoneout!r}"
            )
        if len(zoneout) != num_states:
            raise RnnkitValueError(f"zoneout must be a rate or a pair (p_h, p_c), got {zoneout!r}")
        return tuple(check_rate(f"zoneout[{i}]", p) for i, p in enumerate(zoneout))
    return (check_rate("zoneout", zoneout),) * num_states


@dataclass(frozen=True)
class Regularizer:
    """The checked rates of one cell or layer, and the masks they call for."""

    zoneout: tuple[float, ...]  # one rate per state: (p_h,) or the LSTM's (p_h, p_c)
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0

    @classmethod
    def from_args(cls, *, zoneout, recurrent_dropout, weight_dropout, num_states: int) -> Regularizer:
        return cls(
            check_zoneout(zoneout, num_states),
            check_rate("recurrent_dropout", recurrent_dropout),
            check_rate("weight_dropout", weight_dropout),
        )

    @property
    def active(self) -> bool:
        return any(self.zoneout) or bool(self.recurrent_dropout or self.weight_dropout)

    def extra_repr(self) -> str:
        """The non-default rates, as a module's repr shows them."""
        z = self.zoneout[0] if len(set(self.zoneout)) == 1 else self.zoneout
        parts = {
            "zoneout": z,
            "recurrent_dropout": self.recurrent_dropout,
            "weight_dropout": self.weight_dropout,
        }
        return "".join(f", {name}={value!r}" for name, value in parts.items() if value != 0.0)

    def sample(self, batch: int, sizes: tuple[int, ...], w_hh, steps: int | None = None, like=None) -> Masks:
        """Fresh masks for `batch` sequences with states of `sizes`: a weight mask like w_hh (the
        recurrent weight; a tuple of them gives a tuple of masks; None: no recurrent weight),
        recurrent (batch, sizes[0]), zoneout (steps, batch, n), or (batch, n) for one step when
        steps is None; dtype and device of w_hh (or of `like`). Drawn in a fixed order (weight,
        recurrent, zoneout per state), so a seed fixes them."""
        lead = (batch,) if steps is None else (steps, batch)
        ws = () if w_hh is None else w_hh if isinstance(w_hh, tuple) else (w_hh,)
        like = ws[0] if ws else like
        weight = tuple(_dropout_mask(w.shape, self.weight_dropout, w) for w in ws)
        return Masks(
            weight=None
            if not ws or not self.weight_dropout
            else weight
            if isinstance(w_hh, tuple)
            else weight[0],
            recurrent=_dropout_mask((batch, sizes[0]), self.recurrent_dropout, like),
            zoneout=tuple(
                torch.empty(*lead, n, dtype=like.dtype, device=like.device).bernoulli_(p) if p else None
                for p, n in zip(self.zoneout, sizes)
            ),
        )

    def eval_masks(self) -> Masks | None:
        """At eval both dropouts are the identity and zoneout its expectation; None: no change."""
        return Masks(zoneout=tuple(p or None for p in self.zoneout)) if any(self.zoneout) else None

    def shapes(self, batch: int, sizes: tuple[int, ...], w_hh, steps: int | None = None) -> Masks:
        """The shapes `sample` draws (None where off), to check masks a caller passes; the weight
        masks' as a list of shapes where w_hh is a tuple."""
        lead = (batch,) if steps is None else (steps, batch)
        weight = None
        if self.weight_dropout and w_hh is not None:
            weight = [tuple(w.shape) for w in w_hh] if isinstance(w_hh, tuple) else tuple(w_hh.shape)
        return Masks(
            recurrent=(batch, sizes[0]) if self.recurrent_dropout else None,
            weight=weight,
            zoneout=tuple((*lead, n) if p else None for p, n in zip(self.zoneout, sizes)),
        )


def _dropout_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor | None:
    """Bernoulli(1 - p) / (1 - p): inverted dropout keeps every product's expectation."""
    if not p:
        return None
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p).div_(1 - p)


def check_masks(name: str, masks, expected: Masks) -> Masks:
    """A caller's masks must be a Masks with a tensor of the expected shape exactly where this
    regulariser draws one (a probability is also accepted for zoneout)."""
    if not isinstance(masks, Masks):
        raise RnnkitTypeError(f"{name} must be an rnnkit.cells.Masks, got {type(masks).__name__}")
    if len(masks.zoneout) != len(expected.zoneout):
        raise RnnkitValueError(
            f"{name}.zoneout must hold one entry per state ({len(expected.zoneout)}), "
            f"got {len(masks.zoneout)}"
        )
    pairs = [("recurrent", masks.recurrent, expected.recurrent), ("weight", masks.weight, expected.weight)]
    pairs += [(f"zoneout[{i}]", m, e) for i, (m, e) in enumerate(zip(masks.zoneout, expected.zoneout))]
    if isinstance(expected.weight, list):  # several recurrent weights: one mask each
        if not isinstance(masks.weight, tuple) or len(masks.weight) != len(expected.weight):
            raise RnnkitValueError(
                f"{name}.weight must be a tuple of {len(expected.weight)} masks, one per recurrent weight"
            )
        pairs = [(f"weight[{i}]", m, e) for i, (m, e) in enumerate(zip(masks.weight, expected.weight))]
        pairs += [("recurrent", masks.recurrent, expected.recurrent)]
        pairs += [(f"zoneout[{i}]", m, e) for i, (m, e) in enumerate(zip(masks.zoneout, expected.zoneout))]
    for part, m, shape in pairs:
        if m is None or (part.startswith("zoneout") and isinstance(m, numbers.Real)):
            continue
        if not isinstance(m, torch.Tensor):
            raise RnnkitTypeError(f"{name}.{part} must be a tensor or None, got {type(m).__name__}")
        if shape is None or tuple(m.shape) != tuple(shape):
            want = "None (that regulariser is off)" if shape is None else f"shape {tuple(shape)}"
            raise RnnkitValueError(f"{name}.{part} must be {want}, got shape {tuple(m.shape)}")
    return masks


def drop_weight(w_hh: torch.Tensor, masks: Masks | None) -> torch.Tensor:
    return w_hh if masks is None or masks.weight is None else w_hh * masks.weight


def masked_step(step, x_t, state: tuple, recurrent, zoneout) -> tuple:
    """One step with masks: `step(x_t, state, rec_mask)` gives s~_t; zoneout, per state, mixes
    in s_{t-1} (see the module docstring). Masks hold rows for the whole batch; the active
    sequences are the first x_t.shape[0] rows."""
    n = x_t.shape[0]
    new = step(x_t, state, None if recurrent is None else recurrent[:n])
    return tuple(s_new if d is None else d * s + (1 - d) * s_new for s, s_new, d in zip(state, new, zoneout))


def masked_loop(step, x: torch.Tensor, state: tuple, batch_sizes, masks: Masks, lengths=None):
    """The regularised time loop: `step(x_t, state, rec_mask) -> new state` over x (T, B, I) with
    the masks applied, under autograd (`run_loop`: finished sequences keep their state, so a
    padded step never zones out or drops anything). Returns (y (T, B, P), final state)."""
    per_step = [i for i, d in enumerate(masks.zoneout) if isinstance(d, torch.Tensor)]

    def one(x_t, s, *d_t):  # d_t: the step's rows of the zoneout masks, sliced like x_t
        zoneout = list(masks.zoneout)
        for i, d in zip(per_step, d_t):
            zoneout[i] = d
        return masked_step(step, x_t, s, masks.recurrent, zoneout)

    zoneout = tuple(masks.zoneout[i] for i in per_step)
    return run_loop(one, x, state, batch_sizes, per_step=zoneout, lengths=lengths)
