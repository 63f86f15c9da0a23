"""N-vs-N: a language model predicting the next token at every step.

    e_t = E[x_t]                      embedding, (B, T) -> (B, T, D); in training with
                                      embedding_dropout p, E's rows (whole tokens) dropped
                                      with probability p, the rest scaled by 1/(1-p)
    h_t, s_t = RNN(e_t, s_{t-1})      any recurrent layer of the library, stacked
    p(x_{t+1} | x_<=t) = softmax(W h_t + b)

The state s is explicit: forward takes and returns it, so truncated BPTT and streaming pass it
along and nothing is hidden in the module. With `tie_weights` the output matrix W is the
embedding matrix E (Press and Wolf 2017), which needs embedding_dim == hidden_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit._checks import check_positive_int
from rnnkit.cells.lstm import sample_loop
from rnnkit.cells.traced import tracing
from rnnkit.errors import RnnkitValueError
from rnnkit.models._inputs import check_token_ids
from rnnkit.models._recurrent import Regularized, recurrent_layer, regularizers


@dataclass(frozen=True)
class LanguageModelConfig(Regularized):
    vocab_size: int
    embedding_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0  # on the embeddings, between layers and on the outputs
    # whole rows of E, one mask a forward (AWD-LSTM's embedding dropout, Gal and Ghahramani 2016):
    # a dropped token is unknown at every place in the batch, which no element-wise dropout does
    embedding_dropout: float = 0.0
    tie_weights: bool = False
    impl: str = "fused"

    def __post_init__(self):
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers"):
            check_positive_int(name, getattr(self, name))
        for name in ("dropout", "embedding_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise RnnkitValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.tie_weights and self.embedding_dim != self.hidden_size:
            raise RnnkitValueError(
                "tie_weights needs embedding_dim == hidden_size (the output matrix is the "
                f"embedding matrix), got embedding_dim={self.embedding_dim}, hidden_size={self.hidden_size}"
            )


class LanguageModel(nn.Module):
    """forward(tokens (B, T) int, state=None, *, lengths=None) -> (logits (B, T, V), state)."""

    def __init__(self, config: LanguageModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        self.rnn = recurrent_layer(
            config.cell,
            config.embedding_dim,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout,
            impl=config.impl,
            **regularizers(config),
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor, state=None, *, lengths=None):
        check_token_ids("tokens", tokens, self.config.vocab_size)
        e = self.drop(self._embed(tokens))  # (B, T, D)
        h, state = self.rnn(e, state, lengths=lengths)  # (B, T, H)
        return self.head(self.drop(h)), state  # (B, T, V)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        p = self.config.embedding_dropout
        if not (self.training and p > 0):
            return self.embedding(tokens)
        weight = self.embedding.weight
        keep = torch.empty(weight.shape[0], 1, device=weight.device, dtype=weight.dtype).bernoulli_(1 - p)
        return F.embedding(tokens, weight * keep / (1 - p))

    def step(self, token: torch.Tensor, state=None):
        """One step for decoding: token (B,) -> (logits (B, V), state), through the layer's own
        single step (`Recurrent.step`: the cells' step, not the sequence machinery)."""
        if not isinstance(token, torch.Tensor) or token.dim() != 1 or not hasattr(self.rnn, "step"):
            logits, state = self(token[:, None] if isinstance(token, torch.Tensor) else token, state)
            return logits[:, 0], state
        if not tracing():
            self._check_step_ids(token)
        if self.training:
            h, state = self.rnn.step(self.drop(self._embed(token)), state)
            return self.head(self.drop(h)), state
        h, state = self.rnn.step(F.embedding(token, self.embedding.weight), state)
        return F.linear(h, self.head.weight, self.head.bias), state

    def _check_step_ids(self, token: torch.Tensor) -> None:
        """The ids of a decoding step, checked without a reduction (one or a few ids a step)."""
        V, ids = self.config.vocab_size, token.tolist()
        if ids and (min(ids) < 0 or max(ids) >= V) or token.is_floating_point() or token.dtype == torch.bool:
            check_token_ids("token", token[:, None], V)  # names what is wrong

    def compiled_sample(self, token: torch.Tensor, state, steps: int, temperature: float, generator):
        """`steps` tokens drawn after `token` (B,) from `state`, as `rnnkit.decoding.sample` draws
        them through `step` (the same tokens), in one compiled loop where the model allows it (eval,
        plain LSTM layers, CPU; `rnnkit.cells.lstm.sample_loop`); None elsewhere."""
        if self.training or not isinstance(token, torch.Tensor) or token.dim() != 1 or tracing():
            return None
        if not hasattr(self.rnn, "lstm_steps"):
            return None
        self._check_step_ids(token)
        weight = self.embedding.weight
        found = self.rnn.lstm_steps(F.embedding(token, weight), state)  # the first step's input
        if found is None:
            return None
        layers, states = found
        return sample_loop(
            token, states, weight, layers, self.head.weight, self.head.bias, steps, temperature, generator
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())
