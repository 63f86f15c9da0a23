"""The fused backward passes are written by hand: while they run, autograd and torch's own RNN
kernels are made to raise, and every aten op they dispatch is recorded and checked."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rnnkit import functional as F

T, B, I, H = 6, 3, 4, 5


def _args(gates, n_states=1, proj=None):
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    out = proj or H
    states = [r(B, out)] + ([r(B, H)] if n_states == 2 else [])
    return [r(T, B, I), *states, r(gates * H, I), r(gates * H, out), r(gates * H), r(gates * H)]


CASES = {
    "rnn_tanh": (F.rnn_tanh, lambda: _args(1), {}),
    "rnn_relu": (F.rnn_relu, lambda: _args(1), {}),
    "lstm": (F.lstm, lambda: _args(4, 2), {}),
    "gru": (F.gru, lambda: _args(3), {}),
    "gru_reset_before": (F.gru, lambda: _args(3), {"reset_after": False}),
    "mgu": (F.mgu, lambda: _args(2), {}),
}

FORBIDDEN_VF = [
    "rnn_tanh",
    "rnn_relu",
    "lstm",
    "gru",
    "rnn_tanh_cell",
    "rnn_relu_cell",
    "lstm_cell",
    "gru_cell",
]


def _raiser(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called inside a hand-written backward")

    return fail


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", list(CASES))
def test_backward_is_hand_written(case, monkeypatch):
    fn, make, kwargs = CASES[case]
    args = make()
    outs = fn(*args, **kwargs, batch_sizes=[3, 3, 2, 2, 1, 1], impl="fused")
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum() for o in outs)
    grad = torch.autograd.grad  # the engine entry point we use ourselves, taken before patching
    for name in FORBIDDEN_VF:
        if hasattr(torch._VF, name):
            monkeypatch.setattr(torch._VF, name, _raiser(f"torch._VF.{name}"))
    for mod in (
        torch.nn.LSTM,
        torch.nn.GRU,
        torch.nn.RNN,
        torch.nn.LSTMCell,
        torch.nn.GRUCell,
        torch.nn.RNNCell,
    ):
        monkeypatch.setattr(mod, "forward", _raiser(f"{mod.__name__}.forward"))
    monkeypatch.setattr(torch.autograd, "grad", _raiser("torch.autograd.grad"))
    monkeypatch.setattr(torch.autograd, "backward", _raiser("torch.autograd.backward"))
    monkeypatch.setattr(torch.Tensor, "backward", _raiser("Tensor.backward"))
    with _RecordOps() as rec:
        grads = grad(loss, args)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    rnn_ops = [op for op in rec.ops if any(k in op for k in ("lstm", "gru", "rnn", "_thnn"))]
    assert rec.ops, "the dispatch recorder saw no ops: the check itself is broken"
    assert not rnn_ops, f"torch RNN kernels dispatched in backward: {rnn_ops}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernels_pause_the_cycle_collector_and_restore_it(case):
    import gc

    fn, make, kwargs = CASES[case]
    seen = []
    real = torch.mm

    def mm(*args, **kw):  # every kernel's loop runs recurrent products
        seen.append(gc.isenabled())
        return real(*args, **kw)

    args = make()
    was = gc.isenabled()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            seen.clear()
            torch.mm = mm
            try:
                out = fn(*args, **kwargs)
                (out[0].sum()).backward()
            finally:
                torch.mm = real
            assert gc.isenabled() is enabled  # the caller's state, on or off, comes back
            assert seen and not any(seen)  # off inside the forward and the backward
    finally:
        (gc.enable if was else gc.disable)()


def test_cycle_collector_comes_back_after_an_error():
    import gc

    from rnnkit.cells.speed.gc_pause import without_cycle_gc

    @without_cycle_gc
    def fails():
        assert not gc.isenabled()
        raise RuntimeError("inside the kernel")

    was = gc.isenabled()
    gc.enable()
    try:
        with pytest.raises(RuntimeError, match="inside the kernel"):
            fails()
        assert gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


def test_every_fused_kernel_is_wrapped():
    """Each autograd.Function of rnnkit.cells pauses the collector in forward and backward: a
    kernel added later without it would bring the full collections back."""
    import importlib
    import pkgutil

    import rnnkit.cells

    kernels = []
    for info in pkgutil.iter_modules(rnnkit.cells.__path__):
        module = importlib.import_module(f"rnnkit.cells.{info.name}")
        kernels += [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, torch.autograd.Function)
            if v.__module__ == module.__name__
        ]
    assert len(kernels) >= 10, [k.__name__ for k in kernels]  # the search itself found them
    for k in kernels:
        for name in ("forward", "backward"):
            assert getattr(vars(k)[name].__func__, "__wrapped__", None), f"{k.__name__}.{name}"
