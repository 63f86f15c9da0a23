"""SequenceTagger (N-vs-N) and SequenceClassifier (N-vs-1): they learn small tasks made for
them, to asserted held-out accuracy, and padding changes nothing."""

import pytest
import torch

import rnnkit
from rnnkit.models import (
    SequenceClassifier,
    SequenceClassifierConfig,
    SequenceTagger,
    SequenceTaggerConfig,
)


def padded_batch(gen, n, low, high, vocab):
    lengths = torch.randint(low, high + 1, (n,), generator=gen)
    x = torch.randint(0, vocab, (n, high), generator=gen)
    x = x * (torch.arange(high)[None] < lengths[:, None])  # padding id 0 past each length
    return x, lengths


def train(model, batches, loss_fn, steps, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = loss_fn(model, *batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def tag_targets(x):
    """(x_t + x_{t-1}) mod 3, x_{-1} = 0: a function of the current and the previous input."""
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    return (x + prev) % 3


def test_tagger_learns_current_and_previous():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = SequenceTagger(SequenceTaggerConfig(num_tags=3, vocab_size=3, embedding_dim=8, hidden_size=32))

    def loss_fn(m, x, lengths):
        logits, _ = m(x, lengths=lengths)
        mask = torch.arange(x.shape[1])[None] < lengths[:, None]
        return torch.nn.functional.cross_entropy(logits[mask], tag_targets(x)[mask])

    train(model, lambda _: padded_batch(gen, 64, 5, 12, 3), loss_fn, 300)
    x, lengths = padded_batch(torch.Generator().manual_seed(99), 500, 5, 12, 3)
    mask = torch.arange(x.shape[1])[None] < lengths[:, None]
    with torch.no_grad():
        pred = model(x, lengths=lengths)[0].argmax(-1)
    accuracy = (pred[mask] == tag_targets(x)[mask]).float().mean().item()
    assert accuracy >= 0.99


def test_tagger_padding_changes_nothing():
    torch.manual_seed(0)
    model = SequenceTagger(SequenceTaggerConfig(num_tags=4, input_size=3, bidirectional=True, cell="gru"))
    x = torch.randn(3, 7, 3)
    lengths = [7, 2, 5]
    logits, _ = model(x, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = model(x[b : b + 1, :n])
        torch.testing.assert_close(logits[b, :n], alone[0], rtol=1e-5, atol=1e-6)


def parity(x, lengths):
    return ((x == 2).sum(1) % 2).long()


def majority(x, lengths):
    """1 where more than half the bits are ones (ties: 0)."""
    return (2 * (x == 2).sum(1) > lengths).long()


@pytest.mark.parametrize("pooling, target", [("last", parity), ("mean", majority), ("attention", majority)])
def test_classifier_learns_bit_functions(pooling, target):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = SequenceClassifier(
        SequenceClassifierConfig(
            num_classes=2, vocab_size=3, embedding_dim=8, hidden_size=32, pooling=pooling, cell="gru"
        )
    )

    def batch(_, n=64, g=gen):
        x, lengths = padded_batch(g, n, 2, 8, 2)
        return x + (torch.arange(x.shape[1])[None] < lengths[:, None]), lengths  # bits are ids 1, 2

    def loss_fn(m, x, lengths):
        return torch.nn.functional.cross_entropy(m(x, lengths=lengths), target(x, lengths))

    train(model, batch, loss_fn, 400)
    x, lengths = batch(None, 500, torch.Generator().manual_seed(7))
    with torch.no_grad():
        accuracy = (model(x, lengths=lengths).argmax(-1) == target(x, lengths)).float().mean().item()
    assert accuracy >= 0.95


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_classifier_padding_changes_nothing(pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(
        SequenceClassifierConfig(
            num_classes=3, input_size=4, bidirectional=True, pooling=pooling, num_layers=2
        )
    )
    x = torch.randn(3, 6, 4)
    lengths = [6, 1, 4]
    logits, weights = model(x, lengths=lengths, return_weights=True)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(logits[b], model(x[b : b + 1, :n])[0], rtol=1e-5, atol=1e-6)
    if pooling == "attention":
        torch.testing.assert_close(weights.sum(-1), torch.ones(3))
        for b, n in enumerate(lengths):
            assert torch.equal(weights[b, n:], torch.zeros(6 - n))
    else:
        assert weights is None


def test_regression_head_and_bad_input():
    model = SequenceClassifier(SequenceClassifierConfig(num_classes=None, input_size=2, pooling="mean"))
    assert model(torch.randn(5, 4, 2)).shape == (5,)
    with pytest.raises(rnnkit.RnnkitValueError, match="2 features"):
        model(torch.randn(5, 4, 3))
    with pytest.raises(rnnkit.RnnkitValueError, match="exactly one of vocab_size"):
        SequenceTagger(SequenceTaggerConfig(num_tags=2, vocab_size=3, input_size=3))
    with pytest.raises(rnnkit.RnnkitValueError, match="pooling"):
        SequenceClassifierConfig(num_classes=2, input_size=2, pooling="sum")
