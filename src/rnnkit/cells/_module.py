"""What the single-step cell modules share: torch's parameter layout and initialisation, and the
checks and unbatched handling of their inputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import check_like, check_positive_int, check_shape, check_tensor, shape_str
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


class CellBase(nn.Module):
    """Parameters as in torch's cells: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh
    (G*H,), all drawn from U(-1/sqrt(H), 1/sqrt(H)) as torch does."""

    gates: int = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise RnnkitTypeError(f"bias must be a bool, got {type(bias).__name__}")
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G = self.gates
        self.weight_ih = nn.Parameter(torch.empty(G * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(G * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(G * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(G * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

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
        for name, s in states.items():
            if s is None:
                out.append(x.new_zeros(B, self.hidden_size))
                continue
            check_tensor(name, s, ndim=input.dim())
            check_like(name, s, "input", input)
            want = (self.hidden_size,) if unbatched else (B, self.hidden_size)
            check_shape(name, s, want, "(batch, hidden_size)" if not unbatched else "(hidden_size,)")
            out.append(s.unsqueeze(0) if unbatched else s)
        return x, out, unbatched
