"""The speed machinery (rnnkit.cells.speed) changes speed, never results: every built-in unit,
and the two cells written against the public hook, give the same outputs and gradients with each
piece switched off (and all of them) as with all on."""

import pytest
import torch

import rnnkit
from rnnkit.cells import speed
from rnnkit.cells.registry import BUILTIN

CELLS = [*BUILTIN, "indrnn", "peephole_lstm"]


def run(name, dtype, T=9, B=4, H=6, I=5):
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(name, I, H, 2, bidirectional=True, dtype=torch.float64).to(dtype)
    x = torch.randn(T, B, I, dtype=torch.float64).to(dtype).requires_grad_()
    y, state = layer(x, lengths=[T, T - 4, T - 2, 2] * (B // 4))
    (y.square().sum() + sum(s.sin().sum() for s in state)).backward()
    return [y, *state, x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("switched", [*[(n,) for n in speed.NAMES], ()])
def test_each_piece_changes_nothing_but_speed(name, switched):
    assert all(speed.state().values())
    want = run(name, torch.float64)
    with speed.off(*switched):
        assert not any(speed.on(n) for n in (switched or speed.NAMES))
        got = run(name, torch.float64)
    assert all(speed.state().values())  # restored
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "gru", "ln_lstm"])
def test_at_sizes_where_every_piece_acts_float32(name):
    """Sizes where oneDNN takes the products (>= 2M multiply-adds) and the compiled loops run:
    in float32 the two paths round differently, so each is held to the float64 result. Measured
    here (LN-LSTM, the worst): every tensor within 1e-4 of it (relative, whole tensor) with every
    piece off, within 8e-4 with all on, the oneDNN products alone 5e-4 (the other pieces alone
    ~1e-4): oneDNN's float32 products round more than MKL's."""
    sizes = {"T": 40, "B": 32, "H": 64, "I": 512}
    exact = run(name, torch.float64, **sizes)
    fast = run(name, torch.float32, **sizes)
    with speed.off():
        plain = run(name, torch.float32, **sizes)
    for e, a, b in zip(exact, fast, plain, strict=True):
        scale = e.norm()  # relative errors of the whole tensor, as float32 rounding makes them
        assert (a.double() - e).norm() / scale < 2e-3 and (b.double() - e).norm() / scale < 3e-4


def test_switches_are_checked():
    with pytest.raises(rnnkit.RnnkitValueError, match="native, workspace"):
        speed.switch("nope", False)
    with pytest.raises(rnnkit.RnnkitTypeError):
        speed.switch("native", 0)
    speed.switch("workspace", False)
    try:
        assert not speed.on("workspace")
    finally:
        speed.switch("workspace", True)
