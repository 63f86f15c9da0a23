"""The public recurrent kernels: one layer, one direction, time-major. Each runs the whole
sequence in one fused kernel with a hand-derived BPTT backward (`impl="fused"`), or the step
equations under autograd (`impl="loop"`). The equations are in each cell family's module."""

from rnnkit.cells.elman import rnn_relu, rnn_tanh
from rnnkit.cells.gru import gru
from rnnkit.cells.lstm import lstm
from rnnkit.cells.mgu import mgu

__all__ = ["gru", "lstm", "mgu", "rnn_relu", "rnn_tanh"]
