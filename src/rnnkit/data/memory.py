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


# --- the algorithmic tasks of the Neural Turing Machine paper (Graves et al. 2014, section 4) ---
# Each returns (inputs (B, T, I) float, targets (B, T, O) float, mask (B, T) bool): the loss and
# the bit errors count the targets where mask is True (the answer phase) only. One length per
# batch, so nothing is padded.

COPY_BITS = 8
RECALL_BITS, ITEM_VECTORS = 6, 3


def copy_batch(batch: int, length: int, generator: torch.Generator):
    """Copy: `length` random 8-bit vectors, then a delimiter flag (its own input channel), then
    `length` blank steps during which the vectors are to be output. I = 9, O = 8, T = 2L + 1."""
    bits = torch.randint(0, 2, (batch, length, COPY_BITS), generator=generator).float()
    T = 2 * length + 1
    x = torch.zeros(batch, T, COPY_BITS + 1)
    x[:, :length, :COPY_BITS] = bits
    x[:, length, COPY_BITS] = 1.0
    y = torch.zeros(batch, T, COPY_BITS)
    y[:, length + 1 :] = bits
    mask = torch.zeros(batch, T, dtype=torch.bool)
    mask[:, length + 1 :] = True
    return x, y, mask


def repeat_copy_batch(
    batch: int, length: int, repeats: int, generator: torch.Generator, max_repeats: int = 10
):
    """Repeat copy: `length` vectors, then a step whose flag channel carries the number of repeats
    (scaled by `max_repeats`), then the sequence output `repeats` times and an end marker on its
    own output channel. I = 10 (bits, start flag, repeats), O = 9 (bits, end), T = L(R + 1) + 3."""
    bits = torch.randint(0, 2, (batch, length, COPY_BITS), generator=generator).float()
    T = length * (repeats + 1) + 3
    x = torch.zeros(batch, T, COPY_BITS + 2)
    x[:, 0, COPY_BITS] = 1.0  # start flag
    x[:, 1 : length + 1, :COPY_BITS] = bits
    x[:, length + 1, COPY_BITS + 1] = repeats / max_repeats
    y = torch.zeros(batch, T, COPY_BITS + 1)
    start = length + 2
    y[:, start : start + repeats * length, :COPY_BITS] = bits.repeat(1, repeats, 1)
    y[:, -1, COPY_BITS] = 1.0  # end marker
    mask = torch.zeros(batch, T, dtype=torch.bool)
    mask[:, start:] = True  # the answer phase and the end marker's step
    return x, y, mask


def associative_recall_batch(batch: int, items: int, generator: torch.Generator):
    """Associative recall: `items` items of 3 random 6-bit vectors, each after an item delimiter
    (input channel 6), then a query delimiter (channel 7), a copy of one item (not the last) and
    another query delimiter; the answer is the item that followed it, output in the 3 steps after
    the query. I = 8, O = 6, T = 4 items + 8."""
    V = ITEM_VECTORS
    data = torch.randint(0, 2, (batch, items, V, RECALL_BITS), generator=generator).float()
    query = torch.randint(0, items - 1, (batch,), generator=generator)
    T = items * (V + 1) + (V + 2) + V
    x = torch.zeros(batch, T, RECALL_BITS + 2)
    for i in range(items):
        x[:, i * (V + 1), RECALL_BITS] = 1.0
        x[:, i * (V + 1) + 1 : (i + 1) * (V + 1), :RECALL_BITS] = data[:, i]
    q = items * (V + 1)
    rows = torch.arange(batch)
    x[:, q, RECALL_BITS + 1] = 1.0
    x[:, q + 1 : q + 1 + V, :RECALL_BITS] = data[rows, query]
    x[:, q + 1 + V, RECALL_BITS + 1] = 1.0
    y = torch.zeros(batch, T, RECALL_BITS)
    y[:, -V:] = data[rows, query + 1]
    mask = torch.zeros(batch, T, dtype=torch.bool)
    mask[:, -V:] = True
    return x, y, mask
