"""Decoding against hand computations and brute force, on a toy model with a state."""

import itertools

import pytest
import torch

import rnnkit
from rnnkit.decoding import beam_search, filter_logits, greedy, sample

V = 5
TABLE = torch.tensor(
    [
        [0.0, 2.0, 1.9, -1.0, 0.5],
        [1.0, -2.0, 0.3, 2.5, 0.0],
        [0.2, 0.1, -1.0, 0.0, 3.0],
        [2.2, 0.4, 0.1, -3.0, 0.3],
        [0.0, 1.5, 2.0, 0.7, -1.0],
    ]
)


def toy_step(token, state):
    """logits = TABLE[token] - 0.8 * (how often each token was emitted); state (1, B, V)."""
    counts = torch.zeros(1, token.shape[0], V) if state is None else state
    counts = counts + torch.nn.functional.one_hot(token, V)[None].float()
    return TABLE[token] - 0.8 * counts[0], counts


def score(prefix, seq):
    """Sum of log-probabilities of seq after prefix under toy_step, by replaying it."""
    state, total, token = None, 0.0, prefix[-1]
    for t in prefix[:-1]:
        _, state = toy_step(torch.tensor([t]), state)
    for t in seq:
        logits, state = toy_step(torch.tensor([token]), state)
        total += logits.log_softmax(-1)[0, t].item()
        token = t
    return total


def test_greedy_matches_hand_rollout():
    prefix = torch.tensor([[0, 3], [2, 4]])
    out = greedy(toy_step, prefix, 6)
    for b in range(2):
        token, state, expected = prefix[b, -1:], None, []
        _, state = toy_step(prefix[b, :1], state)
        for _ in range(6):
            logits, state = toy_step(token, state)
            token = logits.argmax(-1)
            expected.append(int(token))
        assert out[b].tolist() == expected


def test_sample_reproducible_and_limits():
    prefix = torch.tensor([[1], [2], [3]])
    a = sample(toy_step, prefix, 8, generator=torch.Generator().manual_seed(3))
    b = sample(toy_step, prefix, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    g = greedy(toy_step, prefix, 8)
    assert torch.equal(sample(toy_step, prefix, 8, top_k=1), g)
    assert torch.equal(sample(toy_step, prefix, 8, top_p=1e-6), g)
    assert torch.equal(sample(toy_step, prefix, 8, temperature=1e-4), g)


def test_sample_frequencies_follow_softmax():
    n = 20000
    prefix = torch.zeros(n, 1, dtype=torch.long)
    first = sample(toy_step, prefix, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    freq = torch.bincount(first, minlength=V).float() / n
    expected = (TABLE[0] - 0.8 * torch.nn.functional.one_hot(torch.tensor(0), V)).softmax(-1)
    assert (freq - expected).abs().max() < 0.015
    t2 = sample(toy_step, prefix, 1, temperature=2.0, generator=torch.Generator().manual_seed(1))[:, 0]
    freq2 = torch.bincount(t2, minlength=V).float() / n
    expected2 = ((TABLE[0] - 0.8 * torch.nn.functional.one_hot(torch.tensor(0), V)) / 2).softmax(-1)
    assert (freq2 - expected2).abs().max() < 0.015


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)[0]  # sorted: 3.0 (0.64), 2.0 (0.24), 1.0 (0.09), 0.0 (0.03)
    keep = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert keep.tolist() == [[False, True, True, False]] and probs[1] < 0.7 < probs[1] + probs[2]
    assert (~torch.isinf(filter_logits(logits, top_p=0.5))).sum() == 1


@pytest.mark.parametrize("length", [1, 3, 4])
def test_beam_search_finds_the_best_sequence(length):
    prefix = torch.tensor([[2, 0], [4, 1]])
    tokens, scores = beam_search(toy_step, prefix, length, beam_size=V**length, length_penalty=0)
    for b in range(2):
        pre = prefix[b].tolist()
        best = max(itertools.product(range(V), repeat=length), key=lambda s: score(pre, s))
        assert tokens[b].tolist() == list(best)
        assert abs(scores[b].item() - score(pre, best)) < 1e-5


def test_beam_search_beats_or_equals_greedy():
    prefix = torch.tensor([[0], [1], [2], [3], [4]])
    g = greedy(toy_step, prefix, 5)
    tokens, _ = beam_search(toy_step, prefix, 5, beam_size=4, length_penalty=0)
    for b in range(5):
        assert score([b], tokens[b].tolist()) >= score([b], g[b].tolist()) - 1e-6


def test_eos_stops_and_pads():
    eos = 4  # token 2 is followed by 4 greedily
    out = greedy(toy_step, torch.tensor([[0], [2]]), 6, eos=eos)
    for row in out.tolist():
        if eos in row:
            assert all(t == eos for t in row[row.index(eos) :])
    tokens, _ = beam_search(toy_step, torch.tensor([[2]]), 6, beam_size=3, eos=eos)
    row = tokens[0].tolist()
    assert eos not in row or all(t == eos for t in row[row.index(eos) :])


def test_bad_arguments():
    with pytest.raises(rnnkit.RnnkitValueError, match="prefix"):
        greedy(toy_step, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(rnnkit.RnnkitValueError, match="temperature"):
        sample(toy_step, torch.zeros(1, 1, dtype=torch.long), 3, temperature=0)
    with pytest.raises(rnnkit.RnnkitValueError, match="top_p"):
        sample(toy_step, torch.zeros(1, 1, dtype=torch.long), 3, top_p=1.5)
    with pytest.raises(rnnkit.RnnkitValueError, match="beam_size"):
        beam_search(toy_step, torch.zeros(1, 1, dtype=torch.long), 3, beam_size=0)


def test_beam_size_one_equals_greedy():
    prefix = torch.tensor([[0, 1], [3, 2], [4, 4]])
    tokens, _ = beam_search(toy_step, prefix, 7, beam_size=1, length_penalty=0)
    assert torch.equal(tokens, greedy(toy_step, prefix, 7))


def test_top_k_never_leaves_the_top_k():
    prefix = torch.randint(0, V, (400, 1), generator=torch.Generator().manual_seed(0))
    out = sample(toy_step, prefix, 6, top_k=2, temperature=3.0, generator=torch.Generator().manual_seed(1))
    state, token = None, prefix[:, 0]
    for t in range(out.shape[1]):
        logits, state = toy_step(token, state)
        second = logits.topk(2, dim=-1).values[:, 1]  # tokens tied with the 2nd are in the top k
        assert (logits.gather(1, out[:, t : t + 1])[:, 0] >= second).all()
        token = out[:, t]
