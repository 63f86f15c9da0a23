"""The long-lag problems of the LSTM literature, generated from a seed (batch-major).

adding (Hochreiter and Schmidhuber 1997, as in Le et al. 2015): each step is (value, marker),
values uniform in [0, 1]; exactly two steps are marked, one in each half of the T steps. The
target is the sum of the two marked values. Predicting the mean, 1, scores MSE 1/6 ~ 0.167.

copy-memory (Arjovsky et al. 2016): symbols 1..8 are data, 0 blank, 9 the delimiter. The input
is 10 data symbols, T - 1 blanks, the delimiter, then 10 blanks (T + 20 steps); the target is
blank for the first T + 10 steps and then the 10 data symbols. A model without memory can at best
output blanks and then guess: cross-entropy 10 ln 8 / (T + 20) per step.
"""

from __future__ import annotations

import math

import torch

COPY_SYMBOLS, COPY_BLANK, COPY_DELIMITER = 10, 0, 9
COPY_DATA = 8  # symbols 1..8


def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (B, T, 2), targets (B,))."""
    values = torch.rand(batch, length, generator=generator)  # (B, T)
    half = length // 2
    first = torch.randint(0, max(half, 1), (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    marker = torch.zeros(batch, length)
    rows = torch.arange(batch)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    return torch.stack([values, marker], dim=-1), (values * marker).sum(1)


def copy_memory_batch(batch: int, lag: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(input symbols (B, T + 20), target symbols (B, T + 20)), 10 symbols to recall."""
    data = torch.randint(1, COPY_DATA + 1, (batch, 10), generator=generator)
    x = torch.full((batch, lag + 20), COPY_BLANK, dtype=torch.long)
    y = torch.full((batch, lag + 20), COPY_BLANK, dtype=torch.long)
    x[:, :10] = data
    x[:, lag + 9] = COPY_DELIMITER
    y[:, -10:] = data
    return x, y


def copy_memory_baseline(lag: int) -> float:
    """Cross-entropy per step of the best memoryless strategy."""
    return 10 * math.log(COPY_DATA) / (lag + 20)
