"""Attention over a sequence of encoder states (keys h_1..h_S) for one query s per example:

    additive (Bahdanau et al. 2015):  e_j = v^T tanh(W_q s + W_k h_j)
    dot      (Luong et al. 2015):     e_j = s^T h_j                    (needs query and key sizes equal)
    general  (Luong et al. 2015):     e_j = s^T W h_j
    alpha_j = softmax_j(e_j) over the valid keys (padding gets weight 0), context = sum_j alpha_j h_j

Shapes: query (B, Q), keys (B, S, K), mask (B, S) True where valid -> (context (B, K), alpha (B, S)).
The key side of the score (W_k h_j + b_k, or W h_j) does not depend on the query: a decoder that
attends over the same keys at every step computes it once with `project(keys)` and passes it as
`projected` (on a CPU seq2seq model this was two thirds of a training step).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnkit._checks import check_choice
from rnnkit.errors import RnnkitValueError

KINDS = ("additive", "dot", "general")


class Attention(nn.Module):
    def __init__(self, kind: str, query_size: int, key_size: int, hidden_size: int | None = None):
        super().__init__()
        check_choice("attention", kind, KINDS)
        self.kind = kind
        if kind == "dot" and query_size != key_size:
            raise RnnkitValueError(
                f"dot attention needs query and key of one size, got query {query_size} and key {key_size}"
            )
        if kind == "additive":
            hidden = hidden_size or key_size
            self.w_q = nn.Linear(query_size, hidden, bias=False)
            self.w_k = nn.Linear(key_size, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)
        elif kind == "general":
            self.w = nn.Linear(key_size, query_size, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        """The key side of the score: (B, S, K) -> (B, S, hidden) additive, (B, S, Q) general,
        the keys themselves for dot."""
        if self.kind == "additive":
            return self.w_k(keys)
        return self.w(keys) if self.kind == "general" else keys

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        projected: torch.Tensor | None = None,
    ):
        projected = self.project(keys) if projected is None else projected
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_q(query)[:, None] + projected))[..., 0]  # (B, S)
        else:
            scores = torch.bmm(projected, query[..., None])[..., 0]  # (B, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = scores.softmax(-1)  # (B, S)
        return torch.bmm(alpha[:, None], keys)[:, 0], alpha  # (B, K), (B, S)
