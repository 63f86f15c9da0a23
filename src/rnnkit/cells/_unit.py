"""`Unit`: the `Cell` of a built-in family (Elman, LSTM, GRU, MGU, their layer-normalised forms,
minGRU/minLSTM), what the registry names and every sequence layer runs.

A unit's equations are functions of a parameter dict: `step(x_t, state, w, rec_mask=None)` and
`sequence(x, state, w, batch_sizes=None, impl="fused")` (the family's fused kernel with its
hand-derived BPTT backward). So one piece of code serves both homes of the parameters:

    a unit that owns them (`rnnkit.Recurrent(UnitClass, ...)`, names `cells.{i}.weight_ih`, ...):
        forward(x_t, state) = step(x_t, state, own), forward_sequence = sequence(x, state, own)
    a torch-compatible layer (`rnnkit.LSTM`, ...) that holds them under torch's names, e.g.
        weight_ih_l0, weight_hh_l1_reverse: it keeps a parameterless unit per layer-direction and
        calls step/sequence with the dict of that layer-direction's parameters.

Parameters (torch's names, shapes and U(-1/sqrt(H), 1/sqrt(H)) initialisation), in torch's order:
weight_ih (G*H, I), weight_hh (G*H, P), bias_ih and bias_hh (G*H,) with `bias`, weight_hr (P, H)
with a projection; then a family's own (`extra_shapes`: the layer-normalised gains and shifts).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import allocating, check_bool
from rnnkit.cells._layernorm import reset_layer_norm_
from rnnkit.cells.base import Cell
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


class Unit(Cell):
    """A built-in family's cell; see the module docstring. A subclass sets `gates`, `num_states`
    and defines `step` and `sequence`."""

    gates = 1
    num_states = 1  # 2 for the LSTMs: (h, c)
    recurrent_weights = ("weight_hh",)
    gate_names: tuple[str, ...] = ()  # the row blocks of weight_hh, in order (diagnostics)
    forget_gate: int | None = None  # the block of the forget gate, where there is one

    def __init__(self, input_size: int, hidden_size: int, *, bias: bool = True, proj_size: int = 0):
        super().__init__(input_size, hidden_size)
        check_bool("bias", bias)
        self.bias, self.proj_size = bias, proj_size
        with allocating(f"{type(self).__name__}(input_size={input_size}, hidden_size={hidden_size})"):
            for name, shape in {**self.parameter_shapes(), **self.extra_shapes()}.items():
                self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    @property
    def state_sizes(self) -> tuple[int, ...]:
        out = self.proj_size or self.hidden_size
        return (out,) if self.num_states == 1 else (out, self.hidden_size)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """torch's parameters of one layer-direction, in torch's order."""
        GH, P = self.gates * self.hidden_size, self.proj_size or self.hidden_size
        shapes = {"weight_ih": (GH, self.input_size), "weight_hh": (GH, P)}
        if self.bias:
            shapes.update(bias_ih=(GH,), bias_hh=(GH,))
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        return shapes

    def options(self) -> dict:
        """The keyword arguments that rebuild this unit with its input and hidden sizes (JSON
        values): what a traced layer's op records (`rnnkit.cells.traced`)."""
        return {"bias": self.bias, **({"proj_size": self.proj_size} if self.proj_size else {})}

    def extra_shapes(self) -> dict[str, tuple[int, ...]]:
        """The family's parameters beyond torch's (a layer registers them after torch's)."""
        return {}

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        reset_layer_norm_({n: p for n, p in self.named_parameters() if n.startswith("layer_norm_")})

    def weights(self) -> dict[str, torch.Tensor]:
        """The unit's own parameters by name: the `w` of step and sequence."""
        return dict(self.named_parameters())

    def forward(self, x_t, state):
        return self.step(x_t, tuple(state), self.weights())

    def forward_sequence(self, x, state, batch_sizes=None):
        return self.sequence(x, tuple(state), self.weights(), batch_sizes)

    def step(self, x_t, state: tuple, w: dict, rec_mask=None) -> tuple:
        """One step with the parameters w: (x_t (B, I), state) -> new state. `rec_mask` (B, P),
        if given, multiplies h_{t-1} where it enters W_hh (recurrent dropout)."""
        raise NotImplementedError

    def sequence(self, x, state: tuple, w: dict, batch_sizes=None, impl: str = "fused"):
        """The whole sequence with the parameters w: (y (T, B, P), final state tuple); `impl`
        "fused" (the hand-derived BPTT) or "loop" (the step equations under autograd)."""
        raise NotImplementedError

    def onnx_sequence(self, x, state: tuple, w: dict, lengths=None):
        """Under torch.onnx.export: the whole sequence as ONNX's own operator, (y, final state),
        where the family has one with the same semantics; None (the default) exports a Scan over
        `step` instead."""
        return None

    def extra_repr(self) -> str:
        s = super().extra_repr() + ("" if self.bias else ", bias=False")
        return s + (f", proj_size={self.proj_size}" if self.proj_size else "")


class LSTMShaped(Unit):
    """What the LSTM and the layer-normalised LSTM units share: gates i, f, g, o (the forget gate
    second), states (h, c) of sizes (P, H), and torch's optional projection (`proj_size`)."""

    gates = 4
    num_states = 2
    gate_names = ("i", "f", "g", "o")
    forget_gate = 1

    def __init__(self, input_size, hidden_size, *, bias=True, proj_size=0):
        check_projection(proj_size, hidden_size)
        super().__init__(input_size, hidden_size, bias=bias, proj_size=proj_size)


def torch_weights(w: dict) -> tuple:
    """(w_ih, w_hh, b_ih, b_hh) of a unit's parameter dict: the positional weights every fused
    kernel takes, in torch's order (biases None without `bias`)."""
    return w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")


def check_projection(proj_size, hidden_size: int) -> int:
    """torch's LSTM projection: 0 (none) or a size below hidden_size."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, int):
        raise RnnkitTypeError(f"proj_size must be an int, got {type(proj_size).__name__}")
    if proj_size < 0 or (proj_size and proj_size >= hidden_size):
        raise RnnkitValueError(
            f"proj_size must be 0 (no projection) or in 1..{hidden_size - 1} (< hidden_size), got {proj_size}"
        )
    return proj_size
