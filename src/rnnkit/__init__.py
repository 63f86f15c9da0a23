"""rnnkit: recurrent neural networks as the textbooks describe them, on PyTorch."""

__version__ = "0.1.0"

from rnnkit import cells, decoding, functional, models  # noqa: E402
from rnnkit.errors import (  # noqa: E402
    RnnkitError,
    RnnkitFileError,
    RnnkitTypeError,
    RnnkitUnsupportedError,
    RnnkitValueError,
)
from rnnkit.layers import GRU, LSTM, MGU, RNN, JordanRNN, MinGRU, MinLSTM, Recurrent  # noqa: E402
from rnnkit.runs import load  # noqa: E402

__all__ = [
    "GRU",
    "LSTM",
    "MGU",
    "JordanRNN",
    "MinGRU",
    "MinLSTM",
    "RNN",
    "Recurrent",
    "RnnkitError",
    "RnnkitFileError",
    "RnnkitTypeError",
    "RnnkitUnsupportedError",
    "RnnkitValueError",
    "__version__",
    "cells",
    "decoding",
    "functional",
    "load",
    "models",
]
