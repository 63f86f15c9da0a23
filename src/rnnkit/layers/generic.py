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

from rnnkit._checks import check_bool, check_choice, check_positive_int
from rnnkit.cells import traced
from rnnkit.cells._kernel import IMPLS, run_loop
from rnnkit.cells._regularize import Masks, Regularizer, masked_loop, masked_step
from rnnkit.cells._unit import Unit, torch_weights
from rnnkit.cells.base import Cell
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.registry import BUILTIN, available, registered, unit_spec
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
from rnnkit.layers._regularize import layer_masks


class _ByName(type(nn.Module)):
    """`Recurrent(name, ...)` with a built-in family's name builds that family's torch-style layer
    (`rnnkit.layers.by_name`); any other call constructs as usual."""

    def __call__(cls, *args, **kwargs):
        cell = args[0] if args else kwargs.get("cell")
        if cls is Recurrent and isinstance(cell, str) and cell in BUILTIN:
            from rnnkit.layers.by_name import recurrent_of

            return recurrent_of(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class Recurrent(nn.Module, metaclass=_ByName):
    """forward(input, hx=None, *, lengths=None, masks=None) -> (output, state_n); see the module
    docstring. hx and state_n are tuples with one (num_layers * num_directions, B, size) tensor
    per state; masks as `sample_masks` draws them (drawn afresh in training when None)."""

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
        self._configure(
            cell_class, input_size, hidden_size, num_layers, batch_first, dropout, bidirectional, impl
        )
        self.cells = nn.ModuleList()
        for k in range(num_layers):
            for _ in range(self.num_directions):
                layer_in = input_size if k == 0 else self.num_directions * self.state_sizes[0]
                self.cells.append(_make_cell(cell_class, layer_in, hidden_size, cell_options, device, dtype))
        self._regularize(zoneout, recurrent_dropout, weight_dropout, learn_initial_state, device, dtype)

    # --- construction, shared with the torch-style layers -----------------------------------------

    def _configure(
        self, cell_class, input_size, hidden_size, num_layers, batch_first, dropout, bidirectional, impl
    ):
        check_stack_args(
            input_size, hidden_size, num_layers, dropout, batch_first=batch_first, bidirectional=bidirectional
        )
        check_choice("impl", impl, IMPLS)
        self.cell_class, self.input_size, self.hidden_size = cell_class, input_size, hidden_size
        self.num_layers, self.batch_first, self.dropout = num_layers, batch_first, float(dropout)
        self.bidirectional, self.impl = bidirectional, impl

    def _regularize(self, zoneout, recurrent_dropout, weight_dropout, learn_initial_state, device, dtype):
        """The regularisers' rates (checked against what the cell can do) and, with
        `learn_initial_state`, the initial states as parameters, zeros at first."""
        check_bool("learn_initial_state", learn_initial_state)
        self.regularizer = Regularizer.from_args(
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            num_states=len(self.state_sizes),
        )
        names, cell = tuple(self.cell_class.recurrent_weights), self._unit(0)
        params = self._parameter_names()
        if weight_dropout and (not names or any(n not in params for n in names)):
            raise RnnkitValueError(
                f"weight_dropout needs {self.cell_class.__name__}.recurrent_weights to name its parameters "
                f"that multiply the previous state, got {names!r} (parameters: {', '.join(params)})"
            )
        if recurrent_dropout and isinstance(cell, Unit) and not names:
            raise RnnkitValueError(
                f"recurrent_dropout needs a recurrent product to mask, and {self.cell_class.__name__} "
                "has none (its gates read only x_t)"
            )
        self.learn_initial_state = learn_initial_state
        LD = self.num_layers * self.num_directions
        for name, n in zip(self._initial_names(), self.state_sizes if learn_initial_state else ()):
            self.register_parameter(name, nn.Parameter(torch.zeros(LD, n, device=device, dtype=dtype)))

    def _initial_names(self) -> list[str]:
        return [f"initial_state_{j}" for j in range(len(self.state_sizes))]

    # --- where the cells and their parameters live (the torch-style layers override these) -------

    def _unit(self, idx: int) -> Cell:
        """The cell of layer-direction idx (= layer * num_directions + direction)."""
        return self.cells[idx]

    def _parameter_names(self) -> list[str]:
        """The names of a cell's parameters (in the cell)."""
        return [n for n, _ in self.cells[0].named_parameters()]

    def _unit_parameters(self, idx: int):
        """(name in the cell, parameter) of layer-direction idx."""
        return self.cells[idx].named_parameters()

    def _weights(self, idx: int) -> dict | None:
        """A built-in unit's parameters by its names (what its step and sequence take); None for a
        user's cell, which reads its own."""
        return dict(self._unit_parameters(idx)) if isinstance(self._unit(idx), Unit) else None

    def _recurrent_weights(self, idx: int):
        """The tensors weight dropout masks: one (a tensor), several (a tuple), or None."""
        found = dict(self._unit_parameters(idx))
        ws = tuple(found[n] for n in self.cell_class.recurrent_weights)
        return None if not ws else ws[0] if len(ws) == 1 else ws

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return tuple(self._unit(0).state_sizes)

    @property
    def num_states(self) -> int:
        return len(self.state_sizes)

    @property
    def zoneout(self) -> tuple[float, ...]:
        return self.regularizer.zoneout

    @property
    def recurrent_dropout(self) -> float:
        return self.regularizer.recurrent_dropout

    @property
    def weight_dropout(self) -> float:
        return self.regularizer.weight_dropout

    def extra_repr(self) -> str:
        s = f"{self.cell_class.__name__}, {self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("batch_first", False), ("dropout", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        s += ", bidirectional=True" if self.bidirectional else ""
        s += self.regularizer.extra_repr()
        return s + (", learn_initial_state=True" if self.learn_initial_state else "")

    def sample_masks(self, steps: int, batch_size: int) -> list[Masks]:
        """Fresh regularisation masks for a call over `steps` steps (the padded length) and
        `batch_size` sequences (1 for unbatched input), one `Masks` per layer and direction; what
        forward draws first in training when not given `masks`. Pass them as forward(...,
        masks=) to fix them, e.g. to keep one recurrent-dropout mask over the chunks of
        truncated BPTT."""
        check_positive_int("steps", steps)
        check_positive_int("batch_size", batch_size)
        like = next(self.parameters(), None)
        LD = self.num_layers * self.num_directions
        return [
            self.regularizer.sample(
                batch_size, self.state_sizes, self._recurrent_weights(i), steps, like=like
            )
            for i in range(LD)
        ]

    # --- states -----------------------------------------------------------------------------------

    def _given_states(self, hx) -> tuple[list, list[str]]:
        """hx as the caller gives it -> (one tensor per state, their names for errors)."""
        sizes = self.state_sizes
        if isinstance(hx, torch.Tensor) and len(sizes) == 1:
            hx = (hx,)
        if not isinstance(hx, (tuple, list)) or len(hx) != len(sizes):
            raise RnnkitTypeError(
                f"hx must be a tuple of {len(sizes)} tensor(s), one per state {sizes}, "
                f"got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        return list(hx), [f"hx[{j}]" for j in range(len(sizes))]

    def _returned_states(self, states: list):
        """The final states (L*D, B, n) as this layer returns them: a tuple."""
        return tuple(states)

    def default_states(self, batch_size: int, like: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The states a call without hx starts from, (num_layers * num_directions, batch_size, n)
        per state: the learnt ones with `learn_initial_state`, a family's own (log-space
        minGRU), else zeros; in `like`'s dtype and device (the parameters' by default)."""
        LD, B, sizes = self.num_layers * self.num_directions, batch_size, self.state_sizes
        like = like if like is not None else next(self.parameters())
        if self.learn_initial_state:  # (L*D, n) -> (L*D, B, n), a copy the kernels may read
            return [
                getattr(self, name)[:, None].expand(LD, B, n).contiguous()
                for name, n in zip(self._initial_names(), sizes)
            ]
        default = getattr(self._unit(0), "default_state", None)
        if default is not None:  # a family whose zero state is not zeros (log-space minGRU)
            return [s.expand(LD, B, n).contiguous() for s, n in zip(default(like, B), sizes)]
        return [like.new_zeros(LD, B, n) for n in sizes]

    def _initial_states(self, hx, batch: Batch) -> list[torch.Tensor]:
        """hx (None, or as `_given_states` takes it) -> states (L*D, B, n) in kernel order."""
        LD, sizes = self.num_layers * self.num_directions, self.state_sizes
        if hx is None:
            return self.default_states(batch.x.shape[1], batch.x)
        states, names = self._given_states(hx)
        return initial_states(batch, states, names, sizes, LD, batch.x)

    # --- the loop ---------------------------------------------------------------------------------

    def forward(self, input, hx=None, *, lengths=None, masks=None):
        """Under autocast (e.g. bfloat16), the recurrence runs in the parameters' precision: a
        long product of low-precision steps drifts, so inputs are cast up and autocast is paused
        here; the outputs come back in that precision for the ops that follow."""
        weight = next(self.parameters(), None)
        like = weight if weight is not None else (input.data if hasattr(input, "data") else input)
        if isinstance(like, torch.Tensor) and torch.is_autocast_enabled(like.device.type):
            with torch.autocast(like.device.type, enabled=False):
                return self.forward(*cast_floats((input, hx), like.dtype), lengths=lengths, masks=masks)
        batch = prepare_input(
            input, lengths=lengths, batch_first=self.batch_first, input_size=self.input_size, weight=like
        )
        states = self._initial_states(hx, batch)
        D, P = self.num_directions, self.state_sizes[0]
        if batch.x.shape[1] == 0:  # an empty batch: torch's shapes, nothing to compute
            y = batch.empty(self, batch.x.shape[0], 0, D * P)
            return batch.output(y), self._returned_states(
                [batch.state_out(s + batch.empty(self, *s.shape)) for s in states]
            )
        masks = layer_masks(self, masks, batch)  # drawn before anything else random
        backwards = reverse_index(batch) if self.bidirectional else None
        traced_lengths = batch.lengths if batch.traced else None
        x, finals = batch.x, [[] for _ in states]
        for k in range(self.num_layers):
            outputs = []
            for d in range(D):
                idx = k * D + d
                x_in = x if d == 0 else flip_valid(x, backwards)  # each valid part read backwards
                y, final = self._direction(
                    idx, x_in, tuple(s[idx] for s in states), batch.batch_sizes, masks[idx], traced_lengths
                )
                outputs.append(y if d == 0 else flip_valid(y, backwards))
                for acc, s in zip(finals, final):
                    acc.append(s)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return batch.output(x), self._returned_states([batch.state_out(torch.stack(acc)) for acc in finals])

    def step(self, input, hx=None):
        """One time step: input (B, input_size) -> (output (B, D * P), state_n), the numbers of
        `forward` on a sequence of length 1 with the same hx. What decoding calls once per
        token (sampling, beam search, streaming): in eval mode, one direction and no zoneout,
        it runs each layer's cell step directly, without the whole-sequence machinery (input
        forms, lengths, masks, the fused kernel's set-up), which costs more than the step
        itself at batch 1; anything else goes through `forward`."""
        weights = [self._weights(k) for k in range(self.num_layers)]  # None for a user's cell
        if not self._steps_directly(input, weights):
            y, state = self.forward(input.unsqueeze(1 if self.batch_first else 0), hx)
            return y.squeeze(1 if self.batch_first else 0), state
        L = self.num_layers
        states = self._step_states(input, hx)
        if states is None:  # forward's checks name what is wrong
            y, state = self.forward(input.unsqueeze(1 if self.batch_first else 0), hx)
            return y.squeeze(1 if self.batch_first else 0), state
        x, finals = input, [[] for _ in states]
        for k in range(L):
            cell, w, s = self._unit(k), weights[k], tuple(t[k] for t in states)
            new = cell.step(x, s, w) if w is not None else tuple(cell(x, s))
            for acc, t in zip(finals, new):
                acc.append(t)
            x = new[0]
        stack = (lambda acc: acc[0].unsqueeze(0)) if L == 1 else torch.stack
        return x, self._returned_states([stack(acc) for acc in finals])

    def _steps_directly(self, input, weights: list) -> bool:
        """Whether `step(input)` runs each layer's cell step itself (see `step`)."""
        weight = next(iter(weights[0].values()), None) if weights[0] else next(self.parameters(), None)
        return not (
            self.training
            or self.bidirectional
            or any(self.regularizer.zoneout)
            or not isinstance(input, torch.Tensor)
            or input.dim() != 2
            or input.shape[1] != self.input_size
            or weight is None
            or input.dtype != weight.dtype
            or input.device != weight.device
            or traced.tracing()
            or torch.is_autocast_enabled(input.device.type)
        )

    def _step_states(self, input, hx) -> list | None:
        """The states (L, B, n) a direct step starts from: hx's, or the defaults; None where hx
        is not of that form (forward then says what is wrong)."""
        L, B = self.num_layers, input.shape[0]
        if hx is None:
            return self.default_states(B, input)
        states, _ = self._given_states(hx)
        for s, n in zip(states, self.state_sizes):
            if not isinstance(s, torch.Tensor) or s.shape != (L, B, n) or s.dtype != input.dtype:
                return None
        return states

    def lstm_steps(self, input, hx=None) -> tuple[list, list] | None:
        """(each layer's (w_ih, w_hh, b_ih, b_hh), the states (h, c) (L, B, H)) where `step(input,
        hx)` would run plain LSTM steps directly (every layer an LSTM without projection, with
        biases; `step`'s conditions), else None: what a compiled decoding loop over whole
        language-model steps needs (`rnnkit.cells.lstm.sample_loop`)."""
        weights = [self._weights(k) for k in range(self.num_layers)]
        units = [self._unit(k) for k in range(self.num_layers)]
        if not all(isinstance(u, LSTMUnit) and not u.proj_size and w for u, w in zip(units, weights)):
            return None
        layers = [torch_weights(w) for w in weights]
        if any(b is None for layer in layers for b in layer[2:]) or not self._steps_directly(input, weights):
            return None
        states = self._step_states(input, hx)
        return None if states is None else (layers, states)

    def _direction(
        self, idx: int, x: torch.Tensor, state: tuple, batch_sizes, masks: Masks | None, lengths=None
    ):
        """One layer-direction: (y (T, B, P), final state tuple). The fused kernel (a unit's
        `sequence`, a cell's `forward_sequence`) when no per-step mask is in play (weight dropout
        composes with it: the masked weights stand in for the cell's own), else the loop over
        the cell's step with the masks applied. Under tracing (`rnnkit.cells.traced`) a unit's
        kernel is one op (ONNX: a scan, or the unit's own ONNX operator), `lengths` (B,) standing
        for batch_sizes; a user's cell steps with length masks, unrolled at the traced length."""
        cell, w = self._unit(idx), self._weights(idx)
        dropped = {}
        if masks is not None and masks.weight is not None:
            found = dict(self._unit_parameters(idx))
            ms = masks.weight if isinstance(masks.weight, tuple) else (masks.weight,)
            dropped = {n: found[n] * m for n, m in zip(self.cell_class.recurrent_weights, ms)}
        per_step = masks is not None and (
            masks.recurrent is not None or any(d is not None for d in masks.zoneout)
        )
        if w is not None:  # a built-in family's unit: its functions take the parameters
            w = {**w, **dropped}
            if per_step:
                fixed = masks.recurrent is None and not any(
                    isinstance(d, torch.Tensor) for d in masks.zoneout
                )
                if fixed and traced.onnx_exporting():  # eval's zoneout (its expectation): still a Scan

                    def mixed(x_t, s, ws):
                        return masked_step(
                            lambda a, b, m: cell.step(a, b, ws, m), x_t, s, None, masks.zoneout
                        )

                    return traced.scan_steps(mixed, x, state, w, lengths)
                step = lambda x_t, s, m: cell.step(x_t, s, w, m)  # noqa: E731
                return masked_loop(step, x, state, batch_sizes, masks, lengths)
            if self.impl == "fused" and traced.tracing():
                return _traced_unit(cell, x, state, w, lengths)
            return cell.sequence(x, state, w, batch_sizes, self.impl)

        def step(x_t, s, rec_mask=None):  # a user's cell: recurrent dropout masks the state it reads
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
            if per_step:
                return masked_loop(step, x, state, batch_sizes, masks, lengths)
            if traced.onnx_exporting():  # a Scan over the cell's forward, its parameters as inputs
                own = {**dict(cell.named_parameters()), **dict(cell.named_buffers())}
                return traced.scan_steps(
                    lambda x_t, s, w: tuple(functional_call(cell, w, (x_t, s))), x, state, own, lengths
                )
            if self.impl == "fused" and hasattr(cell, "forward_sequence") and lengths is None:
                y, final = cell.forward_sequence(x, state, batch_sizes=batch_sizes)
                return y, tuple(final)
            return run_loop(step, x, state, batch_sizes, lengths=lengths)

        if not dropped:
            return run()
        # the masked weights stand in for the cell's own for this whole sequence, once
        return functional_call(
            _Swapped(cell), {f"cell.{n}": w for n, w in dropped.items()}, (run,), strict=False
        )


def _traced_unit(unit: Unit, x, state: tuple, w: dict, lengths) -> tuple:
    """A unit's layer-direction under tracing: ONNX's own operator where the unit has one, a scan
    over its step for the rest of ONNX, else the op that runs its fused kernel."""
    if traced.onnx_exporting():
        lowered = unit.onnx_sequence(x, state, w, lengths)
        if lowered is not None:
            return lowered
        return traced.scan_steps(unit.step, x, state, w, lengths)
    return traced.sequence(unit_spec(unit, tuple(w)), x, lengths, state, list(w.values()))


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
