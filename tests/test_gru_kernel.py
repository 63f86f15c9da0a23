"""GRU kernels, both forms: gradcheck, fused vs the step equations, torch.nn.GRU / GRUCell, and
the paper's form against a loop written here from Cho et al. (2014)."""

import pytest
import torch

import rnnkit
from rnnkit.cells import GRUCell
from rnnkit.cells.gru import gru

D = torch.float64
T, B, I, H = 5, 4, 3, 6


def make_args(bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=D) * 0.5).requires_grad_()

    args = [r(T, B, I), r(B, H), r(3 * H, I), r(3 * H, H)]
    return args + ([r(3 * H), r(3 * H)] if bias else [None, None])


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_sizes", [None, [4, 4, 3, 1, 1]])
def test_gradcheck_fused(reset_after, bias, batch_sizes):
    args = make_args(bias)
    assert torch.autograd.gradcheck(
        lambda *a: gru(*a, reset_after=reset_after, batch_sizes=batch_sizes), args
    )


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("batch_sizes", [None, [4, 3, 3, 2, 1]])
def test_fused_equals_loop(reset_after, batch_sizes):
    args = make_args()
    results = []
    for impl in ("fused", "loop"):
        y, h = gru(*args, reset_after=reset_after, batch_sizes=batch_sizes, impl=impl)
        loss = (y * y.detach().cos()).sum() + 1.3 * h.sum()
        results.append((y, h, *torch.autograd.grad(loss, args)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_matches_torch_gru():
    torch.manual_seed(1)
    ref = torch.nn.GRU(I, H, dtype=D)
    params = list(ref.parameters())
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=D)
    y_ref, h_ref = ref(x, h0)
    y, h = gru(x, h0[0], *params)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref[0], rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad((y_ref**2).sum(), [x, *params])
    g = torch.autograd.grad((y**2).sum(), [x, *params])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reset_before_matches_paper_equations():
    x, h0, w_ih, w_hh, b_ih, b_hh = [a.detach() for a in make_args()]
    W_r, W_z, W = w_ih.split(H)  # Cho et al.: W x, U h, with separate reset and update gates
    U_r, U_z, U = w_hh.split(H)
    h, ys = h0, []
    for x_t in x:
        r = torch.sigmoid(x_t @ W_r.T + b_ih[:H] + h @ U_r.T + b_hh[:H])
        z = torch.sigmoid(x_t @ W_z.T + b_ih[H : 2 * H] + h @ U_z.T + b_hh[H : 2 * H])
        h_tilde = torch.tanh(x_t @ W.T + b_ih[2 * H :] + (r * h) @ U.T + b_hh[2 * H :])
        h = z * h + (1 - z) * h_tilde
        ys.append(h)
    y, h_n = gru(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=False)
    torch.testing.assert_close(y, torch.stack(ys), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, h, rtol=1e-12, atol=1e-12)


def test_forms_differ():
    args = make_args()
    assert not torch.allclose(gru(*args, reset_after=True)[0], gru(*args, reset_after=False)[0])


@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_matches_torch(unbatched):
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(4, 6, dtype=D)
    cell = GRUCell(4, 6, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(4 if unbatched else (3, 4), dtype=D)
    h = torch.randn(6 if unbatched else (3, 6), dtype=D)
    torch.testing.assert_close(cell(x, h), ref(x, h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cell(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset_after", [True, False])
def test_double_backward(reset_after):
    args = make_args()
    y, _ = gru(*args, reset_after=reset_after)
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)
    assert torch.autograd.gradgradcheck(lambda *a: gru(*a, reset_after=reset_after, impl="loop"), args[:4])
