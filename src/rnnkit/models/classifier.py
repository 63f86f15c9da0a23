"""N-vs-1: one label (or one number) for a whole sequence.

h_t = RNN(x_t, h_{t-1})                                      (B, T, D*H), D directions
s   = pool(h_1..h_T over the valid steps)                    (B, D*H)
      last:      the final state of the top layer (both directions concatenated)
      mean, max: over the valid steps
      attention: a_t = softmax_t(v^T tanh(W h_t + b)), s = sum_t a_t h_t
                 (attention pooling as in Yang et al. 2016; padding gets weight 0)
y   = U s + c                                                (B, num_classes) logits, or
                                                             (B,) for regression
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnkit._checks import check_choice, check_positive_int
from rnnkit.errors import RnnkitValueError
from rnnkit.models._inputs import encoder_and_layer, valid_mask
from rnnkit.models._recurrent import Regularized

POOLINGS = ("last", "mean", "max", "attention")


@dataclass(frozen=True)
class SequenceClassifierConfig(Regularized):
    num_classes: int | None  # None: a regression head, one float per sequence
    vocab_size: int | None = None  # token ids in, through an embedding ...
    input_size: int | None = None  # ... or feature vectors in
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional: bool = False
    pooling: str = "last"
    dropout: float = 0.0
    impl: str = "fused"

    def __post_init__(self):
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        check_choice("pooling", self.pooling, POOLINGS)
        if not 0 <= self.dropout < 1:
            raise RnnkitValueError(f"dropout must be in [0, 1), got {self.dropout}")


class SequenceClassifier(nn.Module):
    """forward(inputs (B, T) ids or (B, T, I) features, *, lengths=None, return_weights=False)
    -> logits (B, num_classes), or (B,) for regression; with return_weights=True also the
    attention pooling weights (B, T) (None for the other poolings)."""

    def __init__(self, config: SequenceClassifierConfig):
        super().__init__()
        self.config = config
        self.encoder, self.rnn = encoder_and_layer(config)
        width = (2 if config.bidirectional else 1) * config.hidden_size
        if config.pooling == "attention":
            self.score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes or 1)

    def forward(self, inputs: torch.Tensor, *, lengths=None, return_weights: bool = False):
        h, state = self.rnn(self.drop(self.encoder(inputs)), lengths=lengths)  # (B, T, D*H)
        B, T, _ = h.shape
        mask = valid_mask(lengths, B, T, h.device)  # (B, T)
        weights = None
        pooling = self.config.pooling
        if pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # (L*D, B, H)
            D = 2 if self.config.bidirectional else 1
            pooled = torch.cat(list(h_n[-D:]), dim=-1)  # (B, D*H)
        elif pooling == "mean":
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        elif pooling == "max":
            pooled = h.masked_fill(~mask[..., None], float("-inf")).amax(1)
        else:
            scores = self.score(h)[..., 0].masked_fill(~mask, float("-inf"))  # (B, T)
            weights = scores.softmax(-1)
            pooled = (weights[..., None] * h).sum(1)
        out = self.head(self.drop(pooled))
        out = out if self.config.num_classes else out[:, 0]
        return (out, weights) if return_weights else out
