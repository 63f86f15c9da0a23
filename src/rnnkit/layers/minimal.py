"""minGRU and minLSTM sequence layers (Feng et al. 2024, "Were RNNs All We Needed?"), shaped as
torch.nn.GRU: stacking, dropout between layers, bidirectional, `lengths`, PackedSequence,
batch_first, unbatched input. The equations are in `rnnkit.cells.minimal`, the scan in
`rnnkit.cells.scan`.

Parameters per layer k and direction: weight_ih_l{k}{_reverse} (G*H, I_k) and bias_ih_l{k}{...}
(G*H,), G = 2 (z, h~) for minGRU and 3 (f, i, h~) for minLSTM, drawn from U(-1/sqrt(H), 1/sqrt(H))
as torch's GRU; no recurrent weights.

Two ways to run, giving the same numbers:
  forward(input, hx=None, *, lengths=None) -> (output, h_n), the whole sequence, by the scan of
    `mode`: "parallel" (default, the blocked scan) or "sequential" (one step after another).
    The default is chosen by measurement on a 2-core CPU, training step, float32: at B=16
    I=H=256 the two are level (the kernel runs time in pieces of ~170 steps that stay in cache;
    MinGRU 70 ms either way at T=1,000, 1.01 s against 1.00 s at T=10,000; MinLSTM 1.33 s against
    1.43 s; `python benchmarks/bench_scan.py`), and at small batch * hidden, where the loop pays
    per-op overhead at every step, the parallel scan is ~10x ahead (the scan alone at T=4096 B=2
    H=32: 2.2 ms against 25 ms forward).
  step(input, hx=None) -> (output, h), one time step for streaming inference (unidirectional
    layers): input (B, I) or (I,), hx and h (num_layers, B, H) or (num_layers, H). Feeding a
    sequence step by step gives forward's output and h_n.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import allocating, check_choice, check_like, check_shape, check_tensor
from rnnkit.cells.minimal import GATES, check_log_state, initial_state, min_rnn, min_step
from rnnkit.cells.scan import MODES
from rnnkit.errors import RnnkitUnsupportedError
from rnnkit.layers._inputs import (
    Batch,
    cast_floats,
    check_stack_args,
    flip_valid,
    prepare_input,
    reverse_index,
)


class _MinRecurrent(nn.Module):
    """What MinGRU and MinLSTM share; a subclass sets `cell`."""

    cell = "gru"

    def __init__(
        self,
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
        log_space=False,
        mode="parallel",
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
            log_space=log_space,
        )
        check_choice("mode", mode, MODES)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.log_space, self.mode = bidirectional, log_space, mode
        factory = {"device": device, "dtype": dtype}
        G, H, D = GATES[self.cell], hidden_size, self.num_directions
        self._names: list[tuple[str, str | None]] = []  # (weight, bias) of each layer-direction
        sizes = f"input_size={input_size}, hidden_size={hidden_size}, num_layers={num_layers}"
        with allocating(f"{type(self).__name__}({sizes})"):
            for k in range(num_layers):
                for d in range(D):
                    suffix = "_reverse" if d else ""
                    layer_in = input_size if k == 0 else H * D
                    w, b = f"weight_ih_l{k}{suffix}", f"bias_ih_l{k}{suffix}"
                    self.register_parameter(w, nn.Parameter(torch.empty(G * H, layer_in, **factory)))
                    if bias:
                        self.register_parameter(b, nn.Parameter(torch.empty(G * H, **factory)))
                    self._names.append((w, b if bias else None))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0}
        defaults.update(bidirectional=False, log_space=False, mode="parallel")
        for name, default in defaults.items():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s

    def _weights(self, idx: int):
        w, b = self._names[idx]
        return getattr(self, w), (None if b is None else getattr(self, b))

    def _initial_states(self, hx, batch: Batch) -> torch.Tensor | None:
        """hx as given -> (L*D, B, H) in the kernels' batch order, or None (each kernel's default)."""
        if hx is None:
            return None
        LD, B, H = self.num_layers * self.num_directions, batch.x.shape[1], self.hidden_size
        check_tensor("hx", hx, ndim=2 if batch.unbatched else 3)
        check_like("hx", hx, "input", batch.x)
        if batch.unbatched:
            check_shape("hx", hx, (LD, H), "(num_layers * num_directions, hidden_size) for unbatched input")
            hx = hx.unsqueeze(1)
        else:
            check_shape("hx", hx, (LD, B, H), "(num_layers * num_directions, batch, hidden_size)")
        if self.log_space:
            check_log_state("hx", hx)
        return batch.sort(hx)

    def forward(self, input, hx=None, *, lengths=None):
        """input (T, B, I) ((B, T, I) with batch_first), unbatched (T, I), or a PackedSequence; hx
        (num_layers * num_directions, B, H) the initial state (zeros if None; g(0) = 0.5 with
        log_space); lengths (B,) the valid length of each padded sequence. Returns (output, h_n)
        shaped as torch.nn.GRU's. Under autocast the scan runs in the parameters' precision."""
        device = self.weight_ih_l0.device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self.forward(*cast_floats((input, hx), self.weight_ih_l0.dtype), lengths=lengths)
        batch = prepare_input(
            input,
            lengths=lengths,
            batch_first=self.batch_first,
            input_size=self.input_size,
            weight=self.weight_ih_l0,
        )
        states = self._initial_states(hx, batch)
        D, H = self.num_directions, self.hidden_size
        T, B = batch.x.shape[:2]
        if B == 0:  # an empty batch: torch's shapes, nothing to compute
            h_n = batch.x.new_zeros(self.num_layers * D, 0, H) if states is None else states
            h_n = h_n + batch.empty(self, *h_n.shape)
            return batch.output(batch.empty(self, T, 0, D * H)), batch.state_out(h_n)
        backwards = reverse_index(batch) if self.bidirectional else None
        x, finals = batch.x, []
        for k in range(self.num_layers):
            outputs = []
            for d in range(D):
                idx = k * D + d
                x_in = x if d == 0 else flip_valid(x, backwards)  # each valid part read backwards
                y, h = min_rnn(
                    x_in,
                    None if states is None else states[idx],
                    *self._weights(idx),
                    cell=self.cell,
                    log_space=self.log_space,
                    mode=self.mode,
                    batch_sizes=batch.batch_sizes,
                )
                outputs.append(y if d == 0 else flip_valid(y, backwards))
                finals.append(h)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (T, B, D*H)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return batch.output(x), batch.state_out(torch.stack(finals))  # h_n (L*D, B, H)

    def step(self, input, hx=None):
        """One time step through every layer, for streaming: input (B, I) or unbatched (I,); hx
        (num_layers, B, H) or (num_layers, H), or None for the initial state. Returns (output
        (B, H) or (H,), h of hx's shape); pass h back as hx for the next step."""
        if self.bidirectional:
            raise RnnkitUnsupportedError(
                "step() runs one time step forwards, which a bidirectional layer cannot do (its "
                "reverse direction needs the whole sequence); use forward() on the sequence"
            )
        check_tensor("input", input, ndim=(1, 2))
        check_like("input", input, "the layer's parameters", self.weight_ih_l0)
        x = input if input.dim() == 2 else input.unsqueeze(0)  # (B, I)
        L, B, H = self.num_layers, x.shape[0], self.hidden_size
        check_shape("input", x, (B, self.input_size), "(batch, input_size)")
        if hx is None:
            hx = initial_state(x, L * B, H, self.log_space).view(L, B, H)
        else:
            check_tensor("hx", hx, ndim=input.dim() + 1)
            check_like("hx", hx, "input", input)
            hx = hx if input.dim() == 2 else hx.unsqueeze(1)  # (L, B, H)
            check_shape("hx", hx, (L, B, H), "(num_layers, batch, hidden_size)")
            if self.log_space:
                check_log_state("hx", hx)
        states = []
        for k in range(L):
            if k and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
            x = min_step(x, hx[k], *self._weights(k), cell=self.cell, log_space=self.log_space)  # (B, H)
            states.append(x)
        h = torch.stack(states)  # (L, B, H)
        return (x, h) if input.dim() == 2 else (x.squeeze(0), h.squeeze(1))


class MinGRU(_MinRecurrent):
    """minGRU layer: h_t = (1 - z_t) h_{t-1} + z_t h~_t, z_t = sigmoid(W_iz x_t + b_iz),
    h~_t = W_ih~ x_t + b_ih~; weight_ih_l{k} (2H, I) stacked z, h~. See the module docstring for
    the API and `rnnkit.cells.minimal` for the log-space variant (`log_space=True`)."""

    cell = "gru"


class MinLSTM(_MinRecurrent):
    """minLSTM layer: h_t = f'_t h_{t-1} + i'_t h~_t with f', i' the normalised sigmoid gates
    f/(f+i), i/(f+i) and h~_t = W_ih~ x_t + b_ih~; weight_ih_l{k} (3H, I) stacked f, i, h~. See
    the module docstring for the API and `rnnkit.cells.minimal` for the log-space variant."""

    cell = "lstm"
