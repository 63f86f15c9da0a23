"""Truncated BPTT with separate intervals (Williams and Peng 1990): every k1 steps an update,
whose gradient reaches k2 >= k1 steps back.

A window holds k2 inputs starting where the carried state stands. Its first k1 inputs advance
that state to where the next window starts; the remaining k2 - k1 inputs continue from there with
the graph kept; the loss is on the last k1 targets, the new ones, so each target is predicted
once and its gradient flows back k2 steps. With k1 = k2 this is plain chunked BPTT.
"""

from __future__ import annotations

import torch

from rnnkit.errors import RnnkitValueError


def tbptt_step(model, inputs: torch.Tensor, targets: torch.Tensor, state, k1: int):
    """inputs, targets (B, k2) -> (mean cross-entropy over the last k1 targets, the state after
    the first k1 inputs). `model(inputs, state) -> (logits (B, T, V), state)`."""
    k2 = inputs.shape[1]
    if not 1 <= k1 <= k2:
        raise RnnkitValueError(f"k1 must be in 1..k2 ({k2}, the window length), got {k1}")
    logits, carried = model(inputs[:, :k1], state)  # (B, k1, V)
    if k2 > k1:
        rest, _ = model(inputs[:, k1:], carried)  # the graph continues through `carried`
        logits = torch.cat([logits, rest], dim=1)
    new = logits[:, -k1:]
    loss = torch.nn.functional.cross_entropy(new.reshape(-1, new.shape[-1]), targets[:, -k1:].reshape(-1))
    return loss, carried
