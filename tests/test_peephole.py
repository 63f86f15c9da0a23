"""The peephole LSTM (rnnkit.cells.peephole), a cell written against the public hook: its step
against the equations written out here, the fused forward_sequence against stepping (outputs and
every gradient, float64, plain and packed), gradcheck of the hand-derived backward, and that with
zero peepholes it is torch's LSTM cell."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from fused_check import assert_fused_equals_stepping
from rnnkit.cells.peephole import PeepholeLSTMCell, _PeepholeSequence


def cell(bias=True):
    torch.manual_seed(0)
    c = PeepholeLSTMCell(3, 4, bias=bias).double()
    with torch.no_grad():
        for p in (c.peephole_i, c.peephole_f, c.peephole_o):
            p.normal_()
    return c


def test_step_is_the_equations():
    c = cell()
    x, h, s = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))
    W, U, b = c.weight_ih, c.weight_hh, c.bias_ih + c.bias_hh
    H = 4
    a = x @ W.T + h @ U.T + b
    i = 1 / (1 + torch.exp(-(a[:, :H] + c.peephole_i * s)))
    f = 1 / (1 + torch.exp(-(a[:, H : 2 * H] + c.peephole_f * s)))
    g = torch.tanh(a[:, 2 * H : 3 * H])
    c_new = f * s + i * g
    o = 1 / (1 + torch.exp(-(a[:, 3 * H :] + c.peephole_o * c_new)))
    h_new, c_out = c(x, (h, s))
    torch.testing.assert_close(c_out, c_new, rtol=0, atol=1e-14)
    torch.testing.assert_close(h_new, o * torch.tanh(c_new), rtol=0, atol=1e-14)


def test_zero_peepholes_is_torchs_lstm_cell():
    c = PeepholeLSTMCell(3, 4).double()
    theirs = torch.nn.LSTMCell(3, 4).double()
    theirs.load_state_dict({k: getattr(c, k) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
    x, h, s = (torch.randn(2, n, dtype=torch.float64) for n in (3, 4, 4))
    for a, b in zip(c(x, (h, s)), theirs(x, (h, s))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_fused_sequence_equals_stepping(bias, packed):
    assert_fused_equals_stepping(PeepholeLSTMCell, 4, bias=bias, packed=packed, scale=0.5)


@pytest.mark.parametrize("batch_sizes", [None, [3, 3, 2, 1, 1]])
def test_gradcheck_of_the_hand_derived_backward(batch_sizes):
    c = cell()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    bias = (c.bias_ih + c.bias_hh).detach().requires_grad_()
    args = (x, h0, c0, c.weight_ih, c.weight_hh, bias, c.peephole_i, c.peephole_f, c.peephole_o)
    assert torch.autograd.gradcheck(lambda *a: _PeepholeSequence.apply(*a, batch_sizes), args)


def test_registered_as_peephole_lstm():
    assert "peephole_lstm" in rnnkit.cells.available()
    layer = rnnkit.Recurrent("peephole_lstm", 3, 4, learn_initial_state=True, zoneout=(0.1, 0.2))
    y, (h, c) = layer.eval()(torch.randn(5, 2, 3))
    assert y.shape == (5, 2, 4) and h.shape == c.shape == (1, 2, 4)
