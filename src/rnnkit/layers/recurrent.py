"""`TorchLayer`: `rnnkit.Recurrent` over a built-in family's unit with the parameters under torch's
names, the base of the drop-in layers (`rnnkit.RNN`, `LSTM`, `GRU`, `MGU`, `MinGRU`, `MinLSTM`).

The loop (stacking, directions, lengths, states, dropout between layers, the regularisers) is
`Recurrent`'s; what differs is where the parameters live. Per layer k and direction (suffix
`_l{k}` plus `_reverse`) the layer registers the unit's parameters exactly as torch does (names,
shapes, order, U(-1/sqrt(H), 1/sqrt(H)) initialisation), so state_dicts load both ways:
weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, weight_hr_l{k} (projection); then,
with `learn_initial_state`, initial_h (num_layers * num_directions, P) and initial_c (..., H) for
the LSTM; then a family's own, e.g. the layer-normalised gains layer_norm_ih_weight_l{k}. It keeps
one parameterless unit per layer-direction (its options and equations) and calls the unit's
`step` and `sequence` with that layer-direction's parameters.

Keyword-only options beyond torch's, all off by default (the layer is then exactly torch's):
  zoneout (a rate, or for the LSTM a pair (p_h, p_c)), recurrent_dropout, weight_dropout: rates in
    [0, 1), per layer and direction; the equations are in `rnnkit.cells._regularize`, the masks'
    shapes in `rnnkit.layers._regularize`.
  learn_initial_state: the state used when hx is None is a parameter (above), zeros at first and
    broadcast over the batch; an hx given overrides it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import allocating, check_bool
from rnnkit.cells._layernorm import reset_layer_norm_
from rnnkit.errors import RnnkitTypeError
from rnnkit.layers.generic import Recurrent


class TorchLayer(Recurrent):
    """A built-in unit's layer with torch's parameter names and calling convention: hx and h_n a
    tensor, or for two states (the LSTM) a tuple (h, c). See the module docstring."""

    def __init__(
        self,
        unit_class: type,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        dropout=0.0,
        bidirectional=False,
        device=None,
        dtype=None,
        *,
        impl="fused",
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        **unit_options,
    ):
        nn.Module.__init__(self)
        check_bool("bias", bias)
        self._configure(
            unit_class, input_size, hidden_size, num_layers, batch_first, dropout, bidirectional, impl
        )
        self.bias = bias
        self.proj_size = unit_options.get("proj_size", 0)
        LD = num_layers * self.num_directions
        sizes = f"input_size={input_size}, hidden_size={hidden_size}, num_layers={num_layers}"
        what = f"{type(self).__name__}({sizes})"
        with allocating(what), torch.device("meta"):  # the units' options and shapes only
            first = unit_class(input_size, hidden_size, bias=bias, **unit_options)
            deeper = self.num_directions * first.state_sizes[0]  # layer k > 0 reads both directions
            units = [first] + [
                unit_class(
                    input_size if i < self.num_directions else deeper, hidden_size, bias=bias, **unit_options
                )
                for i in range(1, LD)
            ]
        self._names = [[*u.parameter_shapes(), *u.extra_shapes()] for u in units]
        factory = {"device": device, "dtype": dtype}
        self._all_weights: list[list[str]] = []
        with allocating(what):
            for idx, unit in enumerate(units):  # torch's parameters, in torch's order
                names = []
                for name, shape in unit.parameter_shapes().items():
                    self.register_parameter(
                        name + self._suffix(idx), nn.Parameter(torch.empty(shape, **factory))
                    )
                    names.append(name + self._suffix(idx))
                self._all_weights.append(names)
            self._units = tuple(units)
            self._regularize(zoneout, recurrent_dropout, weight_dropout, learn_initial_state, device, dtype)
            for idx, unit in enumerate(units):  # a family's own, after torch's (and initial_h)
                for name, shape in unit.extra_shapes().items():
                    self.register_parameter(
                        name + self._suffix(idx), nn.Parameter(torch.empty(shape, **factory))
                    )
        for unit in units:
            unit._parameters.clear()  # meta tensors: the layer's own are the ones used
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        for name in self._initial_names()[: self.num_states if self.learn_initial_state else 0]:
            nn.init.zeros_(getattr(self, name))
        reset_layer_norm_({n: p for n, p in self.named_parameters() if n.startswith("layer_norm_")})

    def _suffix(self, idx: int) -> str:
        """torch's name suffix of layer-direction idx: _l{layer}, plus _reverse."""
        return f"_l{idx // self.num_directions}" + ("_reverse" if idx % self.num_directions else "")

    def _initial_names(self) -> list[str]:
        return ["initial_h", "initial_c"][: self.num_states]

    def _parameter_names(self) -> list[str]:
        return self._names[0]

    def _unit(self, idx: int):
        return self._units[idx]

    def _unit_parameters(self, idx: int):
        suffix = self._suffix(idx)
        return ((name, getattr(self, name + suffix)) for name in self._names[idx])

    def _weights(self, idx: int) -> dict:
        return dict(self._unit_parameters(idx))

    def _given_states(self, hx) -> tuple[list, list[str]]:
        if self.num_states == 1:
            return [hx], ["hx"]
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RnnkitTypeError(
                f"hx must be a tuple (h_0, c_0) of two tensors for an LSTM, got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        return list(hx), ["hx[0] (h_0)", "hx[1] (c_0)"]

    def _returned_states(self, states: list):
        return states[0] if self.num_states == 1 else tuple(states)

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
        s += self.regularizer.extra_repr()
        return s + (", learn_initial_state=True" if self.learn_initial_state else "")
