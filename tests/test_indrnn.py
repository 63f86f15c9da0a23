"""IndRNN (rnnkit.cells.indrnn), a cell written against the public hook: its step against the
equation written here, its fused forward_sequence against stepping (outputs and every gradient,
to 1e-10 in float64, plain and packed), gradcheck of the hand-derived backward, and the
max_steps bound."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from fused_check import assert_fused_equals_stepping
from rnnkit.cells.indrnn import IndRNNCell, _IndRNNSequence


def cell(**options):
    torch.manual_seed(0)
    c = IndRNNCell(3, 5, **options).double()
    with torch.no_grad():  # a mix of kept and decaying units, and some negative recurrences
        c.weight_hh.uniform_(-1.0, 1.0)
        if c.bias_ih is not None:
            c.bias_ih.normal_(0, 0.1)
    return c


def test_step_is_the_equation():
    c = cell()
    x, h = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    (h_new,) = c(x, (h,))
    expected = torch.clamp(x @ c.weight_ih.T + c.bias_ih + c.weight_hh * h, min=0)  # relu, by hand
    torch.testing.assert_close(h_new, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_fused_sequence_equals_stepping(bias, packed):
    assert_fused_equals_stepping(IndRNNCell, 5, bias=bias, packed=packed, scale=0.6)


@pytest.mark.parametrize("batch_sizes", [None, [3, 3, 2, 1, 1]])
def test_gradcheck_of_the_hand_derived_backward(batch_sizes):
    c = cell()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)

    def run(x, h0, w, b, u):
        return _IndRNNSequence.apply(x, h0, w, b, u, batch_sizes)

    assert torch.autograd.gradcheck(run, (x, h0, c.weight_ih, c.bias_ih, c.weight_hh))


def test_max_steps_bounds_the_recurrence():
    c = IndRNNCell(3, 64, max_steps=100)
    bound = 2 ** (1 / 100)
    u = c.weight_hh.detach()
    assert c.recurrent_max == bound and float(u.max()) <= bound and float(u.min()) >= 0
    with torch.no_grad():
        c.weight_hh.fill_(3.0)  # past the bound: used as the bound
    (h,) = c(torch.zeros(1, 3), (torch.ones(1, 64),))
    torch.testing.assert_close(h, torch.full((1, 64), bound))
    with pytest.raises(rnnkit.RnnkitValueError, match="max_steps"):
        IndRNNCell(3, 4, max_steps=0)


def test_registered_as_indrnn_and_a_task_cell(tmp_path, capsys):
    assert "indrnn" in rnnkit.cells.available()
    layer = rnnkit.Recurrent("indrnn", 3, 4)
    assert isinstance(layer.cells[0], IndRNNCell)
    from rnnkit.cli import main

    argv = ["train", "memory", "--problem", "adding", "--lag", "20", "--model", "indrnn", "--steps", "3"]
    assert main([*argv, "--eval-every", "3", "--eval-size", "10", "--out", str(tmp_path / "run")]) == 0
    assert isinstance(rnnkit.load(tmp_path / "run").rnn.cells[0], IndRNNCell)
