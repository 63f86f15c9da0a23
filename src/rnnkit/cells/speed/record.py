"""A step's arrays laid out in one flat row, for loops over time whose steps are cheap.

Why: in a kernel's loop every per-step array is a view of a whole-sequence buffer (x[t], c[t],
the gate blocks of G[t], ...), made before the loop and dropped after it; inside a kernel (grad
mode off) a view costs ~0.4 us (`python benchmarks/op_floor.py`, "a per-step view"). The
layer-norm LSTM's loops read or write ~24 such arrays a step, ~10 ms a call at T=1000. With a
record, a loop works in one scratch row through views made once, and moves a whole step to or
from the sequence buffer with one copy (1.5-2 us at B=16 H=64). Net, side by side: 113-119 ->
103-108 ms a training step at T=1000 B=16 H=64 (docs/benchmarks.md says how it was run). Kernels
whose steps touch few arrays (the LN-GRU, the plain cells) would gain nothing: a copy replaces
only the views it saves.

Layout: the blocks follow each other, each a contiguous (B, width) matrix (block-major), so
that any block is a contiguous operand (torch's layer-norm kernels copy strided ones) and so are
the first n rows of a block (the sequences still running in a packed batch). A sequence of
records is a (T, size) buffer; a block of it, (T, B, width), is a strided view.
"""

from __future__ import annotations

import torch


class StepRecord:
    """Named blocks of widths `widths` (name -> columns), B rows each, in one flat row."""

    def __init__(self, B: int, **widths: int):
        self.B = B
        self.blocks: dict[str, tuple[int, int]] = {}  # name -> (offset, width)
        offset = 0
        for name, width in widths.items():
            self.blocks[name] = (offset, width)
            offset += B * width
        self.size = offset

    def block(self, flat: torch.Tensor, name: str, rows: int | None = None) -> torch.Tensor:
        """Block `name` of records flat (..., size) as (..., rows, width): a view, its first
        `rows` rows (all B by default)."""
        offset, width = self.blocks[name]
        rows = self.B if rows is None else rows
        return flat[..., offset : offset + rows * width].unflatten(-1, (rows, width))

    def span(self, first: str, last: str) -> slice:
        """The flat columns of the blocks from `first` to `last`, both included (in layout order)."""
        return slice(self.blocks[first][0], self.blocks[last][0] + self.B * self.blocks[last][1])
