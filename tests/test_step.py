"""`Recurrent.step` and `LanguageModel.step`, the single-step path decoding calls: the numbers of
the whole-sequence forward on a sequence of length 1, for every cell (a user's included), every
state form, stacked layers; what it cannot do alone (training, zoneout, two directions) goes
through forward."""

import contextlib

import pytest
import torch

import rnnkit
from rnnkit.cells import available
from rnnkit.models import LanguageModel, LanguageModelConfig


def _states(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.mark.parametrize("cell", sorted(available()))
@pytest.mark.parametrize("layers", [1, 2])
def test_a_step_is_forward_over_one_step(cell, layers):
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(cell, 5, 7, num_layers=layers, batch_first=True).double().eval()
    x = torch.randn(3, 5, dtype=torch.double)
    for hx in (None, "previous"):
        if hx == "previous":
            hx = layer(torch.randn(3, 4, 5, dtype=torch.double))[1]
        y, s = layer(x[:, None], hx)
        y_step, s_step = layer.step(x, hx)
        torch.testing.assert_close(y_step, y[:, 0], rtol=0, atol=1e-12)
        for a, b in zip(_states(s_step), _states(s)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_torch_style_layers_and_learnt_initial_states():
    torch.manual_seed(0)
    for layer in (
        rnnkit.LSTM(4, 6, num_layers=2).double().eval(),
        rnnkit.GRU(4, 6).double().eval(),
        rnnkit.Recurrent("lstm", 4, 6, learn_initial_state=True).double().eval(),
    ):
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_()
        x = torch.randn(2, 4, dtype=torch.double)
        y, s = layer(x[None])
        y_step, s_step = layer.step(x)
        torch.testing.assert_close(y_step, y[0], rtol=0, atol=1e-12)
        for a, b in zip(_states(s_step), _states(s)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_what_the_step_cannot_do_alone_goes_through_forward():
    torch.manual_seed(0)
    x = torch.randn(3, 5)
    for layer in (
        rnnkit.Recurrent("lstm", 5, 7, zoneout=0.3).eval(),  # eval's zoneout: its expectation
        rnnkit.Recurrent("gru", 5, 7, bidirectional=True).eval(),
    ):
        y, _ = layer(x[None])
        torch.testing.assert_close(layer.step(x)[0], y[0])
    layer = rnnkit.Recurrent("lstm", 5, 7, num_layers=2, dropout=0.5, weight_dropout=0.5).train()
    torch.manual_seed(1)
    y, _ = layer(x[None])
    torch.manual_seed(1)
    torch.testing.assert_close(layer.step(x)[0], y[0])  # the same masks, drawn as forward draws them
    with pytest.raises(rnnkit.RnnkitError, match="hx"):
        rnnkit.Recurrent("lstm", 5, 7).eval().step(x, torch.zeros(1, 3, 7))  # one tensor for (h, c)


def test_a_language_model_steps_as_it_reads():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(11, embedding_dim=4, hidden_size=8, num_layers=2, dropout=0.2))
    model = model.double().eval()
    tokens = torch.randint(0, 11, (3, 6))
    logits, _ = model(tokens)
    state = None
    for t in range(6):
        step_logits, state = model.step(tokens[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-12)
    with pytest.raises(rnnkit.RnnkitError, match="ids in 0..10"):
        model.step(torch.tensor([11]), None)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "rnn_relu"])
def test_atens_cells_give_the_same_bits(cell):
    """The `aten_cells` speed piece (torch.lstm_cell, rnn_tanh_cell, rnn_relu_cell for a step):
    the very numbers of the eager step equations, in float32 and float64, with gradients."""
    from rnnkit.cells import speed

    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        layer = rnnkit.Recurrent(cell, 64, 256, num_layers=2, dtype=dtype).eval()
        x = torch.randn(3, 64, dtype=dtype, requires_grad=True)
        got = []
        for piece in (contextlib.nullcontext(), speed.off("aten_cells")):
            with piece:
                y, s = layer.step(x)
                (grad,) = torch.autograd.grad(y.square().sum() + s[-1].sum(), x)
            got.append((y, *s, grad))
        for a, b in zip(*got):
            assert torch.equal(a, b)
