"""LanguageModel: memorises a short text (greedy decoding then reproduces it), carries its state
explicitly, ties weights, and refuses bad tokens."""

import pytest
import torch

import rnnkit
from rnnkit.decoding import greedy
from rnnkit.models import LanguageModel, LanguageModelConfig

TEXT = "the quick brown fox jumps over the lazy dog; rnnkit learns it by heart."


@pytest.mark.parametrize("cell", ["lstm", "gru", "mgu"])
def test_memorises_a_text(cell):
    torch.manual_seed(0)
    vocab = sorted(set(TEXT))
    ids = torch.tensor([vocab.index(ch) for ch in TEXT])[None]  # (1, T)
    model = LanguageModel(LanguageModelConfig(len(vocab), embedding_dim=32, hidden_size=96, cell=cell))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits, _ = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    model.eval()
    out = greedy(model.step, ids[:, :1], len(TEXT) - 1)
    assert "".join(vocab[i] for i in [ids[0, 0].item(), *out[0].tolist()]) == TEXT


def test_state_carries_across_chunks():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(11, embedding_dim=8, hidden_size=12, num_layers=2))
    tokens = torch.randint(0, 11, (3, 20))
    whole, state = model(tokens)
    first, s = model(tokens[:, :7])
    second, s = model(tokens[:, 7:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(s, state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tied_weights():
    model = LanguageModel(LanguageModelConfig(13, embedding_dim=16, hidden_size=16, tie_weights=True))
    assert model.head.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel()
        for p in LanguageModel(LanguageModelConfig(13, embedding_dim=16, hidden_size=16)).parameters()
    )
    with pytest.raises(rnnkit.RnnkitValueError, match="tie_weights"):
        LanguageModelConfig(13, embedding_dim=8, hidden_size=16, tie_weights=True)


def test_bad_tokens():
    model = LanguageModel(LanguageModelConfig(5, embedding_dim=4, hidden_size=4))
    with pytest.raises(rnnkit.RnnkitValueError, match="0..4"):
        model(torch.tensor([[1, 5]]))
    with pytest.raises(rnnkit.RnnkitValueError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(rnnkit.RnnkitValueError, match="2-D"):
        model(torch.tensor([1, 2]))
    with pytest.raises(rnnkit.RnnkitValueError, match="cell"):
        LanguageModel(LanguageModelConfig(5, cell="transformer"))


def test_padding_changes_nothing():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(9, embedding_dim=8, hidden_size=12, num_layers=2, cell="gru"))
    tokens = torch.randint(0, 9, (3, 7))
    lengths = [7, 3, 5]
    logits, _ = model(tokens, lengths=lengths)
    targets = torch.randint(0, 9, (3, 7))
    for b, n in enumerate(lengths):
        alone, _ = model(tokens[b : b + 1, :n])
        torch.testing.assert_close(logits[b, :n], alone[0], rtol=1e-5, atol=1e-6)
        loss_pad = torch.nn.functional.cross_entropy(logits[b, :n], targets[b, :n])
        loss_alone = torch.nn.functional.cross_entropy(alone[0], targets[b, :n])
        torch.testing.assert_close(loss_pad, loss_alone)


def test_embedding_dropout_drops_whole_tokens():
    """In training each token's embedding row is kept (scaled by 1/(1-p)) or dropped at every
    place it occurs, one mask a forward; in evaluation nothing is dropped."""
    torch.manual_seed(0)
    p = 0.5
    model = LanguageModel(LanguageModelConfig(6, embedding_dim=4, hidden_size=5, embedding_dropout=p))
    tokens = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]] * 3)
    model.train()
    e = model._embed(tokens)  # (3, 12, 4)
    full = model.embedding(tokens)
    for t in range(12):
        same = tokens == tokens[0, t]
        kept = torch.allclose(e[0, t], full[0, t] / (1 - p))
        assert kept or bool((e[0, t] == 0).all())
        assert all(torch.equal(e[0, t], e[b, s]) for b, s in same.nonzero().tolist())  # one mask
    dropped = [(e[0, t] == 0).all().item() for t in range(6)]
    assert any(dropped) and not all(dropped)  # seed 0: some of 6 tokens dropped, not every one
    model.eval()
    torch.testing.assert_close(model._embed(tokens), full)
    with pytest.raises(rnnkit.RnnkitError, match="embedding_dropout"):
        LanguageModelConfig(6, embedding_dropout=1.0)
