"""Truncated BPTT with k1 (update interval) and k2 (gradient reach) against full BPTT."""

import pytest
import torch

import rnnkit
from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.training.tbptt import tbptt_step


def setup():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(6, embedding_dim=5, hidden_size=7, cell="lstm")).double()
    tokens = torch.randint(0, 6, (3, 13))
    return model, tokens[:, :-1], tokens[:, 1:]


def test_k1_equal_k2_is_full_bptt():
    model, x, y = setup()
    loss, state = tbptt_step(model, x, y, None, k1=12)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits, full_state = model(x)
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, 6), y.reshape(-1))
    for a, b in zip(grads, torch.autograd.grad(full, list(model.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(state, full_state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_k1_shorter_than_k2():
    model, x, y = setup()
    h0 = tuple(torch.randn(1, 3, 7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    loss, carried = tbptt_step(model, x, y, h0, k1=4)
    logits, _ = model(x, h0)  # one full forward over the window
    new = logits[:, -4:]
    expected = torch.nn.functional.cross_entropy(new.reshape(-1, 6), y[:, -4:].reshape(-1))
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    params = [*h0, *model.parameters()]
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # the gradient reaches all k2 steps back
    _, after_k1 = model(x[:, :4], h0)
    for a, b in zip(carried, after_k1):  # the next window starts k1 steps on
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(rnnkit.RnnkitValueError, match="k1"):
        tbptt_step(model, x, y, None, k1=13)
