"""The built-in cell families as layers, by the registry's names (`rnnkit.cells.registry.BUILTIN`):
what `rnnkit.Recurrent(name, ...)` and the models' `cell=` build for a built-in name."""

from __future__ import annotations

import inspect
import re
from functools import partial

from torch import nn

from rnnkit.cells.elman import ElmanReluUnit, ElmanUnit
from rnnkit.cells.gru import GRUResetBeforeUnit, GRUUnit
from rnnkit.cells.ln_gru import LNGRUUnit
from rnnkit.cells.ln_lstm import LNLSTMUnit
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.mgu import MGUUnit
from rnnkit.cells.minimal import MinGRUUnit, MinLSTMUnit
from rnnkit.cells.registry import BUILTIN
from rnnkit.errors import RnnkitTypeError
from rnnkit.layers.minimal import MinGRU, MinLSTM
from rnnkit.layers.rnn import GRU, LSTM, MGU, RNN

# Each built-in unit's torch-style layer (its torch signature and parameter names).
_LAYER_OF_UNIT = {
    ElmanUnit: partial(RNN, nonlinearity="tanh"),
    ElmanReluUnit: partial(RNN, nonlinearity="relu"),
    LSTMUnit: LSTM,
    GRUUnit: GRU,
    GRUResetBeforeUnit: partial(GRU, reset_after=False),
    MGUUnit: MGU,
    LNLSTMUnit: partial(LSTM, layer_norm=True),
    LNGRUUnit: partial(GRU, layer_norm=True),
    MinGRUUnit: MinGRU,
    MinLSTMUnit: MinLSTM,
}
LAYERS = {name: _LAYER_OF_UNIT[unit] for name, unit in BUILTIN.items()}


def takes(name: str, option: str) -> bool:
    """Whether the layer of built-in cell `name` takes the keyword `option` (the minimal cells'
    layers, a parallel scan, take no `impl`)."""
    factory = LAYERS[name]
    base = factory.func if isinstance(factory, partial) else factory
    return option in inspect.signature(base).parameters


def builtin_layer(name: str, *args, _layer=None, _preset=None, **kwargs) -> nn.Module:
    """The layer of built-in cell `name`; an option its family does not take is a clear error."""
    try:
        if _layer is not None:
            return _layer(*args, **{**_preset, **kwargs})
        return LAYERS[name](*args, **kwargs)
    except TypeError as e:
        option = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if option is None:
            raise RnnkitTypeError(f"cell {name!r}: {e}") from None
        raise RnnkitTypeError(f"cell {name!r} does not take {option[1]}") from None


class _TupleStates:
    """`rnnkit.Recurrent`'s calling convention over a built-in layer: hx and the final state are
    tuples with one tensor per state, also for the families whose own layer takes and returns a
    bare tensor (torch's convention for RNN and GRU)."""

    def _given_states(self, hx):
        if isinstance(hx, (tuple, list)) and len(hx) == 1:
            hx = hx[0]
        return super()._given_states(hx)

    def _returned_states(self, states: list) -> tuple:
        return tuple(states)

    def step(self, input, hx=None):
        if isinstance(hx, (tuple, list)) and len(hx) == 1:
            hx = hx[0]  # a family whose own step takes a bare tensor (the minimal layers)
        y, state = super().step(input, hx)
        return y, state if isinstance(state, tuple) else (state,)


_TUPLE_CLASSES: dict[type, type] = {}


def recurrent_of(name: str, *args, **kwargs) -> nn.Module:
    """What `rnnkit.Recurrent(name, ...)` is for a built-in name: the family's layer (its
    parameters, names and kernels), called with states as tuples."""
    factory = LAYERS[name]
    base, preset = (factory.func, factory.keywords) if isinstance(factory, partial) else (factory, {})
    if base not in _TUPLE_CLASSES:
        _TUPLE_CLASSES[base] = type(base.__name__, (_TupleStates, base), {"__module__": base.__module__})
    return builtin_layer(name, *args, _layer=_TUPLE_CLASSES[base], _preset=preset, **kwargs)
