"""The public recurrent kernels: one layer, one direction, time-major. Each runs the whole
sequence in one fused kernel with a hand-derived BPTT backward (`impl="fused"`), or the step
equations under autograd (`impl="loop"`). The equations are in each cell family's module."""

from rnnkit.cells.elman import rnn_relu, rnn_tanh
from rnnkit.cells.gru import gru
from rnnkit.cells.jordan import jordan, jordan_teacher_forced
from rnnkit.cells.ln_gru import ln_gru
from rnnkit.cells.ln_lstm import ln_lstm
from rnnkit.cells.lstm import lstm
from rnnkit.cells.mgu import mgu
from rnnkit.cells.minimal import min_rnn
from rnnkit.cells.scan import linear_scan, log_linear_scan

__all__ = [
    "gru",
    "jordan",
    "jordan_teacher_forced",
    "linear_scan",
    "ln_gru",
    "ln_lstm",
    "log_linear_scan",
    "lstm",
    "mgu",
    "min_rnn",
    "rnn_relu",
    "rnn_tanh",
]
