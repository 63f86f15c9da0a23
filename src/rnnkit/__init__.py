"""rnnkit: recurrent neural networks as the textbooks describe them, on PyTorch.

The public names are imported on first use (PEP 562), so that `import rnnkit` alone, and the
command's `--version` and `--help`, do not wait for torch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from rnnkit.errors import (  # noqa: E402 (errors import nothing heavy)
    RnnkitError,
    RnnkitFileError,
    RnnkitTypeError,
    RnnkitUnsupportedError,
    RnnkitValueError,
)

# name -> the module that defines it
_LAZY = {
    **dict.fromkeys(
        ("GRU", "LSTM", "MGU", "RNN", "JordanRNN", "MinGRU", "MinLSTM", "Recurrent"), "rnnkit.layers"
    ),
    "load": "rnnkit.runs",
    "Run": "rnnkit.trained",
    "train": "rnnkit.cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name.isidentifier() and not name.startswith("__"):  # a subpackage: rnnkit.cells, ...
        try:
            value = importlib.import_module(f"rnnkit.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"rnnkit.{name}":
                raise
            raise AttributeError(f"module 'rnnkit' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
