"""What the single-step cell modules share: torch's parameter layout and initialisation, the
checks and unbatched handling of their inputs, and the regularisers of `_regularize`."""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import (
    allocating,
    check_bool,
    check_like,
    check_positive_int,
    check_shape,
    check_tensor,
    shape_str,
)
from rnnkit.cells._layernorm import (
    check_layer_norm_flag,
    layer_norm_args,
    layer_norm_shapes,
    reset_layer_norm_,
)
from rnnkit.cells._regularize import Masks, Regularizer, check_masks, drop_weight, masked_step
from rnnkit.errors import RnnkitValueError


class CellBase(nn.Module):
    """Parameters as in torch's cells: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh
    (G*H,), all drawn from U(-1/sqrt(H), 1/sqrt(H)) as torch does.

    Keyword-only options, all off by default (a cell is then exactly torch's):
      zoneout: a rate in [0, 1) for every state, or for the LSTM a pair (p_h, p_c).
      recurrent_dropout, weight_dropout: rates in [0, 1) (see `rnnkit.cells._regularize`).
      learn_initial_state: the state used when hx is None is a parameter, `initial_h` (H,) (and
        `initial_c` (H,) for the LSTM), zeros at first and broadcast over the batch.
      layer_norm: (LSTM and GRU cells only) the layer-normalised step of `rnnkit.cells.ln_lstm` or
        `ln_gru`, with gains layer_norm_{ih,hh}_weight (G*H,) (1 at first) and shifts
        layer_norm_{ih,hh}_bias (0), and for the LSTM layer_norm_c_weight, _bias (H,).
    A cell sees one step, so in training it draws its masks on each call; for one recurrent-
    dropout (or weight) mask per sequence, draw them once with `sample_masks` and pass them to
    every step as forward(..., masks=).
    """

    gates: int = 1
    num_states: int = 1  # 2 for the LSTM: (h, c)
    layer_norm_sites: tuple | None = None  # where `layer_norm=True` normalises (`_layernorm`)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        zoneout=0.0,
        recurrent_dropout=0.0,
        weight_dropout=0.0,
        learn_initial_state=False,
        layer_norm=False,
    ):
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_bool("bias", bias)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G = self.gates
        with allocating(f"{type(self).__name__}(input_size={input_size}, hidden_size={hidden_size})"):
            self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size, **factory))
            self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size, **factory))
            if bias:
                self.bias_ih = nn.Parameter(torch.empty(G * hidden_size, **factory))
                self.bias_hh = nn.Parameter(torch.empty(G * hidden_size, **factory))
            else:
                self.register_parameter("bias_ih", None)
                self.register_parameter("bias_hh", None)
        self.regularizer = Regularizer.from_args(
            zoneout=zoneout,
            recurrent_dropout=recurrent_dropout,
            weight_dropout=weight_dropout,
            num_states=self.num_states,
        )
        check_bool("learn_initial_state", learn_initial_state)
        self.learn_initial_state = learn_initial_state
        for name in ("initial_h", "initial_c")[: self.num_states if learn_initial_state else 0]:
            self.register_parameter(name, nn.Parameter(torch.zeros(hidden_size, **factory)))
        # layer_norm: the gains and shifts of `rnnkit.cells._layernorm`, e.g. layer_norm_ih_weight
        self.layer_norm = check_layer_norm_flag(layer_norm, type(self).__name__, self.layer_norm_sites)
        shapes = layer_norm_shapes(self.layer_norm_sites, hidden_size) if layer_norm else {}
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        for p in self._initial_params():
            nn.init.zeros_(p)
        reset_layer_norm_({n: p for n, p in self.named_parameters() if n.startswith("layer_norm_")})

    def _layer_norm_args(self) -> dict[str, tuple]:
        """The kernels' ln_ih=(gain, shift), ln_hh=... (and ln_c=...) keywords, when layer_norm."""
        return layer_norm_args(dict(self.named_parameters()), self.layer_norm_sites)

    def _initial_params(self) -> list[nn.Parameter]:
        """initial_h (and initial_c), when learn_initial_state; else none."""
        names = ("initial_h", "initial_c")[: self.num_states if self.learn_initial_state else 0]
        return [getattr(self, n) for n in names]

    def sample_masks(self, batch_size: int) -> Masks:
        """Fresh masks for one step of `batch_size` sequences (1 for unbatched input), drawn like
        weight_hh; what forward draws in training when not given `masks`."""
        check_positive_int("batch_size", batch_size)
        return self.regularizer.sample(batch_size, (self.hidden_size,) * self.num_states, self.weight_hh)

    def _step(self, x, state: tuple, w_hh, rec_mask) -> tuple:
        """The family's step equations with these weights: (x (B, I), state) -> new state."""
        raise NotImplementedError

    def _regularized_step(self, x, state: tuple, masks) -> tuple:
        """One step with the masks given, or drawn (training), or zoneout's expectation (eval)."""
        if masks is not None:
            shapes = self.regularizer.shapes(
                x.shape[0], (self.hidden_size,) * self.num_states, self.weight_hh
            )
            masks = check_masks("masks", masks, shapes)
        elif self.training and self.regularizer.active:
            masks = self.sample_masks(x.shape[0])
        elif not self.training:
            masks = self.regularizer.eval_masks()
        if masks is None:
            return self._step(x, state, self.weight_hh, None)
        w_hh = drop_weight(self.weight_hh, masks)
        return masked_step(
            lambda x_t, s, m: self._step(x_t, s, w_hh, m), x, state, masks.recurrent, masks.zoneout
        )

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        s += self.regularizer.extra_repr() + (", layer_norm=True" if self.layer_norm else "")
        return s + (", learn_initial_state=True" if self.learn_initial_state else "")

    def _batched(self, input, states: dict) -> tuple[torch.Tensor, list, bool]:
        """Check input (B, I) or unbatched (I,) and the states (B, H) / (H,); return them batched,
        with zeros for the states given as None, and whether the call was unbatched."""
        check_tensor("input", input, ndim=(1, 2))
        check_like("input", input, "weight_ih", self.weight_ih)
        if input.shape[-1] != self.input_size:
            raise RnnkitValueError(
                f"input must have {self.input_size} features (input_size) in its last dimension, "
                f"got shape {shape_str(input)}"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        B = x.shape[0]
        out = []
        learned = self._initial_params()
        for i, (name, s) in enumerate(states.items()):
            if s is None:
                out.append(learned[i].expand(B, -1) if learned else x.new_zeros(B, self.hidden_size))
                continue
            check_tensor(name, s, ndim=input.dim())
            check_like(name, s, "input", input)
            want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
            check_shape(name, s, want, "(batch, hidden_size)" if not unbatched else "(hidden_size,)")
            out.append(s.unsqueeze(0) if unbatched else s)
        return x, out, unbatched
