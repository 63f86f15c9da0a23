"""The fused kernels' tanh (`rnnkit.cells.speed.tanh.Tanh`): on CPU 2 sigmoid(2v) - 1 from a
pre-activation made doubled, elsewhere torch's tanh; against torch.tanh. And the kernels with
torch's tanh, as they run on CUDA, against their step equations."""

import pytest
import torch

from rnnkit import functional as F
from rnnkit.cells.speed import tanh as _tanh
from rnnkit.cells.speed.tanh import Tanh, doubled


def values(dtype):
    g = torch.Generator().manual_seed(0)
    v = torch.cat([torch.randn(10_000, generator=g, dtype=torch.float64) * 3, torch.linspace(-30, 30, 601)])
    return v.to(dtype)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 4e-16), (torch.float32, 3e-7)])
def test_is_tanh_to_a_few_ulps_of_one(dtype, atol):
    v = values(dtype)
    tanh_ = Tanh(v)
    assert tanh_.via_sigmoid and tanh_.k == 2
    pre = 2 * v  # what weights passed through tanh_.prep make
    torch.testing.assert_close(tanh_.into(pre, torch.empty_like(v)), torch.tanh(v), rtol=0, atol=atol)
    torch.testing.assert_close(tanh_(pre.clone()), torch.tanh(v), rtol=0, atol=atol)
    for scale in (1.0, 2.0):  # a sigmoid shared with the gates
        got = tanh_.from_sigmoid(torch.sigmoid(2 * v), scale)
        torch.testing.assert_close(got, scale * torch.tanh(v), rtol=0, atol=scale * atol)
    torch.testing.assert_close(tanh_.undo_(pre), v, rtol=0, atol=0)


def test_limits_and_nan():
    v = torch.tensor([-float("inf"), -1e4, -50.0, 0.0, 50.0, 1e4, float("inf"), float("nan")])
    got = Tanh(v)(2 * v)
    assert got[:7].tolist() == [-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0]
    assert got[7].isnan()


def test_other_devices_use_torch_tanh(monkeypatch):
    monkeypatch.setattr(_tanh, "TANH_VIA_SIGMOID", set())
    v = values(torch.float32)
    tanh_ = Tanh(v)
    assert not tanh_.via_sigmoid and tanh_.k == 1 and tanh_.prep(v) is v
    assert torch.equal(tanh_(v.clone()), torch.tanh(v)) and torch.equal(tanh_.undo_(v), v)


def test_doubled_copies_and_doubles_the_rows_asked():
    w = torch.arange(12.0).view(6, 2)
    d = doubled(w, 2, 4)
    assert d.tolist() == [[0, 1], [2, 3], [8, 10], [12, 14], [8, 9], [10, 11]]
    assert w[2, 0] == 4  # the original is untouched
    assert torch.equal(doubled(w), 2 * w) and doubled(None) is None


T, B, I, H = 5, 3, 4, 6
LENGTHS = [5, 4, 2]
BATCH_SIZES = [sum(n > t for n in LENGTHS) for t in range(T)]


def rand(g, *shape):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).requires_grad_()


def kernel_case(name):
    """(function, positional args, keywords) for each kernel with a tanh, float64."""
    g = torch.Generator().manual_seed(1)
    if name.startswith("jordan"):  # O = 4 < H folds the output into the recurrence; O = 8 not
        O = 4 if name == "jordan_folded" else 8
        args = [rand(g, T, B, I), rand(g, B, O), rand(g, H, I), rand(g, H, O), rand(g, H)]
        return F.jordan, [*args, rand(g, O, H), rand(g, O)], {}
    gates = {"rnn_tanh": 1, "gru": 3, "gru_before": 3, "mgu": 2, "lstm": 4, "ln_lstm": 4, "ln_gru": 3}[name]
    states = [rand(g, B, H)] + ([rand(g, B, H)] if "lstm" in name else [])
    args = [rand(g, T, B, I), *states, rand(g, gates * H, I), rand(g, gates * H, H)]
    args += [rand(g, gates * H), rand(g, gates * H)]
    kw = {}
    if name.startswith("ln_"):
        kw = {site: (1 + rand(g, gates * H), rand(g, gates * H)) for site in ("ln_ih", "ln_hh")}
        if name == "ln_lstm":
            kw["ln_c"] = (1 + rand(g, H), rand(g, H))
    fn = {"rnn_tanh": F.rnn_tanh, "gru": F.gru, "gru_before": F.gru, "mgu": F.mgu, "lstm": F.lstm}.get(name)
    fn = fn or {"ln_lstm": F.ln_lstm, "ln_gru": F.ln_gru}[name]
    if name == "gru_before":
        kw["reset_after"] = False
    return fn, args, kw


KERNELS = ["rnn_tanh", "gru", "gru_before", "mgu", "lstm", "ln_lstm", "ln_gru", "jordan_folded", "jordan"]


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_with_torch_tanh_equal_the_loop(name, monkeypatch):
    """The fused kernels as they run where tanh is torch's (CUDA), here on CPU: fused = loop to
    1e-10 in float64, outputs and gradients, with and without lengths."""
    monkeypatch.setattr(_tanh, "TANH_VIA_SIGMOID", set())
    fn, args, kw = kernel_case(name)
    leaves = [a for a in args if a is not None] + [t for v in kw.values() if isinstance(v, tuple) for t in v]
    for bs in (None, BATCH_SIZES):
        results = []
        for impl in ("fused", "loop"):
            outs = fn(*args, **kw, batch_sizes=bs, impl=impl)
            loss = sum((o * o.detach().cos()).sum() for o in outs)
            results.append((*outs, *torch.autograd.grad(loss, leaves)))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
