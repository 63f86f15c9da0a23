"""`lengths=`: each padded sequence gives exactly what it gives run alone, in both directions."""

import pytest
import torch

import rnnkit

D = torch.float64
T, B, I, H = 7, 4, 3, 5

LAYERS = {
    "rnn": lambda: rnnkit.RNN(I, H, 2, bidirectional=True, dtype=D),
    "rnn_relu": lambda: rnnkit.RNN(I, H, 1, nonlinearity="relu", bidirectional=True, dtype=D),
    "lstm": lambda: rnnkit.LSTM(I, H, 2, bidirectional=True, dtype=D),
    "lstm_proj": lambda: rnnkit.LSTM(I, H, 2, bidirectional=True, proj_size=3, dtype=D),
    "gru": lambda: rnnkit.GRU(I, H, 2, bidirectional=True, dtype=D),
    "gru_reset_before": lambda: rnnkit.GRU(I, H, 2, bidirectional=True, reset_after=False, dtype=D),
    "mgu": lambda: rnnkit.MGU(I, H, 2, bidirectional=True, dtype=D),
}


def states(out):
    s = out[1]
    return list(s) if isinstance(s, tuple) else [s]


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_each_sequence_as_if_alone(name, as_tensor):
    torch.manual_seed(0)
    m = LAYERS[name]()
    lengths = [3, 7, 1, 5]  # unsorted on purpose
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    out = m(x, lengths=torch.tensor(lengths) if as_tensor else lengths)
    y, finals = out[0], states(out)
    for b, n in enumerate(lengths):
        alone = m(x[:n, b : b + 1])
        torch.testing.assert_close(y[:n, b], alone[0][:, 0], rtol=1e-12, atol=1e-12)
        assert torch.equal(y[n:, b], torch.zeros_like(y[n:, b]))
        for s, s_alone in zip(finals, states(alone)):
            torch.testing.assert_close(s[:, b], s_alone[:, 0], rtol=1e-12, atol=1e-12)
        # gradients of sequence b's outputs w.r.t. its input and the parameters
        params = list(m.parameters())
        g_pad = torch.autograd.grad(
            y[:n, b].pow(2).sum() + sum(s[:, b].sum() for s in finals), [x, *params], retain_graph=True
        )
        x_alone = x[:n, b : b + 1].detach().requires_grad_()
        a = m(x_alone)
        g_alone = torch.autograd.grad(a[0].pow(2).sum() + sum(s.sum() for s in states(a)), [x_alone, *params])
        torch.testing.assert_close(g_pad[0][:n, b], g_alone[0][:, 0], rtol=1e-10, atol=1e-12)
        assert torch.equal(g_pad[0][n:, b], torch.zeros_like(g_pad[0][n:, b]))
        for p_pad, p_alone in zip(g_pad[1:], g_alone[1:]):
            torch.testing.assert_close(p_pad, p_alone, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(LAYERS))
def test_full_lengths_equal_no_lengths(name):
    torch.manual_seed(0)
    m = LAYERS[name]()
    x = torch.randn(T, B, I, dtype=D)
    a, b = m(x), m(x, lengths=[T] * B)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    for s, t in zip(states(a), states(b)):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


def test_lengths_with_batch_first_and_h0():
    torch.manual_seed(0)
    m = rnnkit.GRU(I, H, batch_first=True, dtype=D)
    x = torch.randn(B, T, I, dtype=D)
    h0 = torch.randn(1, B, H, dtype=D)
    y, h = m(x, h0, lengths=[2, 7, 4, 1])
    for b, n in enumerate([2, 7, 4, 1]):
        y_b, h_b = m(x[b : b + 1, :n], h0[:, b : b + 1])
        torch.testing.assert_close(y[b, :n], y_b[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[:, b], h_b[:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm_proj", "gru", "mgu"])
def test_all_sequences_shorter_than_padding(name):
    torch.manual_seed(0)
    m = LAYERS[name]()
    x = torch.randn(T, 2, I, dtype=D)
    out = m(x, lengths=[3, 2])
    assert out[0].shape[0] == T and torch.equal(out[0][3:], torch.zeros_like(out[0][3:]))
    for b, n in enumerate([3, 2]):
        alone = m(x[:n, b : b + 1])
        torch.testing.assert_close(out[0][:n, b], alone[0][:, 0], rtol=1e-12, atol=1e-12)
        for s, s_alone in zip(states(out), states(alone)):
            torch.testing.assert_close(s[:, b], s_alone[:, 0], rtol=1e-12, atol=1e-12)
