"""1-vs-N: a sequence generated from one conditioning vector c (image features, a class, a
colour), in the two ways the texts describe:

  feed="init":        s_0 = tanh(W_s c + b_s) per layer (and per state, for the LSTM); the
                      decoder then runs on the tokens alone: h_t = RNN(E[y_{t-1}], h_{t-1})
  feed="every_step":  s_0 = 0, and c is part of every input: h_t = RNN([E[y_{t-1}]; c], h_{t-1})
  p(y_t | y_<t, c) = softmax(W h_t + b)

The decoding state is (recurrent state, c as (1, B, C)), so `rnnkit.decoding` (which reorders
states along dimension 1) carries c through beam search with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnnkit._checks import check_choice, check_positive_int, check_tensor, shape_str
from rnnkit.errors import RnnkitValueError
from rnnkit.models._inputs import InputEncoder
from rnnkit.models._recurrent import Regularized, num_states, recurrent_layer, regularizers

FEEDS = ("init", "every_step")


@dataclass(frozen=True)
class VectorToSequenceConfig(Regularized):
    vocab_size: int
    cond_size: int
    feed: str = "init"
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0
    impl: str = "fused"

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size)
        check_positive_int("cond_size", self.cond_size)
        check_choice("feed", self.feed, FEEDS)
        if not 0 <= self.dropout < 1:
            raise RnnkitValueError(f"dropout must be in [0, 1), got {self.dropout}")


class VectorToSequence(nn.Module):
    """forward(cond (B, C), tokens (B, T), state=None) -> (logits (B, T, V), state): teacher
    forced, tokens being the decoder inputs (start symbol first); step(token (B,), state) for
    `rnnkit.decoding`, starting from initial_state(cond)."""

    def __init__(self, config: VectorToSequenceConfig):
        super().__init__()
        self.config = config
        self.tokens = InputEncoder(
            vocab_size=config.vocab_size, input_size=None, embedding_dim=config.embedding_dim
        )
        every_step = config.feed == "every_step"
        input_size = config.embedding_dim + (config.cond_size if every_step else 0)
        self.rnn = recurrent_layer(
            config.cell,
            input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout,
            impl=config.impl,
            **regularizers(config),
        )
        self.num_states = num_states(self.rnn)
        if not every_step:
            L, H = config.num_layers, config.hidden_size
            self.init = nn.ModuleList(nn.Linear(config.cond_size, L * H) for _ in range(self.num_states))
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def initial_state(self, cond: torch.Tensor):
        check_tensor("cond", cond, ndim=2)
        if cond.shape[1] != self.config.cond_size:
            raise RnnkitValueError(
                f"cond must have {self.config.cond_size} features (cond_size), got shape {shape_str(cond)}"
            )
        B, L, H = cond.shape[0], self.config.num_layers, self.config.hidden_size
        if self.config.feed == "init":
            states = [torch.tanh(lin(cond)).view(B, L, H).transpose(0, 1).contiguous() for lin in self.init]
        else:
            states = [cond.new_zeros(L, B, H) for _ in range(self.num_states)]
        rnn_state = tuple(states) if self.num_states == 2 else states[0]
        return rnn_state, cond[None]  # c rides along as (1, B, C)

    def forward(self, cond: torch.Tensor, tokens: torch.Tensor, state=None):
        rnn_state, c = self.initial_state(cond) if state is None else state
        x = self.drop(self.tokens(tokens))  # (B, T, E)
        if self.config.feed == "every_step":
            x = torch.cat([x, c[0][:, None].expand(-1, x.shape[1], -1)], dim=-1)  # (B, T, E + C)
        h, rnn_state = self.rnn(x, rnn_state)  # (B, T, H)
        return self.head(self.drop(h)), (rnn_state, c)

    def step(self, token: torch.Tensor, state):
        """One decoding step: token (B,) -> (logits (B, V), state)."""
        rnn_state, c = state
        logits, state = self(c[0], token[:, None], state)
        return logits[:, 0], state
