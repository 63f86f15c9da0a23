"""Multi-layer, optionally bidirectional sequence layers, drop-in for torch.nn.RNN/LSTM/GRU.

The layer owns parameters and plumbing (stacking, directions, dropout between layers, lengths,
state shapes); each cell family's fused kernel owns the loop over time. A reverse direction reads
each sequence's valid part backwards: the input is flipped within each length, run forward, and
the output flipped back.

Parameters are registered exactly as torch does (names, shapes, order, U(-1/sqrt(H), 1/sqrt(H))
initialisation), so state_dicts load both ways.

Keyword-only options beyond torch's, all off by default (the layer is then exactly torch's):
  zoneout (a rate, or for the LSTM a pair (p_h, p_c)), recurrent_dropout, weight_dropout: rates in
    [0, 1), per layer and direction; the equations are in `rnnkit.cells._regularize`, the masks'
    shapes in `rnnkit.layers._regularize`.
  learn_initial_state: the state used when hx is None is a parameter, `initial_h`
    (num_layers * num_directions, P) (and `initial_c` (num_layers * num_directions, H) for the
    LSTM), zeros at first and broadcast over the batch; an hx given overrides it.
  layer_norm (LSTM and GRU only): the layer-normalised kernels of `rnnkit.cells.ln_lstm` and
    `ln_gru` (Ba et al. 2016); per layer and direction, after torch's parameters, the gains
    layer_norm_{ih,hh}_weight_l{k}[_reverse] (G*H,) (1 at first) and shifts
    layer_norm_{ih,hh}_bias_l{k}[_reverse] (0), and for the LSTM layer_norm_c_weight/_bias (H,).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import (
    allocating,
    check_bool,
    check_choice,
    check_positive_int,
)
from rnnkit.cells._common import IMPLS
from rnnkit.cells._layernorm import (
    check_layer_norm_flag,
    layer_norm_args,
    layer_norm_shapes,
    reset_layer_norm_,
)
from rnnkit.cells._regularize import Masks, Regularizer
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
from rnnkit.layers._regularize import layer_masks, run_direction, sample_layer_masks


class RecurrentBase(nn.Module):
    """What RNN, LSTM, GRU and MGU share; a subclass sets `gates` and `_kernel`."""

    gates: int = 1
    num_states: int = 1  # 2 for the LSTM: (h, c)
    layer_norm_family: str | None = None  # "lstm" or "gru": where `layer_norm=True` normalises

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        proj_size=0,
        device=None,
        dtype=None,
        *,
        impl="fused",
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
    ):
        super().__init__()
        check_stack_args(
            input_size,
            hidden_size,
            num_layers,
            dropout,
            bias=bias,
            batch_first=batch_first,
            bidirectional=bidirectional,
        )
        if isinstance(proj_size, bool) or not isinstance(proj_size, int):
            raise RnnkitTypeError(f"proj_size must be an int, got {type(proj_size).__name__}")
        if proj_size < 0 or (proj_size and proj_size >= hidden_size):
            raise RnnkitValueError(
                f"proj_size must be 0 (no projection) or in 1..{hidden_size - 1} (< hidden_size), "
                f"got {proj_size}"
            )
        check_choice("impl", impl, IMPLS)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size, self.impl = bidirectional, proj_size, impl
        factory = {"device": device, "dtype": dtype}
        D, G, H = self.num_directions, self.gates, hidden_size
        out_size = proj_size or hidden_size
        self._all_weights: list[list[str]] = []
        with allocating(
            f"{type(self).__name__}(input_size={input_size}, hidden_size={H}, num_layers={num_layers})"
        ):
            for k in range(num_layers):
                for d in range(D):
                    suffix = "_reverse" if d else ""
                    layer_in = input_size if k == 0 else out_size * D
                    shapes = {
                        f"weight_ih_l{k}{suffix}": (G * H, layer_in),
                        f"weight_hh_l{k}{suffix}": (G * H, out_size),
                    }
                    if bias:
                        shapes.update({f"bias_ih_l{k}{suffix}": (G * H,), f"bias_hh_l{k}{suffix}": (G * H,)})
                    if proj_size:
                        shapes[f"weight_hr_l{k}{suffix}"] = (proj_size, H)
                    for name, shape in shapes.items():
                        self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._all_weights.append(list(shapes))
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self.regularizer = Regularizer.from_args(
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            num_states=self.num_states,
        )
        check_bool("learn_initial_state", learn_initial_state)
        self.learn_initial_state = learn_initial_state
        if learn_initial_state:  # after torch's parameters, so theirs keep their order
            for name, n in zip(("initial_h", "initial_c"), self._state_sizes()):
                self.register_parameter(name, nn.Parameter(torch.zeros(num_layers * D, n, **factory)))
        self.layer_norm = check_layer_norm_flag(layer_norm, type(self).__name__, self.layer_norm_family)
        for idx in range(num_layers * D if layer_norm else 0):  # after torch's, as initial_h
            for name, shape in layer_norm_shapes(self.layer_norm_family, H, self._suffix(idx)).items():
                self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        for p in self._initial_params():
            nn.init.zeros_(p)
        reset_layer_norm_({n: p for n, p in self.named_parameters() if n.startswith("layer_norm_")})

    def _suffix(self, idx: int) -> str:
        """torch's name suffix of layer-direction idx: _l{layer}, plus _reverse."""
        return f"_l{idx // self.num_directions}" + ("_reverse" if idx % self.num_directions else "")

    def _initial_params(self) -> list[nn.Parameter]:
        """initial_h (and initial_c), when learn_initial_state; else none."""
        names = ("initial_h", "initial_c")[: self.num_states if self.learn_initial_state else 0]
        return [getattr(self, n) for n in names]

    def _recurrent_weights(self) -> list[nn.Parameter]:
        """W_hh of each layer-direction, in order (layer * D + direction)."""
        return [getattr(self, names[1]) for names in self._all_weights]

    def sample_masks(self, steps: int, batch_size: int) -> list[Masks]:
        """Fresh regularisation masks for a call over `steps` steps (the padded length) and
        `batch_size` sequences (1 for unbatched input), one `Masks` per layer and direction, drawn
        like the parameters; what forward draws first in training when not given `masks`. Pass
        them as forward(..., masks=) to fix them, e.g. to keep one recurrent-dropout mask over the
        chunks of truncated BPTT."""
        check_positive_int("steps", steps)
        check_positive_int("batch_size", batch_size)
        return sample_layer_masks(
            self.regularizer, steps, batch_size, self._state_sizes(), self._recurrent_weights()
        )

    def flatten_parameters(self) -> None:
        """Exists for torch compatibility: our kernels need no flat weight buffer."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (
            ("proj_size", 0),
            ("num_layers", 1),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("impl", "fused"),
        ):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        s += self.regularizer.extra_repr() + (", layer_norm=True" if self.layer_norm else "")
        return s + (", learn_initial_state=True" if self.learn_initial_state else "")

    def _weights(self, idx: int) -> dict[str, torch.Tensor | None]:
        """The parameters of layer-direction `idx` (= layer * D + direction) by kernel argument."""
        names = self._all_weights[idx]
        p = [getattr(self, n) for n in names]
        return {
            "w_ih": p[0],
            "w_hh": p[1],
            "b_ih": p[2] if self.bias else None,
            "b_hh": p[3] if self.bias else None,
            "w_hr": p[-1] if self.proj_size else None,
            "ln": (  # ln_ih=(gain, shift), ... for the layer-normalised kernels; None without
                layer_norm_args(dict(self.named_parameters()), self.layer_norm_family, self._suffix(idx))
                if self.layer_norm
                else None
            ),
        }

    def _kernel(self, x, state: tuple, w: dict, batch_sizes) -> tuple[torch.Tensor, tuple]:
        """One layer, one direction: (x (T, B, I), state) -> (y (T, B, P), final state)."""
        raise NotImplementedError

    def _step(self, x_t, state: tuple, w: dict, rec_mask) -> tuple:
        """The family's step equations, for the masked loop: (x_t (B, I), state) -> new state."""
        raise NotImplementedError

    def _state_sizes(self) -> tuple[int, ...]:
        out = self.proj_size or self.hidden_size
        return (out,) if self.num_states == 1 else (out, self.hidden_size)

    def _initial_states(self, hx, batch: Batch) -> list[torch.Tensor]:
        """hx as given (None, a tensor, or the LSTM's (h0, c0)) -> states (L*D, B, *) in the
        kernels' batch order."""
        LD, B = self.num_layers * self.num_directions, batch.x.shape[1]
        sizes = self._state_sizes()
        if hx is None:
            if self.learn_initial_state:  # (L*D, n) -> (L*D, B, n), a copy the kernels may read
                return [
                    p[:, None].expand(LD, B, n).contiguous() for p, n in zip(self._initial_params(), sizes)
                ]
            return [batch.x.new_zeros(LD, B, n) for n in sizes]
        names = ("hx",) if self.num_states == 1 else ("hx[0] (h_0)", "hx[1] (c_0)")
        if self.num_states == 1:
            states = [hx]
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RnnkitTypeError(
                    f"hx must be a tuple (h_0, c_0) of two tensors for an LSTM, got {type(hx).__name__}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
                )
            states = list(hx)
        return initial_states(batch, states, names, sizes, LD, batch.x)

    def forward(self, input, hx=None, *, lengths=None, masks=None):
        """input (T, B, I) ((B, T, I) with batch_first), unbatched (T, I), or a PackedSequence;
        hx the initial state (zeros, or the learned one, if None); lengths (B,) the valid length
        of each padded sequence; masks the regularisation masks as `sample_masks` draws them
        (drawn afresh in training if None). Returns (output, h_n), or (output, (h_n, c_n)) for the
        LSTM, shaped as torch.

        Under autocast (e.g. bfloat16), the recurrence runs in the parameters' precision: a long
        product of low-precision steps drifts, so inputs are cast up and autocast is paused here;
        the outputs come back in that precision for the ops that follow."""
        device = self.weight_ih_l0.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self.forward(
                    *cast_floats((input, hx), self.weight_ih_l0.dtype), lengths=lengths, masks=masks
                )
        batch = prepare_input(
            input,
            lengths=lengths,
            batch_first=self.batch_first,
            input_size=self.input_size,
            weight=self.weight_ih_l0,
        )
        states = self._initial_states(hx, batch)
        D = self.num_directions
        if batch.x.shape[1] == 0:  # an empty batch: torch's shapes, nothing to compute
            y = batch.empty(self, batch.x.shape[0], 0, D * (self.proj_size or self.hidden_size))
            h_n = [batch.state_out(s + batch.empty(self, *s.shape)) for s in states]
            return batch.output(y), (h_n[0] if self.num_states == 1 else tuple(h_n))
        masks = layer_masks(self, masks, batch)  # drawn before anything else random
        backwards = reverse_index(batch) if self.bidirectional else None
        x, finals = batch.x, [[] for _ in states]
        for k in range(self.num_layers):
            outputs = []
            for d in range(D):
                idx = k * D + d
                x_in = x if d == 0 else flip_valid(x, backwards)
                y, final = run_direction(
                    self._kernel,
                    self._step,
                    x_in,
                    tuple(s[idx] for s in states),
                    self._weights(idx),
                    batch.batch_sizes,
                    masks[idx],
                )
                outputs.append(y if d == 0 else flip_valid(y, backwards))
                for acc, s in zip(finals, final):
                    acc.append(s)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (T, B, D*P)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        h_n = [batch.state_out(torch.stack(acc)) for acc in finals]  # (L*D, B, *)
        return batch.output(x), (h_n[0] if self.num_states == 1 else tuple(h_n))
