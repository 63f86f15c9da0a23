"""MGU kernel: gradcheck, fused vs the step equations, and both against a loop written here from
the equations of Zhou et al. (2016)."""

import pytest
import torch

import rnnkit
from rnnkit.cells import MGUCell
from rnnkit.cells.mgu import mgu

D = torch.float64
T, B, I, H = 5, 4, 3, 6


def make_args(bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=D) * 0.5).requires_grad_()

    args = [r(T, B, I), r(B, H), r(2 * H, I), r(2 * H, H)]
    return args + ([r(2 * H), r(2 * H)] if bias else [None, None])


def paper_loop(x, h, w_ih, w_hh, b_ih, b_hh):
    W_f, W_h = w_ih.split(H)
    U_f, U_h = w_hh.split(H)
    ys = []
    for x_t in x:
        f = torch.sigmoid(W_f @ x_t.T + U_f @ h.T + (b_ih[:H] + b_hh[:H])[:, None]).T
        h_tilde = torch.tanh(W_h @ x_t.T + U_h @ (f * h).T + (b_ih[H:] + b_hh[H:])[:, None]).T
        h = (1 - f) * h + f * h_tilde
        ys.append(h)
    return torch.stack(ys), h


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_sizes", [None, [4, 4, 3, 1, 1]])
def test_gradcheck_fused(bias, batch_sizes):
    assert torch.autograd.gradcheck(lambda *a: mgu(*a, batch_sizes=batch_sizes), make_args(bias))


@pytest.mark.parametrize("batch_sizes", [None, [4, 3, 3, 2, 1]])
def test_fused_equals_loop(batch_sizes):
    args = make_args()
    results = []
    for impl in ("fused", "loop"):
        y, h = mgu(*args, batch_sizes=batch_sizes, impl=impl)
        loss = (y * y.detach().cos()).sum() + 1.3 * h.sum()
        results.append((y, h, *torch.autograd.grad(loss, args)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_matches_paper_equations(impl):
    args = [a.detach() for a in make_args()]
    y_ref, h_ref = paper_loop(*args)
    y, h = mgu(*args, impl=impl)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_matches_paper_step(unbatched):
    torch.manual_seed(0)
    cell = MGUCell(I, H, dtype=D)
    x = torch.randn(1, B, I, dtype=D)
    h = torch.randn(B, H, dtype=D)
    _, h_ref = paper_loop(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    if unbatched:
        torch.testing.assert_close(cell(x[0, 0], h[0]), h_ref[0], rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(cell(x[0], h), h_ref, rtol=1e-12, atol=1e-12)


def test_double_backward():
    args = make_args()
    y, _ = mgu(*args)
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)
    assert torch.autograd.gradgradcheck(lambda *a: mgu(*a, impl="loop"), args[:4])
