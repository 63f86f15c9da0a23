"""The recurrent layers a model can be built on, by cell name: a built-in family's layer, or
`rnnkit.Recurrent` over a cell a user registered (`rnnkit.cells.register`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rnnkit.cells.registry import BUILTIN, available, registered
from rnnkit.errors import RnnkitValueError
from rnnkit.layers.by_name import builtin_layer, takes
from rnnkit.layers.generic import Recurrent

REGULARIZERS = ("zoneout", "recurrent_dropout", "weight_dropout", "learn_initial_state")


@dataclass(frozen=True, kw_only=True)
class Regularized:
    """The regularisers of a model's recurrent layers, as the layers take them (rates in [0, 1),
    checked there; see rnnkit.cells._regularize), all off by default. A model config inherits them."""

    zoneout: float = 0.0
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    learn_initial_state: bool = False


def regularizers(config) -> dict:
    """The regularisers a config (a model's or a task's) turns on, as layer keyword arguments:
    only those that are on, so a cell family without them (min_gru, min_lstm) builds when they
    are off and says which one it lacks when one is on."""
    return {name: getattr(config, name) for name in REGULARIZERS if getattr(config, name)}


def drops_weights(cell: str) -> bool:
    """Whether the named cell's layer takes weight_dropout: it has recurrent weights W_hh to drop
    (the minimal cells, a parallel scan over h_{t-1}-free gates, have none)."""
    if cell in BUILTIN:
        return takes(cell, "weight_dropout")
    found = registered(cell)
    return found is not None and bool(tuple(getattr(found, "recurrent_weights", ()) or ()))


def recurrent_layer(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    bidirectional: bool = False,
    impl: str = "fused",
    **regularizers,
) -> nn.Module:
    """A batch-first sequence layer of the named cell, with the regularisers given (zoneout,
    recurrent_dropout, weight_dropout, learn_initial_state)."""
    options = {
        "num_layers": num_layers,
        "dropout": dropout if num_layers > 1 else 0.0,
        "bidirectional": bidirectional,
        "batch_first": True,
        **regularizers,
    }
    if cell in BUILTIN:
        return builtin_layer(
            cell, input_size, hidden_size, **options, **({"impl": impl} if takes(cell, "impl") else {})
        )
    if registered(cell) is None:
        raise RnnkitValueError(f"cell must be one of {', '.join(available())}, got {cell!r}")
    return Recurrent(cell, input_size, hidden_size, impl=impl, **options)


def num_states(layer: nn.Module) -> int:
    """How many state tensors a layer carries (the LSTM's h and c: 2), asked of the layer."""
    return getattr(layer, "num_states", 1)
