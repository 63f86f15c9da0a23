"""`Recurrent`: the sequence layer of any `rnnkit.cells.Cell`, the user's extension point.

It owns what a cell should not have to: stacking (layer k > 0 reads num_directions *
state_sizes[0] features), directions (the reverse one reads each sequence's valid part backwards),
`lengths=`, PackedSequence, unbatched and batch-first input, initial and final states, dropout
between layers, and the regularisers, which act on any cell as on the built-in layers:

    zoneout (rate, or one rate per state): s_t = d_t * s_{t-1} + (1 - d_t) * s~_t per state, its
        expectation at eval;
    recurrent_dropout (one mask per sequence): the previous output h_{t-1} the cell reads is
        m * h_{t-1}, m (B, state_sizes[0]) ~ Bernoulli(1 - p) / (1 - p) (a user cell's equations
        are its own, so the mask acts on the state it reads);
    weight_dropout (DropConnect, one mask per forward): every parameter the cell names in
        `recurrent_weights` is multiplied by its mask M ~ Bernoulli(1 - p) / (1 - p).

The cell's `forward_sequence` (a fused kernel) runs a layer-direction when the cell has one,
`impl="fused"` and no per-step mask is in play (weight dropout composes with it); otherwise the
loop steps `forward` under autograd. Parameters are the cells' own, `cells.{i}.{name}` for
layer-direction i = layer * num_directions + direction; with `learn_initial_state`,
`initial_state_{j}` (num_layers * num_directions, state_sizes[j]) per state j, zeros at first.

For a built-in name, `Recurrent(name, ...)` is the family's layer (an `rnnkit.LSTM` for "lstm",
...), with its parameters, parameter names and fused kernels, called with states as tuples.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.func import functional_call

from rnnkit._checks import check_choice
from rnnkit.cells._common import IMPLS, run_loop
from rnnkit.cells._regularize import Masks, check_rate, check_zoneout, masked_loop
from rnnkit.cells.base import Cell
from rnnkit.cells.registry import BUILTIN, available, registered
from rnnkit.errors import RnnkitTypeError, RnnkitValueError
from rnnkit.layers._inputs import (
    Batch,
    cast_floats,
    check_stack_args,
    flip_valid,
    initial_states,
    prepare_input,
    reverse_index,
)


class Recurrent(nn.Module):
    """forward(input, hx=None, *, lengths=None) -> (output, state_n); see the module docstring.
    hx and state_n are tuples with one (num_layers * num_directions, B, size) tensor per state."""

    def __new__(cls, cell, *args, **kwargs):
        if isinstance(cell, str) and cell in BUILTIN:
            from rnnkit.layers.by_name import recurrent_of

            return recurrent_of(cell, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        cell,
        input_size,
        hidden_size,
        num_layers=1,
        *,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        impl="fused",
        device=None,
        dtype=None,
        **cell_options,
    ):
        super().__init__()
        cell_class = cell_class_of(cell)
        check_stack_args(
            input_size,
            hidden_size,
            num_layers,
            dropout,
            batch_first=batch_first,
            bidirectional=bidirectional,
            learn_initial_state=learn_initial_state,
        )
        check_choice("impl", impl, IMPLS)
        self.cell_class, self.input_size, self.hidden_size = cell_class, input_size, hidden_size
        self.num_layers, self.batch_first, self.dropout = num_layers, batch_first, float(dropout)
        self.bidirectional, self.impl, self.learn_initial_state = bidirectional, impl, learn_initial_state
        self.cells = nn.ModuleList()
        for k in range(num_layers):
            for _ in range(self.num_directions):
                layer_in = input_size if k == 0 else self.num_directions * self.state_sizes[0]
                self.cells.append(_make_cell(cell_class, layer_in, hidden_size, cell_options, device, dtype))
        sizes = self.state_sizes
        self.zoneout = check_zoneout(zoneout, len(sizes))
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        self.weight_dropout = check_rate("weight_dropout", weight_dropout)
        names = tuple(cell_class.recurrent_weights)
        params = dict(self.cells[0].named_parameters())
        if self.weight_dropout and (not names or any(n not in params for n in names)):
            raise RnnkitValueError(
                f"weight_dropout needs {cell_class.__name__}.recurrent_weights to name its parameters "
                f"that multiply the previous state, got {names!r} (parameters: {', '.join(params)})"
            )
        for j, n in enumerate(sizes if learn_initial_state else ()):
            LD = num_layers * self.num_directions
            self.register_parameter(
                f"initial_state_{j}", nn.Parameter(torch.zeros(LD, n, device=device, dtype=dtype))
            )

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return tuple(self.cells[0].state_sizes)

    @property
    def num_states(self) -> int:
        return len(self.state_sizes)

    def extra_repr(self) -> str:
        s = f"{self.cell_class.__name__}, {self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("batch_first", False), ("dropout", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        for name in ("bidirectional", "learn_initial_state"):
            if getattr(self, name):
                s += f", {name}=True"
        if any(self.zoneout):
            s += f", zoneout={self.zoneout if len(set(self.zoneout)) > 1 else self.zoneout[0]!r}"
        for name in ("recurrent_dropout", "weight_dropout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)!r}"
        return s

    # --- states -----------------------------------------------------------------------------------

    def _initial_states(self, hx, batch: Batch, like: torch.Tensor) -> list[torch.Tensor]:
        """hx (None, or a tuple of one tensor per state) -> states (L*D, B, n) in kernel order."""
        LD, B, sizes = self.num_layers * self.num_directions, batch.x.shape[1], self.state_sizes
        if hx is None:
            if self.learn_initial_state:
                return [
                    getattr(self, f"initial_state_{j}")[:, None].expand(LD, B, n) for j, n in enumerate(sizes)
                ]
            return [batch.x.new_zeros(LD, B, n) for n in sizes]
        if isinstance(hx, torch.Tensor) and len(sizes) == 1:
            hx = (hx,)
        if not isinstance(hx, (tuple, list)) or len(hx) != len(sizes):
            raise RnnkitTypeError(
                f"hx must be a tuple of {len(sizes)} tensor(s), one per state {sizes}, "
                f"got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        return initial_states(batch, hx, [f"hx[{j}]" for j in range(len(sizes))], sizes, LD, like)

    # --- the loop ---------------------------------------------------------------------------------

    def forward(self, input, hx=None, *, lengths=None):
        weight = next(self.cells[0].parameters(), None)
        like = weight if weight is not None else (input.data if hasattr(input, "data") else input)
        if isinstance(like, torch.Tensor) and torch.is_autocast_enabled(like.device.type):
            with torch.autocast(like.device.type, enabled=False):  # the recurrence in full precision
                return self.forward(*cast_floats((input, hx), like.dtype), lengths=lengths)
        batch = prepare_input(
            input, lengths=lengths, batch_first=self.batch_first, input_size=self.input_size, weight=like
        )
        states = self._initial_states(hx, batch, batch.x)
        D, P = self.num_directions, self.state_sizes[0]
        if batch.x.shape[1] == 0:  # an empty batch: the shapes, nothing to compute
            y = batch.empty(self, batch.x.shape[0], 0, D * P)
            return batch.output(y), tuple(batch.state_out(s + batch.empty(self, *s.shape)) for s in states)
        backwards = reverse_index(batch) if self.bidirectional else None
        x, finals = batch.x, [[] for _ in states]
        for k in range(self.num_layers):
            outputs = []
            for d in range(D):
                idx = k * D + d
                x_in = x if d == 0 else flip_valid(x, backwards)
                y, final = self._direction(
                    self.cells[idx], x_in, tuple(s[idx] for s in states), batch.batch_sizes
                )
                outputs.append(y if d == 0 else flip_valid(y, backwards))
                for acc, s in zip(finals, final):
                    acc.append(s)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return batch.output(x), tuple(batch.state_out(torch.stack(acc)) for acc in finals)

    def _direction(self, cell: Cell, x: torch.Tensor, state: tuple, batch_sizes):
        """One layer-direction: (y (T, B, P), final state tuple)."""
        dropped = {}
        if self.training and self.weight_dropout:  # DropConnect: one mask per forward
            p = self.weight_dropout
            for name in self.cell_class.recurrent_weights:
                w = cell.get_parameter(name)
                dropped[name] = w * torch.empty_like(w).bernoulli_(1 - p).div_(1 - p)
        masks = self._step_masks(x, state)

        def step(x_t, s, rec_mask=None):
            if rec_mask is not None:
                s = (s[0] * rec_mask, *s[1:])
            new = cell(x_t, s)
            if not isinstance(new, (tuple, list)) or len(new) != len(s):
                raise RnnkitTypeError(
                    f"{type(cell).__name__}.forward must return a tuple of {len(s)} state tensor(s), "
                    f"got {type(new).__name__}"
                )
            return tuple(new)

        def run():
            if masks is None and self.impl == "fused" and hasattr(cell, "forward_sequence"):
                y, final = cell.forward_sequence(x, state, batch_sizes=batch_sizes)
                return y, tuple(final)
            if masks is None:
                return run_loop(step, x, state, batch_sizes)
            return masked_loop(step, x, state, batch_sizes, masks)

        if not dropped:
            return run()
        # the masked weights stand in for the cell's own for this whole sequence, once
        return functional_call(
            _Swapped(cell), {f"cell.{n}": w for n, w in dropped.items()}, (run,), strict=False
        )

    def _step_masks(self, x: torch.Tensor, state: tuple) -> Masks | None:
        """The per-step masks of this call (None when no per-step regulariser is in play)."""
        T, B = x.shape[0], x.shape[1]
        if not self.training:
            return Masks(zoneout=tuple(p or None for p in self.zoneout)) if any(self.zoneout) else None
        if not (any(self.zoneout) or self.recurrent_dropout):
            return None
        p = self.recurrent_dropout
        rec = None
        if p:
            rec = (
                torch.empty(B, state[0].shape[1], dtype=x.dtype, device=x.device)
                .bernoulli_(1 - p)
                .div_(1 - p)
            )
        zoneout = tuple(
            torch.empty(T, B, s.shape[1], dtype=x.dtype, device=x.device).bernoulli_(q) if q else None
            for q, s in zip(self.zoneout, state)
        )
        return Masks(recurrent=rec, zoneout=zoneout)


class _Swapped(nn.Module):
    """Runs a function with some of a cell's parameters replaced (torch.func.functional_call):
    weight dropout's masked recurrent weights, read by every step of one sequence."""

    def __init__(self, cell: Cell):
        super().__init__()
        self.cell = cell

    def forward(self, fn):
        return fn()


def cell_class_of(cell) -> type:
    """A Cell subclass, or the class registered under a name."""
    if isinstance(cell, str):
        found = registered(cell)
        if found is None:
            raise RnnkitValueError(f"cell must be one of {', '.join(available())}, got {cell!r}")
        return found
    if isinstance(cell, type) and issubclass(cell, Cell):
        return cell
    raise RnnkitTypeError(f"cell must be a registered name or a subclass of rnnkit.cells.Cell, got {cell!r}")


def _make_cell(cell_class: type, input_size: int, hidden_size: int, options: dict, device, dtype) -> Cell:
    try:
        cell = cell_class(input_size, hidden_size, **options)
    except TypeError as e:  # an option the cell does not take
        raise RnnkitTypeError(f"{cell_class.__name__}({input_size}, {hidden_size}, ...): {e}") from None
    sizes = getattr(cell, "state_sizes", None)
    if (
        not isinstance(sizes, tuple)
        or not sizes
        or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in sizes)
    ):
        raise RnnkitValueError(
            f"{cell_class.__name__}.state_sizes must be a non-empty tuple of positive ints, got {sizes!r}"
        )
    return cell.to(device=device, dtype=dtype)
