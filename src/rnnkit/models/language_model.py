"""N-vs-N: a language model predicting the next token at every step.

    e_t = E[x_t]                      embedding, (B, T) -> (B, T, D); in training with
                                      embedding_dropout p, E's rows (whole tokens) dropped
                                      with probability p, the rest scaled by 1/(1-p)
    h_t, s_t = RNN(e_t, s_{t-1})      any recurrent layer of the library, stacked
    p(x_{t+1} | x_<=t) = softmax(W h_t + b)

With `cache_size` > 0, in evaluation (not in training, whose loss is the recurrent model's
alone), p is mixed with a continuous cache over the last cache_size positions' h
(rnnkit.models._cache), the logits returned are log p, and the state ends with the cache's
memory: (*the layer's states, keys (m, B, H), ids (m, B, 1)). The cache's sharpness and share
are the buffers `cache_theta` and `cache_lambda` (saved with the weights; the config gives their
first values), so a task can fit them to held-out text after training (charlm does).

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
from rnnkit.errors import RnnkitUnsupportedError, RnnkitValueError
from rnnkit.models._cache import cache_logits, empty_memory
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
    # the continuous cache, in evaluation: positions kept (0: none); the first values of its
    # sharpness and its share of p (buffers of the same names, which a task may fit)
    cache_size: int = 0
    cache_theta: float = 20.0
    cache_lambda: float = 0.2

    def __post_init__(self):
        for name in ("vocab_size", "embedding_dim", "hidden_size", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise RnnkitValueError(f"cache_size must be an integer >= 0, got {self.cache_size!r}")
        if not (isinstance(self.cache_theta, (int, float)) and 0 <= self.cache_theta < float("inf")):
            raise RnnkitValueError(f"cache_theta must be a finite number >= 0, got {self.cache_theta!r}")
        if not (isinstance(self.cache_lambda, (int, float)) and 0 <= self.cache_lambda <= 1):
            raise RnnkitValueError(f"cache_lambda must be in [0, 1], got {self.cache_lambda!r}")
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
        if config.cache_size:
            self.register_buffer("cache_theta", torch.tensor(float(config.cache_theta)))
            self.register_buffer("cache_lambda", torch.tensor(float(config.cache_lambda)))

    def forward(self, tokens: torch.Tensor, state=None, *, lengths=None):
        check_token_ids("tokens", tokens, self.config.vocab_size)
        e = self.drop(self._embed(tokens))  # (B, T, D)
        if not self.config.cache_size:
            h, state = self.rnn(e, state, lengths=lengths)  # (B, T, H)
            return self.head(self.drop(h)), state  # (B, T, V)
        state, memory = self._split(state, tokens.shape[0], e)
        if lengths is not None and not self.training:
            raise RnnkitUnsupportedError(
                "lengths: a language model with a cache (cache_size > 0) reads whole sequences; "
                "its memory would keep the padding"
            )
        h, state = self.rnn(e, state, lengths=lengths)  # (B, T, H)
        logits = self.head(self.drop(h))  # (B, T, V)
        if self.training:
            return logits, self._join(state, memory)
        logits, *memory = self._cache(logits, h, tokens, *memory)
        return logits, self._join(state, memory)

    def _cache(self, logits, h, tokens, keys, ids):
        size, theta, lam = self.config.cache_size, self.cache_theta, self.cache_lambda
        return cache_logits(logits, h, tokens, keys, ids, size=size, theta=theta, lam=lam)

    def _split(self, state, batch: int, like: torch.Tensor):
        """A cache model's state -> (the layer's state, (keys, ids)); None: zeros and an empty memory."""
        if state is None:  # in evaluation all cache_size slots, empty, as the exported graph takes
            # them; training keeps no memory (a zero-length one: nothing allocated a step)
            size = 0 if self.training else self.config.cache_size
            return None, empty_memory(batch, self.config.hidden_size, like=like, size=size)
        if not isinstance(state, (tuple, list)) or len(state) < 3:
            raise RnnkitValueError(
                "state: a language model with a cache takes (*the layer's states, cache keys, cache "
                f"ids), got {type(state).__name__} of {len(state) if isinstance(state, (tuple, list)) else 1}"
            )
        keys, ids = state[-2:]
        if not tracing():
            self._check_memory(keys, ids, batch)
        layer = tuple(state[:-2])
        return (layer[0] if len(layer) == 1 else layer), (keys, ids)

    def _check_memory(self, keys, ids, batch: int) -> None:
        """The cache's memory as the model returns it: keys (m, B, H) and ids (m, B, 1), the same m."""
        H = self.config.hidden_size
        ok = (
            isinstance(keys, torch.Tensor)
            and isinstance(ids, torch.Tensor)
            and keys.dim() == 3
            and ids.dim() == 3
            and keys.shape[1:] == (batch, H)
            and ids.shape == (keys.shape[0], batch, 1)
        )
        if not ok:
            shapes = [
                tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (keys, ids)
            ]
            raise RnnkitValueError(
                f"state: the cache's memory must be keys (m, {batch}, {H}) and ids (m, {batch}, 1) "
                f"for a batch of {batch}, got {shapes[0]} and {shapes[1]}"
            )

    @staticmethod
    def _join(state, memory) -> tuple:
        return (*(state if isinstance(state, tuple) else (state,)), *memory)

    def default_states(self, batch: int) -> list[torch.Tensor]:
        """The states a sequence starts from, batch second: the layer's (zeros, or the learned
        initial state), then with a cache its memory of `cache_size` empty slots (zeros)."""
        states = list(self.rnn.default_states(batch))
        if self.config.cache_size:
            states += empty_memory(
                batch, self.config.hidden_size, like=states[0], size=self.config.cache_size
            )
        return states

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
        if self.config.cache_size:
            state, memory = self._split(state, token.shape[0], self.embedding.weight)
        if self.training:
            h, state = self.rnn.step(self.drop(self._embed(token)), state)
            logits = self.head(self.drop(h))
            return (logits, self._join(state, memory)) if self.config.cache_size else (logits, state)
        h, state = self.rnn.step(F.embedding(token, self.embedding.weight), state)
        logits = F.linear(h, self.head.weight, self.head.bias)
        if not self.config.cache_size:
            return logits, state
        logits, *memory = self._cache(logits[:, None], h[:, None], token[:, None], *memory)
        return logits[:, 0], self._join(state, memory)

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
        if self.config.cache_size:  # the loop knows the recurrent layers only
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
