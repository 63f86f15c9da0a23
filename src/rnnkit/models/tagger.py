"""N-vs-N: a label for every step (tagging, per-step regression).

h_t = RNN(x_t, h_{t-1})           any recurrent layer of the library, stacked, optionally
                                  bidirectional (then h_t sees the whole sequence)
y_t = W h_t + b                   (B, T, num_tags) logits
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnkit._checks import check_positive_int
from rnnkit.errors import RnnkitValueError
from rnnkit.models._inputs import encoder_and_layer
from rnnkit.models._recurrent import Regularized


@dataclass(frozen=True)
class SequenceTaggerConfig(Regularized):
    num_tags: int
    vocab_size: int | None = None  # token ids in, through an embedding ...
    input_size: int | None = None  # ... or feature vectors in
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    dropout: float = 0.0
    impl: str = "fused"

    def __post_init__(self):
        check_positive_int("num_tags", self.num_tags)
        if not 0 <= self.dropout < 1:
            raise RnnkitValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SequenceTagger(nn.Module):
    """forward(inputs (B, T) ids or (B, T, I) features, state=None, *, lengths=None) ->
    (logits (B, T, num_tags), state); logits past each length are those of a zero state."""

    def __init__(self, config: SequenceTaggerConfig):
        super().__init__()
        self.config = config
        self.encoder, self.rnn = encoder_and_layer(config)
        self.drop = nn.Dropout(config.dropout)
        directions = 2 if config.bidirectional else 1
        self.head = nn.Linear(directions * config.hidden_size, config.num_tags)

    def forward(self, inputs: torch.Tensor, state=None, *, lengths=None):
        h, state = self.rnn(self.drop(self.encoder(inputs)), state, lengths=lengths)  # (B, T, D*H)
        return self.head(self.drop(h)), state
