"""A continuous cache (Grave, Joulin and Usunier 2017): a language model that copies from what it
has just read.

A recurrent model keeps what it read in a fixed-size state and forgets the exact letters of a
line a few lines back; a compressor (xz) copies them. The cache gives the model that copy: it
keeps the last `size` positions' outputs as keys, each with the token that followed it, and puts
probability on the tokens that followed contexts like the present one:

    k_t = h_t / ||h_t||                                   (B, T, H) key (and query) of position t
    a_tj = softmax_j(theta * k_t . k_j),  t - size <= j < t      (B, T, size) over earlier positions
    p_cache(w) = sum_j a_tj [x_{j+1} = w]                 (B, T, V) j's next token is known at t
    p(w) = (1 - lam) softmax(W h_t + b)_w + lam p_cache(w)        lam = 0 before any position

and returns log p as the logits (softmax(log p) = p, so every reader of logits, the loss, sampling,
an ONNX consumer, stays right). It has no trained weights: theta and lam are settings, fitted to
held-out text (charlm: on the validation text at each evaluation; docs/tasks.md, charlm), and
training is the recurrent model's alone. The memory is part of the recurrent state, so a text
read in chunks gives the same numbers as read whole.

Memory as state, batch second like the recurrent states (all-zero tensors are an empty cache):
    keys (m, B, H): the last m <= size positions' k_j, oldest first
    ids  (m, B, 1): each one's input token id + 1 (0: an empty slot); the token that followed
         slot j is slot j + 1's, and the last slot's is the next call's first input
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def empty_memory(batch: int, hidden_size: int, *, like: torch.Tensor, size: int = 0):
    """The memory of nothing read: `size` empty slots (zeros) for batch `batch`."""
    keys = like.new_zeros(size, batch, hidden_size)
    return keys, like.new_zeros(size, batch, 1)


def cache_logits(
    logits: torch.Tensor,
    h: torch.Tensor,
    tokens: torch.Tensor,
    keys: torch.Tensor,
    ids: torch.Tensor,
    *,
    size: int,
    theta: float | torch.Tensor,
    lam: float | torch.Tensor,
):
    """logits (B, T, V) of the model, its outputs h (B, T, H) after reading tokens (B, T), and the
    memory (keys (m, B, H), ids (m, B, 1)) -> (log p (B, T, V), keys', ids') with the last `size`
    positions kept."""
    B, T, V = logits.shape
    m = keys.shape[0]
    all_keys = torch.cat([keys.transpose(0, 1), F.normalize(h, dim=-1)], 1)  # (B, m + T, H)
    all_ids = torch.cat([ids[..., 0].transpose(0, 1), tokens.to(ids.dtype) + 1], 1)  # (B, m + T)
    # slot j < m + T - 1 has a known next token: slot j + 1's input
    scores = (theta * all_keys[:, m:]) @ all_keys[:, :-1].transpose(1, 2)  # (B, T, m + T - 1)
    j = torch.arange(m + T - 1, device=h.device)
    t = torch.arange(T, device=h.device)[:, None] + m  # position t's slot
    valid = ((j < t) & (j >= t - size))[None] & (all_ids[:, None, :-1] > 0)  # (B, T, m + T - 1)
    # a finite floor, not -inf: a row with nothing to attend to gets finite weights (and weight 0
    # below), not NaN; in any other row the floor's exp is exactly 0
    a = torch.softmax(scores.masked_fill_(~valid, torch.finfo(scores.dtype).min), -1)
    follows = F.one_hot((all_ids[:, 1:].long() - 1).clamp(min=0), V).to(a.dtype)  # (B, m + T - 1, V)
    weight = lam * valid.any(-1, keepdim=True).to(a.dtype)  # (B, T, 1): no cache before any position
    p = (1 - weight) * torch.softmax(logits, -1) + weight * (a @ follows)
    tiny = torch.finfo(p.dtype).tiny  # a probability that underflowed to 0 costs a finite loss
    kept_keys = all_keys[:, -size:].transpose(0, 1)
    kept_ids = all_ids[:, -size:].transpose(0, 1)[..., None]
    return torch.log(p.clamp(min=tiny)), kept_keys, kept_ids
