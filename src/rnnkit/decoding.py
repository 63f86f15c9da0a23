"""Decoding for every generating model: greedy, sampling (temperature, top-k, top-p, seeded) and
beam search with length normalisation, batched, with priming and end-of-sequence handling.

A model is seen through one callable, `step(token (B,), state) -> (logits (B, V), state)`, where
the state is None, a tensor whose batch dimension is 1 (as torch's recurrent states are), or a
tuple of such. Generation first feeds the prefix (B, P), P >= 1, then continues from its last
token. Once a sequence emits `eos`, it keeps emitting `eos`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from rnnkit._checks import check_positive_int, check_tensor, shape_str
from rnnkit.errors import RnnkitTypeError, RnnkitValueError

Step = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]


def _map_state(fn, state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(_map_state(fn, s) for s in state)


def _check_prefix(prefix) -> torch.Tensor:
    check_tensor("prefix", prefix, ndim=2)
    if prefix.is_floating_point() or prefix.dtype == torch.bool:
        raise RnnkitValueError(f"prefix must hold integer token ids, got dtype {prefix.dtype}")
    if prefix.shape[1] < 1:
        raise RnnkitValueError(
            f"prefix must hold at least one token per sequence, got shape {shape_str(prefix)}"
        )
    return prefix


def _check_length(max_new_tokens) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise RnnkitTypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise RnnkitValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    return max_new_tokens


def prime(step: Step, prefix: torch.Tensor, state=None):
    """Feed all but the last prefix token; return (last token (B,), state)."""
    for t in range(prefix.shape[1] - 1):
        _, state = step(prefix[:, t], state)
    return prefix[:, -1], state


def _generate(step, prefix, max_new_tokens, state, eos, choose, compiled=None) -> torch.Tensor:
    prefix = _check_prefix(prefix)
    max_new_tokens = _check_length(max_new_tokens)
    token, state = prime(step, prefix, state)
    if compiled is not None and eos is None:  # the whole loop at once, where the model has one
        out = compiled(token, state, max_new_tokens)
        if out is not None:
            return out
    done = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
    out = []
    for _ in range(max_new_tokens):
        logits, state = step(token, state)
        token = choose(logits)
        if eos is not None:
            token = torch.where(done, torch.full_like(token, eos), token)
            done |= token == eos
        out.append(token)
        if eos is not None and bool(done.all()):
            break
    if not out:
        return prefix.new_zeros(prefix.shape[0], 0)
    return torch.stack(out, dim=1)  # (B, L)


@torch.no_grad()
def greedy(step: Step, prefix: torch.Tensor, max_new_tokens: int, *, state=None, eos: int | None = None):
    """The most likely token at every step: (B, P) -> (B, L), L <= max_new_tokens (shorter only
    when every sequence has emitted eos)."""
    return _generate(step, prefix, max_new_tokens, state, eos, lambda logits: logits.argmax(-1))


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None):
    """Set to -inf the logits outside the top k, and outside the smallest set of tokens whose
    probability reaches p (nucleus sampling, Holtzman et al. 2020); at least one token stays."""
    if top_k is not None:
        check_positive_int("top_k", top_k)
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise RnnkitValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already >= p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def sample(
    step: Step,
    prefix: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    state=None,
    eos: int | None = None,
):
    """Draw each token from softmax(logits / temperature), optionally restricted to the top k
    and/or the nucleus of mass top_p; reproducible with a seeded `generator`."""
    if not temperature > 0:
        raise RnnkitValueError(f"temperature must be > 0, got {temperature}")

    def choose(logits):
        scaled = logits if temperature == 1.0 else logits / temperature  # x / 1.0 is x, bit for bit
        probs = filter_logits(scaled, top_k=top_k, top_p=top_p).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    # A model whose step is a method may draw the same tokens in a loop of its own
    # (`LanguageModel.compiled_sample`: no Python round trip per token); not with filters.
    owner = getattr(step, "__self__", None)
    compiled = getattr(owner, "compiled_sample", None) if getattr(owner, "step", None) == step else None
    if compiled is not None and top_k is None and top_p is None:
        compiled = functools.partial(compiled, temperature=temperature, generator=generator)
    else:
        compiled = None
    return _generate(step, prefix, max_new_tokens, state, eos, choose, compiled)


@torch.no_grad()
def beam_search(
    step: Step,
    prefix: torch.Tensor,
    max_new_tokens: int,
    *,
    beam_size: int = 4,
    eos: int | None = None,
    length_penalty: float = 1.0,
    state=None,
):
    """Keep the `beam_size` best partial sequences by summed log-probability; finished ones (that
    emitted eos) are ranked by score / length**length_penalty (length normalisation; 0 disables
    it). Returns (tokens (B, L), scores (B,)): the best sequence of each batch element, padded
    with eos after its end, and its normalised score."""
    prefix = _check_prefix(prefix)
    max_new_tokens = _check_length(max_new_tokens)
    K = check_positive_int("beam_size", beam_size)
    B = prefix.shape[0]
    token, state = prime(step, prefix, state)
    # every batch element starts with K copies of its primed state; only the first is live
    token = token.repeat_interleave(K)
    state = _map_state(lambda s: s.repeat_interleave(K, dim=1), state)
    scores = torch.full((B, K), float("-inf"), device=prefix.device)
    scores[:, 0] = 0.0
    lengths = torch.zeros(B, K, device=prefix.device)
    done = torch.zeros(B, K, dtype=torch.bool, device=prefix.device)
    seqs = prefix.new_zeros(B, K, 0)
    for _ in range(max_new_tokens):
        logits, state = step(token, state)
        logp = logits.float().log_softmax(-1).view(B, K, -1)  # (B, K, V)
        V = logp.shape[-1]
        if eos is not None:  # a finished beam continues with eos at no cost, and with nothing else
            frozen = torch.full_like(logp[0, 0], float("-inf"))
            frozen[eos] = 0.0
            logp = torch.where(done[..., None], frozen, logp)
        cand = (scores[..., None] + logp).view(B, K * V)
        scores, flat = cand.topk(K, dim=-1)  # (B, K)
        beam, token = flat // V, flat % V
        rows = (beam + torch.arange(B, device=beam.device)[:, None] * K).view(-1)
        state = _map_state(lambda s, rows=rows: s.index_select(1, rows), state)
        seqs = torch.cat(
            [seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])), token[..., None]], dim=2
        )
        done = done.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~done).float()
        if eos is not None:
            done = done | (token == eos)
        token = token.view(-1)
        if eos is not None and bool(done.all()):
            break
    norm = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = norm.argmax(-1)  # (B,)
    tokens = seqs[torch.arange(B), best]
    return tokens, norm[torch.arange(B), best]
