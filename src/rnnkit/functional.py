"""The public recurrent kernels: one layer, one direction, time-major (see each cell family)."""

from rnnkit.cells.elman import rnn_relu, rnn_tanh

__all__ = ["rnn_relu", "rnn_tanh"]
