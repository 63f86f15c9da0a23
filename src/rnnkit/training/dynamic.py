"""Dynamic evaluation (Krause et al. 2018): a language model that keeps learning from the text
it is scored on.

The test text is read once, in order, as one stream cut into segments s_1, s_2, ... of `segment`
tokens, the recurrent state carried from each to the next. Segment i is scored first, with the
weights as they are; then the weights take one gradient step on that segment's mean loss and are
pulled back towards the trained weights theta_0:

    theta_i = theta_{i-1} - lr * grad L(s_i; theta_{i-1}) + decay * (theta_0 - theta_{i-1})

so text that repeats what was read earlier (a document's own names and phrases) becomes cheaper,
while the decay keeps the model from drifting away from what training found. Every score is taken
before the model has seen the segment: the result is a fair code length. With lr = 0 it is the
static evaluation of the same segmentation. The trained weights are never touched (a copy adapts).
`lr` and `decay` are chosen on validation text (`tune`), never on the test text.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
DECAY_GRID = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)


def _detach(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(s) for s in state)
    return state


def dynamic_bits(model, ids: torch.Tensor, *, lr: float, decay: float = 0.0, segment: int = 100) -> float:
    """Bits per token of `ids` (1-D, token ids) under dynamic evaluation of `model` (forward(tokens
    (B, T), state) -> (logits (B, T, V), state)); `model` itself is left as it was."""
    if len(ids) < 2:
        return float("nan")
    work = copy.deepcopy(model).eval()  # eval: no dropout; the gradient still flows
    params = [p for p in work.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    stream = ids.to(next(work.parameters()).device)[None]  # (1, N): one stream, in order
    n = stream.shape[1] - 1  # tokens predicted
    total, state = 0.0, None
    for s in range(0, n, segment):
        x = stream[:, s : min(s + segment, n) + 1]
        adapt = lr > 0
        with torch.set_grad_enabled(adapt):
            logits, state = work(x[:, :-1], state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[0, 1:], reduction="sum")
        total += loss.item()  # scored before the step on it
        if adapt:
            grads = torch.autograd.grad(loss / (x.shape[1] - 1), params, allow_unused=True)
            with torch.no_grad():
                for p, g, p0 in zip(params, grads, start):
                    if g is not None:
                        p.sub_(lr * g)
                    if decay:
                        p.add_(decay * (p0 - p))
        state = _detach(state)
    return total / n / math.log(2)


def tune(
    score: Callable[[float, float], float],
    lrs: Sequence[float] = LR_GRID,
    decays: Sequence[float] = DECAY_GRID,
) -> dict:
    """The (lr, decay) with the lowest `score(lr, decay)` (bits on validation text): lr along its
    grid with decay 0, then decay at that lr; each walk stops once a value scores worse than the
    best so far (the curves are single-dipped in practice). Returns {"lr", "decay", "bits",
    "static_bits", "tried": [[lr, decay, bits], ...]}."""
    tried = []

    def measured(lr, decay):
        bits = score(lr, decay)
        tried.append([lr, decay, bits])
        return bits

    best = (measured(0.0, 0.0), 0.0, 0.0)
    static = best[0]
    for lr in lrs:
        bits = measured(lr, 0.0)
        if not bits < best[0]:
            break
        best = (bits, lr, 0.0)
    if best[1] > 0:
        for decay in decays:
            if decay == 0.0:
                continue
            bits = measured(best[1], decay)
            if not bits < best[0]:
                break
            best = (bits, best[1], decay)
    return {"lr": best[1], "decay": best[2], "bits": best[0], "static_bits": static, "tried": tried}
