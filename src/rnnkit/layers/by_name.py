"""The built-in cell families as layers, by the registry's names (`rnnkit.cells.registry.BUILTIN`):
what `rnnkit.Recurrent(name, ...)` and the models' `cell=` build for a built-in name."""

from __future__ import annotations

import re
from functools import partial

from torch import nn

from rnnkit.cells.registry import BUILTIN
from rnnkit.errors import RnnkitTypeError
from rnnkit.layers.minimal import MinGRU, MinLSTM
from rnnkit.layers.rnn import GRU, LSTM, MGU, RNN

LAYERS = dict(
    zip(
        BUILTIN,
        (
            partial(RNN, nonlinearity="tanh"),
            partial(RNN, nonlinearity="relu"),
            LSTM,
            GRU,
            partial(GRU, reset_after=False),
            MGU,
            partial(LSTM, layer_norm=True),
            partial(GRU, layer_norm=True),
            MinGRU,
            MinLSTM,
        ),
        strict=True,
    )
)


def builtin_layer(name: str, *args, **kwargs) -> nn.Module:
    """The layer of built-in cell `name`; an option its family does not take is a clear error."""
    try:
        return LAYERS[name](*args, **kwargs)
    except TypeError as e:
        option = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if option is None:
            raise RnnkitTypeError(f"cell {name!r}: {e}") from None
        raise RnnkitTypeError(f"cell {name!r} does not take {option[1]}") from None
