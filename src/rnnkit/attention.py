"""Attention over a sequence of encoder states (keys h_1..h_S) for one query s per example:

    additive (Bahdanau et al. 2015):  e_j = v^T tanh(W_q s + W_k h_j)
    dot      (Luong et al. 2015):     e_j = s^T h_j                    (needs query and key sizes equal)
    general  (Luong et al. 2015):     e_j = s^T W h_j
    alpha_j = softmax_j(e_j) over the valid keys (padding gets weight 0), context = sum_j alpha_j h_j

Shapes: query (B, Q), keys (B, S, K), mask (B, S) True where valid -> (context (B, K), alpha (B, S)).
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

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None):
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_q(query)[:, None] + self.w_k(keys)))[..., 0]  # (B, S)
        elif self.kind == "dot":
            scores = torch.bmm(keys, query[..., None])[..., 0]  # (B, S)
        else:
            scores = torch.bmm(self.w(keys), query[..., None])[..., 0]  # (B, S)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = scores.softmax(-1)  # (B, S)
        return torch.bmm(alpha[:, None], keys)[:, 0], alpha  # (B, K), (B, S)
