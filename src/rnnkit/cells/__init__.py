"""Cell families: each file holds its step equations, its fused whole-sequence kernel with the
hand-derived BPTT backward, and its single-step module (drop-in for torch's cells)."""

from rnnkit.cells._regularize import Masks
from rnnkit.cells.elman import RNNCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.jordan import JordanCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.mgu import MGUCell
from rnnkit.cells.minimal import MinGRUCell, MinLSTMCell

__all__ = [
    "GRUCell",
    "JordanCell",
    "LSTMCell",
    "MGUCell",
    "Masks",
    "MinGRUCell",
    "MinLSTMCell",
    "RNNCell",
]
