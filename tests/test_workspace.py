"""The fused kernels' buffer pool (rnnkit.cells.speed.workspace): a buffer is reused only once nothing
references its storage, the pool stays within its bound, and kernels that draw from it give the
same numbers call after call while the caller's earlier outputs stay intact."""

import gc
import weakref

import pytest
import torch

import rnnkit
from rnnkit.cells.speed import workspace
from rnnkit.errors import RnnkitTypeError, RnnkitValueError

pytestmark = pytest.mark.skipif(workspace._use_count is None, reason="this torch has no storage use count")


@pytest.fixture
def small_pool():
    old = workspace.limit()
    workspace.release()
    yield
    workspace.set_limit(old)


def test_reused_only_when_unreferenced(small_pool):
    like = torch.empty(0)
    a = workspace.empty((64, 32), like)
    ptr = a.data_ptr()
    view = a[3]  # a view keeps the storage lent
    del a
    b = workspace.empty((64, 32), like)
    assert b.data_ptr() != ptr
    del view
    c = workspace.empty((64, 32), like)
    assert c.data_ptr() == ptr
    c.fill_(7.0)
    assert b.shape == (64, 32) and c.shape == (64, 32) and c.is_contiguous()


def test_zeroed_on_request_and_size_tolerance(small_pool):
    like = torch.empty(0, dtype=torch.float64)
    a = workspace.empty((100,), like)
    a.fill_(3.0)
    ptr = a.data_ptr()
    del a
    b = workspace.empty((10, 6), like, zero=True)  # 480 bytes fit the idle 800 (< twice as many)
    assert (
        b.data_ptr() == ptr
        and b.dtype == torch.float64
        and torch.equal(b, torch.zeros(10, 6, dtype=torch.float64))
    )
    del b
    c = workspace.empty((20,), like)  # 160 bytes: the 800-byte storage is too big to lend for it
    assert c.data_ptr() != ptr


def test_bounded(small_pool):
    like = torch.empty(0)
    workspace.set_limit(3 * 4096 * 4)
    kept = [workspace.empty((4096,), like) for _ in range(5)]  # past the bound: plain tensors
    held, idle = workspace.held()
    assert held <= 3 * 4096 * 4 and idle == 0
    del kept
    assert workspace.held()[1] == workspace.held()[0] > 0
    workspace.release()
    assert workspace.held() == (0, 0)
    workspace.set_limit(0)
    t = workspace.empty((8,), like)
    assert workspace.held() == (0, 0) and t.shape == (8,)


def test_public_names():
    assert rnnkit.cells.release_workspace is workspace.release
    assert rnnkit.cells.set_workspace_limit is workspace.set_limit
    assert rnnkit.cells.workspace_held is workspace.held


def test_set_limit_errors():
    with pytest.raises(RnnkitTypeError, match="nbytes must be an int"):
        workspace.set_limit(1.5)
    with pytest.raises(RnnkitValueError, match="nbytes must be >= 0, got -1"):
        workspace.set_limit(-1)


def test_meta_and_subclasses_allocate_plainly(small_pool):
    t = workspace.empty((3, 4), torch.empty(0, device="meta"))
    assert t.device.type == "meta" and t.shape == (3, 4)

    class Sub(torch.Tensor):
        pass

    u = workspace.empty((5,), torch.empty(0).as_subclass(Sub))
    assert u.shape == (5,) and workspace.held() == (0, 0)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
def test_kernels_repeat_and_keep_earlier_outputs(cls, layer_norm):
    torch.manual_seed(0)
    m = cls(8, 16, layer_norm=layer_norm)
    x1, x2 = torch.randn(30, 4, 8), torch.randn(30, 4, 8)
    y1, _ = m(x1)
    first = y1.detach().clone()
    (y1.sum()).backward(retain_graph=True)
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y2, _ = m(x2)  # buffers of the second call must not be the first call's (still referenced)
    y2.sum().backward()
    assert torch.equal(y1.detach(), first)
    m.zero_grad()
    y1.sum().backward()  # the retained graph still holds its saved buffers intact
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), g1))
    y3, _ = m(x1)
    assert torch.equal(y3.detach(), first)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
def test_layer_norm_kernels_free_their_graph_without_the_cycle_collector(cls):
    """ctx must not hold its outputs as plain attributes: y -> grad_fn -> ctx -> y would be a
    reference cycle, keeping every buffer of the call until a cycle collection."""
    m = cls(8, 16, layer_norm=True)
    x = torch.randn(20, 3, 8)
    enabled = gc.isenabled()
    gc.disable()
    try:
        y, _ = m(x)
        node = weakref.ref(y.grad_fn)
        y.sum().backward()
        del y, _
        assert node() is None
    finally:
        if enabled:
            gc.enable()


def test_idle_buffers_make_room_oldest_first(small_pool):
    like = torch.empty(0)
    workspace.set_limit(3 * 4096 * 4)
    bufs = [workspace.empty((4096,), like) for _ in range(3)]
    ptrs = [b.data_ptr() for b in bufs]
    del bufs
    small = workspace.empty((1024,), like)  # fits no idle buffer: the oldest is dropped for it
    assert workspace.held() == (2 * 4096 * 4 + 1024 * 4, 2 * 4096 * 4)
    again = [workspace.empty((4096,), like) for _ in range(2)]
    assert {t.data_ptr() for t in again} == set(ptrs[1:]) and small.shape == (1024,)


POISONED = {
    "lstm": lambda impl: rnnkit.LSTM(
        3, 5, 2, bidirectional=True, proj_size=4, dtype=torch.float64, impl=impl
    ),
    "gru": lambda impl: rnnkit.GRU(3, 5, 2, bidirectional=True, dtype=torch.float64, impl=impl),
    "gru_reset_before": lambda impl: rnnkit.GRU(3, 5, reset_after=False, dtype=torch.float64, impl=impl),
    "rnn": lambda impl: rnnkit.RNN(3, 5, 2, dtype=torch.float64, impl=impl),
    "mgu": lambda impl: rnnkit.MGU(3, 5, 2, dtype=torch.float64, impl=impl),
    "ln_lstm": lambda impl: rnnkit.LSTM(3, 5, 2, layer_norm=True, dtype=torch.float64, impl=impl),
    "ln_gru": lambda impl: rnnkit.GRU(3, 5, 2, layer_norm=True, dtype=torch.float64, impl=impl),
}


@pytest.mark.parametrize("name", list(POISONED))
@pytest.mark.parametrize("lengths", [None, [7, 5, 3, 1]])
def test_kernels_never_read_a_lent_buffer_before_writing_it(name, lengths, monkeypatch):
    """Every pooled buffer is lent full of NaN (what a reused buffer may hold): the fused kernels
    must still equal the step equations under autograd (impl="loop"), outputs and gradients."""
    torch.manual_seed(0)
    fused, loop = POISONED[name]("fused"), POISONED[name]("loop")
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    lend = workspace._POOL.lend
    monkeypatch.setattr(workspace._POOL, "lend", lambda shape, dtype: lend(shape, dtype).fill_(float("nan")))
    results = []
    for m in (fused, loop):
        xi = x.clone().requires_grad_()
        y, state = m(xi, lengths=lengths)
        states = list(state) if isinstance(state, tuple) else [state]
        (y.sum() + sum((s * s).sum() for s in states)).backward()
        results.append([y, *states, xi.grad, *(p.grad for p in m.parameters())])
    for got, want in zip(*results):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
