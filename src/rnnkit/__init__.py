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


def __getattr__(name: str):
    # rnnkit.Run and rnnkit.train on first use: they rebuild tasks, whose data libraries are slow
    # to import
    if name == "Run":
        from rnnkit.trained import Run

        return Run
    if name == "train":
        from rnnkit.cli import train

        return train
    raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")


__all__ = [
    "GRU",
    "LSTM",
    "MGU",
    "JordanRNN",
    "MinGRU",
    "MinLSTM",
    "RNN",
    "Recurrent",
    "Run",
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
    "train",
]
