"""VectorToSequence (1-vs-N): the right word for each of ten one-hot vectors, with both feeds,
by greedy decoding and by beam search."""

import pytest
import torch

import rnnkit
from rnnkit.decoding import beam_search, greedy
from rnnkit.models import VectorToSequence, VectorToSequenceConfig

WORDS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "gray", "orange"]
CHARS = sorted(set("".join(WORDS)))
BOS, EOS = len(CHARS), len(CHARS) + 1
V = len(CHARS) + 2


def encode(word):
    return [CHARS.index(ch) for ch in word]


def decode(ids):
    out = []
    for i in ids:
        if i == EOS:
            break
        out.append(CHARS[i] if i < len(CHARS) else "?")
    return "".join(out)


@pytest.mark.parametrize("feed", ["init", "every_step"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generates_the_word_of_each_vector(feed, cell):
    torch.manual_seed(0)
    T = max(map(len, WORDS)) + 1
    inputs = torch.full((10, T), EOS)
    targets = torch.full((10, T), -100)  # ignored past the end
    for k, w in enumerate(WORDS):
        ids = encode(w)
        inputs[k, : len(ids) + 1] = torch.tensor([BOS, *ids])
        targets[k, : len(ids) + 1] = torch.tensor([*ids, EOS])
    cond = torch.eye(10)
    model = VectorToSequence(VectorToSequenceConfig(V, 10, feed=feed, cell=cell, hidden_size=64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        logits, _ = model(cond, inputs)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    start = torch.full((10, 1), BOS)
    out = greedy(model.step, start, T + 2, state=model.initial_state(cond), eos=EOS)
    assert [decode(row) for row in out.tolist()] == WORDS
    best, _ = beam_search(model.step, start, T + 2, beam_size=3, state=model.initial_state(cond), eos=EOS)
    assert [decode(row) for row in best.tolist()] == WORDS


def test_feeds_differ_in_structure():
    init = VectorToSequence(VectorToSequenceConfig(V, 10, feed="init"))
    every = VectorToSequence(VectorToSequenceConfig(V, 10, feed="every_step"))
    assert init.rnn.input_size == 32 and every.rnn.input_size == 42
    (h, c), cond = every.initial_state(torch.eye(10)[:3])
    assert torch.equal(h, torch.zeros(1, 3, 64)) and cond.shape == (1, 3, 10)
    with pytest.raises(rnnkit.RnnkitValueError, match="10 features"):
        init.initial_state(torch.zeros(3, 9))
    with pytest.raises(rnnkit.RnnkitValueError, match="feed"):
        VectorToSequenceConfig(V, 10, feed="both")
