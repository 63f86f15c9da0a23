"""N-vs-M: an encoder-decoder (Sutskever et al. 2014, Cho et al. 2014) with optional attention.

Encoder: h_1..h_S = RNN_enc(E_src[x]) (bidirectional optional; K = directions * H per state).
The decoder starts from the encoder's final state (through s_0 = tanh(W [h_fwd; h_bwd]) when
the encoder is bidirectional) and reads the previous target token y_{t-1}:

  attention="none", context="init":        s_t = RNN_dec(E_tgt[y_{t-1}], s_{t-1}),  o_t = s_t
  attention="none", context="every_step":  the encoder summary c (its final top-layer state) is
                                           also an input at every step: [E_tgt[y_{t-1}]; c]
  attention="additive" | "dot" | "general" (Luong et al. 2015, with the score of Bahdanau et al.
  2015 for "additive"): s_t = RNN_dec([E_tgt[y_{t-1}]; o_{t-1}], s_{t-1}) (input feeding: the
  previous attentional vector o_{t-1} is fed back, zeros at t = 1; off with input_feeding=False),
  (ctx_t, alpha_t) = attention(s_t, h_1..h_S), o_t = tanh(W_c [s_t; ctx_t])
  p(y_t | y_<t, x) = softmax(W_o o_t + b_o)

Training feeds y_{t-1} from the truth with probability `teacher_forcing` per example and step,
else the model's own previous prediction (scheduled sampling, Bengio et al. 2015, with the decay
schedules of `teacher_forcing_probability`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rnnkit._checks import check_choice, check_positive_int
from rnnkit.attention import Attention
from rnnkit.errors import RnnkitValueError
from rnnkit.models._inputs import InputEncoder, valid_mask
from rnnkit.models._recurrent import Regularized, num_states, recurrent_layer, regularizers

ATTENTIONS = ("none", "additive", "dot", "general")
CONTEXTS = ("init", "every_step")
SCHEDULES = ("constant", "linear", "exponential", "inverse_sigmoid")


@dataclass(frozen=True)
class Seq2SeqConfig(Regularized):
    src_vocab_size: int
    tgt_vocab_size: int
    embedding_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    bidirectional_encoder: bool = False
    attention: str = "none"
    context: str = "init"  # without attention: how the decoder sees the encoder
    input_feeding: bool = True  # with attention
    dropout: float = 0.0
    impl: str = "fused"

    def __post_init__(self):
        check_positive_int("src_vocab_size", self.src_vocab_size)
        check_positive_int("tgt_vocab_size", self.tgt_vocab_size)
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("context", self.context, CONTEXTS)
        if not 0 <= self.dropout < 1:
            raise RnnkitValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Seq2Seq(nn.Module):
    """forward(src (B, S), tgt_in (B, T), *, src_lengths=None, teacher_forcing=1.0,
    generator=None, return_attention=False) -> logits (B, T, V) (and alpha (B, T, S));
    initial_state(src, src_lengths) and step(token, state) drive `rnnkit.decoding`."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        c = config
        H, D = c.hidden_size, 2 if c.bidirectional_encoder else 1
        self.src = InputEncoder(vocab_size=c.src_vocab_size, input_size=None, embedding_dim=c.embedding_dim)
        self.tgt = InputEncoder(vocab_size=c.tgt_vocab_size, input_size=None, embedding_dim=c.embedding_dim)
        self.encoder = recurrent_layer(
            c.cell,
            c.embedding_dim,
            H,
            num_layers=c.num_layers,
            dropout=c.dropout,
            bidirectional=c.bidirectional_encoder,
            impl=c.impl,
            **regularizers(c),
        )
        self.num_states = num_states(self.encoder)
        self.bridge = nn.ModuleList(nn.Linear(D * H, H) for _ in range(self.num_states)) if D == 2 else None
        self.attends = c.attention != "none"
        extra = (H if c.input_feeding else 0) if self.attends else (D * H if c.context == "every_step" else 0)
        self.decoder = recurrent_layer(
            c.cell,
            c.embedding_dim + extra,
            H,
            num_layers=c.num_layers,
            dropout=c.dropout,
            impl=c.impl,
            **regularizers(c),
        )
        if self.attends:
            self.attention = Attention(c.attention, H, D * H)
            self.combine = nn.Linear(H + D * H, H)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(H, c.tgt_vocab_size)

    def initial_state(self, src: torch.Tensor, src_lengths=None):
        """Encode src; the decoding state (every tensor with the batch in dimension 1):
        (decoder state, o_{t-1} (1, B, H), keys (S, B, K), mask (S, B), summary (1, B, K),
        the keys' side of the attention score (S, B, P), computed once per sequence)."""
        keys, enc_state = self.encoder(self.drop(self.src(src)), lengths=src_lengths)  # (B, S, K)
        B, S, _ = keys.shape
        L, H = self.config.num_layers, self.config.hidden_size
        states = list(enc_state) if isinstance(enc_state, tuple) else [enc_state]  # (L*D, B, H)
        if self.bridge is not None:  # [forward; backward] of each layer -> the decoder's layer
            states = [
                torch.tanh(lin(s.view(L, 2, B, H).transpose(1, 2).reshape(L, B, 2 * H)))
                for lin, s in zip(self.bridge, states)
            ]
        top = enc_state[0] if isinstance(enc_state, tuple) else enc_state
        D = 2 if self.config.bidirectional_encoder else 1
        summary = torch.cat(list(top[-D:]), dim=-1)[None]  # (1, B, K)
        dec_state = tuple(states) if self.num_states == 2 else states[0]
        mask = valid_mask(src_lengths, B, S, keys.device)
        projected = self.attention.project(keys).transpose(0, 1) if self.attends else keys.new_zeros(S, B, 0)
        return dec_state, keys.new_zeros(1, B, H), keys.transpose(0, 1), mask.t(), summary, projected

    def _step(self, token: torch.Tensor, state):
        dec_state, feed, keys, mask, summary, projected = state
        parts = [self.drop(self.tgt(token[:, None]))]  # (B, 1, E)
        if self.attends and self.config.input_feeding:
            parts.append(feed[0][:, None])
        elif not self.attends and self.config.context == "every_step":
            parts.append(summary[0][:, None])
        h, dec_state = self.decoder(torch.cat(parts, dim=-1), dec_state)
        out, alpha = h[:, 0], None  # (B, H)
        if self.attends:
            ctx, alpha = self.attention(
                out, keys.transpose(0, 1), mask.t(), projected=projected.transpose(0, 1)
            )
            out = torch.tanh(self.combine(torch.cat([out, ctx], dim=-1)))
        return self.head(self.drop(out)), (dec_state, out[None], keys, mask, summary, projected), alpha

    def step(self, token: torch.Tensor, state):
        """One decoding step: token (B,) -> (logits (B, V), state)."""
        logits, state, _ = self._step(token, state)
        return logits, state

    def forward(
        self,
        src,
        tgt_in,
        *,
        src_lengths=None,
        teacher_forcing: float = 1.0,
        generator: torch.Generator | None = None,
        return_attention: bool = False,
    ):
        if not 0 <= teacher_forcing <= 1:
            raise RnnkitValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing}")
        state = self.initial_state(src, src_lengths)
        T = tgt_in.shape[1]
        logits, alphas, token = [], [], tgt_in[:, 0]
        for t in range(T):
            if t and teacher_forcing < 1:  # scheduled sampling: truth with probability p
                truth = torch.rand(token.shape[0], generator=generator, device=token.device) < teacher_forcing
                token = torch.where(truth, tgt_in[:, t], logits[-1].argmax(-1))
            elif t:
                token = tgt_in[:, t]
            out, state, alpha = self._step(token, state)
            logits.append(out)
            alphas.append(alpha)
        logits = torch.stack(logits, dim=1)  # (B, T, V)
        if return_attention:
            return logits, (torch.stack(alphas, dim=1) if self.attends else None)  # (B, T, S)
        return logits


def teacher_forcing_probability(
    schedule: str, step: int, *, k: float = 1.0, c: float = 0.0, minimum: float = 0.0
) -> float:
    """The probability of feeding the truth at training step i (Bengio et al. 2015, section 2.4):
    constant k; linear max(minimum, k - c i); exponential k^i (k < 1); inverse sigmoid
    k / (k + exp(i / k)) (k >= 1)."""
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return k
    if schedule == "linear":
        return max(minimum, k - c * step)
    if schedule == "exponential":
        return max(minimum, k**step)
    return max(minimum, k / (k + math.exp(step / k)))


@torch.no_grad()
def exposure_gap(model: Seq2Seq, src, tgt_in, tgt_out, *, src_lengths=None, ignore_index: int = -100) -> dict:
    """Token accuracy when fed the truth (teacher forced) and when fed its own predictions (free
    running), and their difference: the exposure bias that scheduled sampling targets."""
    valid = tgt_out != ignore_index
    result = {}
    for name, p in (("teacher_forced", 1.0), ("free_running", 0.0)):
        pred = model(src, tgt_in, src_lengths=src_lengths, teacher_forcing=p).argmax(-1)
        result[name] = (pred[valid] == tgt_out[valid]).float().mean().item()
    result["gap"] = result["teacher_forced"] - result["free_running"]
    return result
