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

import torch
from torch import nn

from rnnkit._checks import check_like, check_shape, check_tensor
from rnnkit.cells.minimal import MinGRUUnit, MinLSTMUnit, check_log_state, initial_state
from rnnkit.errors import RnnkitUnsupportedError
from rnnkit.layers._inputs import Batch
from rnnkit.layers.recurrent import TorchLayer


class _MinRecurrent(TorchLayer):
    """What MinGRU and MinLSTM share; a subclass sets `unit`."""

    unit = MinGRUUnit

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
        super().__init__(
            self.unit,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device,
            dtype,
            log_space=log_space,
            mode=mode,
        )
        self.log_space, self.mode = log_space, mode

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += ", log_space=True" if self.log_space else ""
        return s + (f", mode={self.mode!r}" if self.mode != "parallel" else "")

    def _initial_states(self, hx, batch: Batch) -> list[torch.Tensor]:
        states = super()._initial_states(hx, batch)
        if hx is not None and self.log_space:
            check_log_state("hx", states[0])
        return states

    def forward(self, input, hx=None, *, lengths=None):
        """input (T, B, I) ((B, T, I) with batch_first), unbatched (T, I), or a PackedSequence; hx
        (num_layers * num_directions, B, H) the initial state (zeros if None; g(0) = 0.5 with
        log_space); lengths (B,) the valid length of each padded sequence. Returns (output, h_n)
        shaped as torch.nn.GRU's. Under autocast the scan runs in the parameters' precision."""
        return super().forward(input, hx, lengths=lengths)

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
            (x,) = self._unit(k).step(x, (hx[k],), self._weights(k))  # (B, H)
            states.append(x)
        h = torch.stack(states)  # (L, B, H)
        return (x, h) if input.dim() == 2 else (x.squeeze(0), h.squeeze(1))


class MinGRU(_MinRecurrent):
    """minGRU layer: h_t = (1 - z_t) h_{t-1} + z_t h~_t, z_t = sigmoid(W_iz x_t + b_iz),
    h~_t = W_ih~ x_t + b_ih~; weight_ih_l{k} (2H, I) stacked z, h~. See the module docstring for
    the API and `rnnkit.cells.minimal` for the log-space variant (`log_space=True`)."""

    unit = MinGRUUnit


class MinLSTM(_MinRecurrent):
    """minLSTM layer: h_t = f'_t h_{t-1} + i'_t h~_t with f', i' the normalised sigmoid gates
    f/(f+i), i/(f+i) and h~_t = W_ih~ x_t + b_ih~; weight_ih_l{k} (3H, I) stacked f, i, h~. See
    the module docstring for the API and `rnnkit.cells.minimal` for the log-space variant."""

    unit = MinLSTMUnit
