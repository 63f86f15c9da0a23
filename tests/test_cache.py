"""The continuous cache of LanguageModel (rnnkit.models._cache): against a plain loop over
positions written here, the same numbers read whole, in chunks and step by step, the memory
limited to cache_size positions, zeros as an empty memory, and training untouched."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.errors import RnnkitError
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.models._cache import cache_logits, empty_memory


def _model(cache_size=6, theta=3.0, lam=0.3, layers=1, cell="lstm"):
    torch.manual_seed(0)
    config = LanguageModelConfig(
        9,
        embedding_dim=5,
        hidden_size=7,
        num_layers=layers,
        cell=cell,
        cache_size=cache_size,
        cache_theta=theta,
        cache_lambda=lam,
    )
    return LanguageModel(config).double().eval()


def _weights(model):
    """The model's weights without the cache's settings (buffers a model without a cache lacks)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("cache_")}


def _reference(model, tokens):
    """log p of every position by the cache's definition, one position at a time."""
    plain = LanguageModel(model.config.__class__(**{**model.config.__dict__, "cache_size": 0})).double()
    plain.load_state_dict(_weights(model))
    plain.eval()
    e = plain.embedding(tokens)
    h, _ = plain.rnn(e)  # (B, T, H)
    probs = torch.softmax(plain.head(h), -1)  # (B, T, V)
    c = model.config
    out = torch.empty_like(probs)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            earlier = range(max(0, t - c.cache_size), t)
            if not earlier:
                out[b, t] = probs[b, t].log()
                continue
            k = F.normalize(h[b], dim=-1)
            scores = torch.stack([c.cache_theta * (k[t] @ k[j]) for j in earlier])
            weights = torch.softmax(scores, 0)
            cache = torch.zeros_like(probs[b, t])
            for w, j in zip(weights, earlier):
                cache[tokens[b, j + 1]] += w  # the token that followed position j
            out[b, t] = ((1 - c.cache_lambda) * probs[b, t] + c.cache_lambda * cache).log()
    return out


@pytest.mark.parametrize("layers,cell", [(1, "lstm"), (2, "gru")])
def test_matches_a_plain_loop(layers, cell):
    model = _model(layers=layers, cell=cell)
    tokens = torch.randint(0, 9, (3, 17))
    logits, _ = model(tokens)
    torch.testing.assert_close(logits, _reference(model, tokens))
    # a distribution: the returned logits are log p
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(3, 17, dtype=torch.double))


def test_whole_chunks_and_steps_agree():
    model = _model()
    tokens = torch.randint(0, 9, (2, 23))
    whole, state = model(tokens)
    parts, s = [], None
    for a, b in [(0, 4), (4, 5), (5, 16), (16, 23)]:
        out, s = model(tokens[:, a:b], s)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole)
    for x, y in zip(s, state):
        torch.testing.assert_close(x, y)
    steps, s = [], None
    for t in range(tokens.shape[1]):
        out, s = model.step(tokens[:, t], s)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), whole)
    # the memory keeps the last cache_size positions, batch second
    keys, ids = state[-2:]
    assert keys.shape == (6, 2, 7) and ids.shape == (6, 2, 1)
    assert ids[..., 0].T.tolist() == (tokens[:, -6:] + 1).tolist()


def test_zeros_are_an_empty_memory():
    model = _model()
    tokens = torch.randint(0, 9, (2, 10))
    fresh, _ = model(tokens)
    zeros, _ = model(tokens, tuple(model.default_states(2)))
    torch.testing.assert_close(zeros, fresh)
    assert [tuple(s.shape) for s in model.default_states(2)] == [(1, 2, 7), (1, 2, 7), (6, 2, 7), (6, 2, 1)]


def test_it_copies_what_it_read():
    """A text read twice: the second reading is cheaper with the cache than without."""
    model = _model(cache_size=50, theta=20.0, lam=0.5)
    plain = LanguageModel(LanguageModelConfig(**{**model.config.__dict__, "cache_size": 0})).double().eval()
    plain.load_state_dict(_weights(model))
    text = torch.randint(0, 9, (1, 20))
    tokens = torch.cat([text, text], 1)

    def bits(m):
        logits, _ = m(tokens[:, :-1])
        loss = F.cross_entropy(logits[0, 20:], tokens[0, 21:], reduction="mean")
        return loss.item() / math.log(2)

    assert bits(model) < bits(plain) - 0.5


def test_training_is_the_recurrent_model_alone():
    model = _model().train()
    plain = LanguageModel(LanguageModelConfig(**{**model.config.__dict__, "cache_size": 0})).double().train()
    plain.load_state_dict(_weights(model))
    tokens = torch.randint(0, 9, (2, 12))
    torch.manual_seed(1)
    ours, state = model(tokens)
    torch.manual_seed(1)
    theirs, _ = plain(tokens)
    torch.testing.assert_close(ours, theirs)
    assert state[-2].shape[0] == 0  # the memory is not kept in training


def test_gradcheck():
    model = _model(cache_size=4)
    tokens = torch.randint(0, 9, (2, 7))

    def f(h):
        logits = model.head(h)
        return cache_logits(logits, h, tokens, *empty_memory(2, 7, like=h), size=4, theta=3.0, lam=0.3)[0]

    h = torch.randn(2, 7, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(f, (h,))


def test_bad_settings_and_states():
    for bad in [{"cache_size": -1}, {"cache_size": 1.5}, {"cache_lambda": 1.5}, {"cache_theta": -1.0}]:
        with pytest.raises(RnnkitError, match=next(iter(bad))):
            LanguageModelConfig(9, **bad)
    model = _model()
    with pytest.raises(RnnkitError, match="state"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 1, 7))
    h = torch.zeros(1, 2, 7, dtype=torch.double)
    with pytest.raises(RnnkitError, match=r"keys \(m, 2, 7\).*got \(6, 2, 5\)"):
        model(torch.zeros(2, 3, dtype=torch.long), (h, h, torch.zeros(6, 2, 5), torch.zeros(6, 2, 1)))
    with pytest.raises(RnnkitError, match=r"ids \(m, 2, 1\).*got \(6, 2, 7\) and \(5, 2, 1\)"):
        model.step(torch.zeros(2, dtype=torch.long), (h, h, torch.zeros(6, 2, 7), torch.zeros(5, 2, 1)))
    with pytest.raises(RnnkitError, match="lengths"):
        model(torch.zeros(1, 3, dtype=torch.long), lengths=torch.tensor([2]))


def test_fit_chooses_the_grids_best_as_the_model_reads_it():
    """fit_cache mixes one read per theta arithmetically; each setting read for real must agree,
    and the one it keeps must be the best (lambda 0, the model alone, among them)."""
    from rnnkit.tasks.charlm import bits_per_char, fit_cache

    model = _model(cache_size=30)
    ids = torch.cat([torch.randint(0, 9, (6,))] * 60)  # a text that repeats itself: the cache pays
    thetas, lambdas = (5.0, 20.0), (0.0, 0.2, 0.6)
    read = {}
    for theta in thetas:
        for lam in lambdas:
            model.cache_theta.fill_(theta)
            model.cache_lambda.fill_(lam)
            read[theta, lam] = bits_per_char(model, ids)
    bits = fit_cache(model, ids, thetas, lambdas)
    chosen = (model.cache_theta.item(), model.cache_lambda.item())
    assert chosen[1] > 0 and bits == pytest.approx(min(read.values()), abs=1e-9)
    assert bits == pytest.approx(read[chosen], abs=1e-9) == pytest.approx(bits_per_char(model, ids), abs=1e-9)
    # a lambda given is kept; a text that never repeats gets no cache
    fit_cache(model, ids, thetas, (0.3,))
    assert model.cache_lambda.item() == pytest.approx(0.3)
    noise = torch.randint(0, 9, (200,))
    fit_cache(model, noise, (20.0,), (0.0, 0.5))
    assert model.cache_lambda.item() == 0.0


def test_the_settings_are_saved_with_the_weights():
    model = _model()
    model.cache_theta.fill_(7.0)
    again = _model()
    again.load_state_dict(model.state_dict())
    assert again.cache_theta.item() == 7.0 and {"cache_theta", "cache_lambda"} <= set(model.state_dict())


def test_a_run_saved_before_the_cache_loads_as_it_was_trained(tmp_path, text_file, capsys):
    """A charlm run whose config.json predates the cache (no cache options, no cache settings in
    its model) loads without one and scores what it scored, instead of 'the file was edited'."""
    import json

    import rnnkit
    from rnnkit.cli import main

    run = tmp_path / "old"
    flags = ["--hidden-size", "16", "--embedding-dim", "8", "--seq-len", "16", "--batch-size", "4"]
    argv = ["train", "--data", str(text_file), "--steps", "4", "--eval-every", "2", "--cache-size", "0"]
    assert main([*argv, *flags, "--out", str(run)]) == 0
    before = rnnkit.Run.load(run).evaluate()["bpc"]
    path = run / "config.json"
    config = json.loads(path.read_text())
    for section in (config["task_config"], config["model"]["config"]):
        for name in ("cache_size", "cache_theta", "cache_lambda"):
            del section[name]
    path.write_text(json.dumps(config))
    again = rnnkit.Run.load(run)
    assert again.model.config.cache_size == 0 and again.evaluate()["bpc"] == before
