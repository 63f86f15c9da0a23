"""The recurrent layers a model can be built on, by name: a plain dict, as STYLE.md asks."""

from __future__ import annotations

from functools import partial

from torch import nn

from rnnkit._checks import check_choice
from rnnkit.layers import GRU, LSTM, MGU, RNN

CELLS = {
    "rnn": partial(RNN, nonlinearity="tanh"),
    "rnn_relu": partial(RNN, nonlinearity="relu"),
    "lstm": LSTM,
    "gru": GRU,
    "gru_reset_before": partial(GRU, reset_after=False),
    "mgu": MGU,
}


def recurrent_layer(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    bidirectional: bool = False,
    impl: str = "fused",
) -> nn.Module:
    """A batch-first sequence layer of the named cell family."""
    check_choice("cell", cell, tuple(CELLS))
    return CELLS[cell](
        input_size,
        hidden_size,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,
        bidirectional=bidirectional,
        batch_first=True,
        impl=impl,
    )
