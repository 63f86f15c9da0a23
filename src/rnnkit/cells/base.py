"""`Cell`: the base of a cell a user writes, the extension point of the library.

A cell is one step of a recurrence, state_t = cell(x_t, state_{t-1}); `rnnkit.Recurrent` owns the
loop over time around it (stacking, directions, lengths, packed and unbatched input, initial and
final states, dropout between layers and the regularisers). A subclass:

    class MyCell(rnnkit.cells.Cell):
        state_sizes = ...                     # a tuple of ints; the first is the output h
        recurrent_weights = ("weight_hh",)    # optional: what weight_dropout masks
        def __init__(self, input_size, hidden_size, **options):
            super().__init__(input_size, hidden_size)
            ...                               # its parameters
        def forward(self, x_t, state):        # x_t (B, input_size), state a tuple of (B, size)
            return new_state                  # a tuple in state_sizes order
        def forward_sequence(self, x, state, batch_sizes=None):   # optional: a fused kernel
            return y, final_state             # y (T, B, state_sizes[0]); see below

`forward_sequence(x, state, batch_sizes=None) -> (y, state)` runs a whole sequence at once: x
(T, B, input_size) time-major, `batch_sizes` as in PackedSequence (sequences sorted by decreasing
length; None when all have length T), y (T, B, state_sizes[0]) zero past each length, and each
sequence's state at its own last step. A layer uses it when present (and no per-step regulariser
is in play), and it must give the numbers stepping `forward` gives.
"""

from __future__ import annotations

from torch import nn

from rnnkit._checks import check_positive_int


class Cell(nn.Module):
    """One step of a recurrence; see the module docstring."""

    state_sizes: tuple[int, ...] = ()
    recurrent_weights: tuple[str, ...] = ()

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)

    def forward(self, x_t, state: tuple) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} must define forward(x_t, state) -> state")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
