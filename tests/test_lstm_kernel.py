"""LSTM kernel: gradcheck, fused vs the step equations, torch.nn.LSTM / LSTMCell as references."""

import pytest
import torch

import rnnkit
from rnnkit.cells import LSTMCell
from rnnkit.cells.lstm import lstm

D = torch.float64
T, B, I, H, P = 5, 4, 3, 6, 4


def make_args(proj=None, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=D) * 0.5).requires_grad_()

    out = proj or H
    args = [r(T, B, I), r(B, out), r(B, H), r(4 * H, I), r(4 * H, out)]
    args += [r(4 * H), r(4 * H)] if bias else [None, None]
    return args, (r(proj, H) if proj else None)


def call(args, w_hr, **kw):
    return lstm(*args, w_hr=w_hr, **kw)


@pytest.mark.parametrize("proj", [None, P])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_sizes", [None, [4, 4, 3, 1, 1]])
def test_gradcheck_fused(proj, bias, batch_sizes):
    args, w_hr = make_args(proj, bias)
    inputs = args + [w_hr]
    assert torch.autograd.gradcheck(lambda *a: lstm(*a[:7], w_hr=a[7], batch_sizes=batch_sizes), inputs)


@pytest.mark.parametrize("proj", [None, P])
@pytest.mark.parametrize("batch_sizes", [None, [4, 3, 3, 2, 1]])
def test_fused_equals_loop(proj, batch_sizes):
    args, w_hr = make_args(proj)
    leaves = [a for a in args + [w_hr] if a is not None]
    results = []
    for impl in ("fused", "loop"):
        y, h, c = call(args, w_hr, batch_sizes=batch_sizes, impl=impl)
        loss = (y * y.detach().cos()).sum() + 1.3 * h.sum() + (c * c).sum()
        results.append((y, h, c, *torch.autograd.grad(loss, leaves)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("proj", [0, P])
def test_matches_torch_lstm(proj):
    torch.manual_seed(1)
    ref = torch.nn.LSTM(I, H, proj_size=proj, dtype=D)
    p = dict(ref.named_parameters())
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(1, B, proj or H, dtype=D)
    c0 = torch.randn(1, B, H, dtype=D)
    y_ref, (h_ref, c_ref) = ref(x, (h0, c0))
    y, h, c = lstm(
        x,
        h0[0],
        c0[0],
        p["weight_ih_l0"],
        p["weight_hh_l0"],
        p["bias_ih_l0"],
        p["bias_hh_l0"],
        w_hr=p.get("weight_hr_l0"),
    )
    for a, b in ((y, y_ref), (h, h_ref[0]), (c, c_ref[0])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    params = list(ref.parameters())
    g_ref = torch.autograd.grad((y_ref**2).sum() + c_ref.sum(), [x, *params])
    g = torch.autograd.grad((y**2).sum() + c.sum(), [x, *params])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_states_none_mean_zeros():
    args, _ = make_args()
    x, h0, c0, *w = args
    for a, b in zip(lstm(x, None, None, *w), lstm(x, torch.zeros_like(h0), torch.zeros_like(c0), *w)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("unbatched", [False, True])
def test_cell_matches_torch(unbatched):
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(4, 6, dtype=D)
    cell = LSTMCell(4, 6, dtype=D)
    cell.load_state_dict(ref.state_dict())
    x = torch.randn(4 if unbatched else (3, 4), dtype=D)
    hx = tuple(torch.randn(6 if unbatched else (3, 6), dtype=D) for _ in range(2))
    for a, b in zip(cell(x, hx), ref(x, hx)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(cell(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_double_backward():
    args, _ = make_args()
    y, h, c = lstm(*args)
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)
    assert torch.autograd.gradgradcheck(lambda *a: lstm(*a, impl="loop"), args[:5])


def test_float32_close_to_float64():
    args, w_hr = make_args(P)
    out64 = call(args, w_hr)
    out32 = call([a.float() for a in args], w_hr.float())
    for a, b in zip(out32, out64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=2e-5)
