"""Elman kernels: gradcheck, fused vs the step equations, torch.nn.RNN / RNNCell as references."""

import pytest
import torch

import rnnkit
from rnnkit.cells import RNNCell
from rnnkit.functional import rnn_relu, rnn_tanh

D = torch.float64
KERNELS = {"tanh": rnn_tanh, "relu": rnn_relu}


def make_args(T=5, B=4, I=3, H=6, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=D) * scale).requires_grad_()

    x, h0 = r(T, B, I), r(B, H)
    w_ih, w_hh = r(H, I, scale=0.6), r(H, H, scale=0.4)
    b_ih, b_hh = (r(H), r(H)) if bias else (None, None)
    return [x, h0, w_ih, w_hh, b_ih, b_hh]


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_sizes", [None, [4, 4, 3, 1, 1]])
def test_gradcheck_fused(nl, bias, batch_sizes):
    args = make_args(bias=bias)
    fn = KERNELS[nl]
    assert torch.autograd.gradcheck(lambda *a: fn(*a, batch_sizes=batch_sizes), args)


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("batch_sizes", [None, [4, 3, 3, 2, 1]])
def test_fused_equals_loop(nl, batch_sizes):
    args = make_args(T=5, H=7)
    fn = KERNELS[nl]
    outs = []
    for impl in ("fused", "loop"):
        y, h = fn(*args, batch_sizes=batch_sizes, impl=impl)
        grads = torch.autograd.grad((y * y.detach().cos()).sum() + (h * 1.7).sum(), args)
        outs.append((y, h, *grads))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_matches_torch_rnn(nl):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_args(T=7, B=3, I=4, H=5)
    ref = torch.nn.RNN(4, 5, nonlinearity=nl, dtype=D)
    with torch.no_grad():
        for p, v in zip(ref.parameters(), (w_ih, w_hh, b_ih, b_hh)):
            p.copy_(v)
    y_ref, h_ref = ref(x, h0[None])
    y, h = KERNELS[nl](x, h0, w_ih, w_hh, b_ih, b_hh)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref[0], rtol=1e-12, atol=1e-12)


def test_h0_none_means_zeros():
    x, h0, *w = make_args()
    y1, _ = rnn_tanh(x, None, *w)
    y2, _ = rnn_tanh(x, torch.zeros_like(h0), *w)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_matches_torch(nl, unbatched):
    torch.manual_seed(0)
    ref = torch.nn.RNNCell(4, 6, nonlinearity=nl, dtype=D)
    cell = RNNCell(4, 6, nonlinearity=nl, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(4 if unbatched else (3, 4), dtype=D)
    h = torch.randn(6 if unbatched else (3, 6), dtype=D)
    torch.testing.assert_close(cell(x, h), ref(x, h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cell(x), ref(x), rtol=1e-12, atol=1e-12)


def test_double_backward():
    args = make_args()
    y, h = rnn_tanh(*args, impl="fused")
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)
    # the loop supports it: second derivative of sum(y) w.r.t. w_hh equals gradgradcheck's
    assert torch.autograd.gradgradcheck(lambda *a: rnn_tanh(*a, impl="loop"), args[:4])
