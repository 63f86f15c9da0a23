"""Cell families: each file holds its step equations, its fused whole-sequence kernel with the
hand-derived BPTT backward, and its single-step module (drop-in for torch's cells)."""

from rnnkit.cells.elman import RNNCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.mgu import MGUCell

__all__ = ["GRUCell", "LSTMCell", "MGUCell", "RNNCell"]
