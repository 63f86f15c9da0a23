"""rnnkit.RNN / LSTM / GRU against torch.nn with the same weights: outputs, final states and every
gradient, over random configurations (hypothesis), in float64 and float32."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def build(kind, I, H, dtype, **kw):
    """A torch module and ours with the same constructor arguments and weights."""
    if kind.startswith("rnn"):
        kw["nonlinearity"] = kind[4:]
    cls_t, cls_o = {
        "rnn": (torch.nn.RNN, rnnkit.RNN),
        "lstm": (torch.nn.LSTM, rnnkit.LSTM),
        "gru": (torch.nn.GRU, rnnkit.GRU),
    }[kind[:3] if kind.startswith("rnn") else kind]
    theirs = cls_t(I, H, dtype=dtype, **kw)
    ours = cls_o(I, H, dtype=dtype, **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def flat(out):
    """(output, state) -> list of tensors (PackedSequence data, h_n, c_n)."""
    y, state = out
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return [y, *(state if isinstance(state, tuple) else (state,))]


def compare(kind, cfg, dtype, rtol, atol, seed):
    g = torch.Generator().manual_seed(seed)
    I, H, L, T, B = cfg["I"], cfg["H"], cfg["layers"], cfg["T"], cfg["B"]
    kw = dict(num_layers=L, bias=cfg["bias"], batch_first=cfg["batch_first"], bidirectional=cfg["bidir"])
    if kind == "lstm" and cfg["proj"]:
        kw["proj_size"] = min(cfg["proj"], H - 1)
    theirs, ours = build(kind, I, H, dtype, **kw)
    D = 2 if cfg["bidir"] else 1
    out = kw.get("proj_size", 0) or H
    shape = (T, I) if cfg["unbatched"] else ((B, T, I) if cfg["batch_first"] else (T, B, I))
    x = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()
    state_shape = (L * D, out) if cfg["unbatched"] else (L * D, B, out)
    hx = None
    leaves = [x]
    if cfg["h0"]:
        h0 = torch.randn(*state_shape, generator=g, dtype=dtype).requires_grad_()
        leaves.append(h0)
        hx = h0
        if kind == "lstm":
            c_shape = state_shape[:-1] + (H,)
            c0 = torch.randn(*c_shape, generator=g, dtype=dtype).requires_grad_()
            leaves.append(c0)
            hx = (h0, c0)
    lengths = None
    if cfg["packed"] and not cfg["unbatched"]:
        lengths = torch.randint(1, T + 1, (B,), generator=g)

    def run(module, with_lengths):
        """Outputs (padded y, states), computed from a PackedSequence or from lengths=."""
        if lengths is None:
            return flat(module(x, hx))
        if with_lengths:  # ours only: the padded batch and lengths= (a list or a tensor)
            y, state = module(x, hx, lengths=lengths.tolist() if cfg["lengths_as_list"] else lengths)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=cfg["batch_first"], enforce_sorted=False)
            y, state = module(packed, hx)
            y = pad_packed_sequence(y, batch_first=cfg["batch_first"], total_length=T)[0]
        return [y, *(state if isinstance(state, tuple) else (state,))]

    res = []
    for module, with_lengths in ((theirs, False), (ours, cfg["lengths"])):
        outs = run(module, with_lengths)
        weights = [
            torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=dtype) for o in outs
        ]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
        res.append(outs + list(grads))
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


configs = st.fixed_dictionaries(
    {
        "I": st.integers(1, 5),
        "H": st.integers(2, 6),
        "layers": st.integers(1, 3),
        "T": st.integers(1, 6),
        "B": st.integers(1, 4),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidir": st.booleans(),
        "proj": st.integers(0, 3),
        "unbatched": st.booleans(),
        "h0": st.booleans(),
        "packed": st.booleans(),
        "lengths": st.booleans(),  # with "packed": ours gets the padded batch and lengths=
        "lengths_as_list": st.booleans(),
    }
)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(cfg=configs, seed=st.integers(0, 2**16))
def test_matches_torch_float64(kind, cfg, seed):
    compare(kind, cfg, torch.float64, rtol=1e-9, atol=1e-10, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(cfg=configs, seed=st.integers(0, 2**16))
def test_matches_torch_float32(kind, cfg, seed):
    compare(kind, cfg, torch.float32, rtol=1e-4, atol=2e-5, seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_larger_sizes(kind):
    """Sizes where the fused kernels switch to oneDNN products (where available). Sums over
    hundreds of float32 terms differ by summation order, so both float32 results are held against
    the float64 truth: ours must be about as accurate as torch's."""
    torch.manual_seed(0)
    theirs, ours = build(kind, 96, 128, torch.float32, num_layers=2, bidirectional=True)
    truth = build(kind, 96, 128, torch.float64, num_layers=2, bidirectional=True)[0]
    truth.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 64, 96)
    res = []
    for module, dtype in ((truth, torch.float64), (theirs, torch.float32), (ours, torch.float32)):
        xi = x.to(dtype).requires_grad_()
        outs = flat(module(xi))
        loss = sum((o * o).sum() for o in outs)
        res.append([t.double() for t in outs + list(torch.autograd.grad(loss, [xi, *module.parameters()]))])
    for t, a, b in zip(*res):
        err_theirs, err_ours = (a - t).abs().max().item(), (b - t).abs().max().item()
        assert err_ours <= 4 * err_theirs + 1e-5 * t.abs().max().item(), (err_ours, err_theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_both_ways(kind):
    kw = dict(num_layers=2, bidirectional=True, **({"proj_size": 3} if kind == "lstm" else {}))
    theirs, ours = build(kind, 4, 5, torch.float64, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())
    assert [[p.shape for p in w] for w in ours.all_weights] == [
        [p.shape for p in w] for w in theirs.all_weights
    ]
    ours.flatten_parameters()
    for p in ours.parameters():  # reverse: torch loads ours (after changing ours)
        torch.nn.init.normal_(p)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    for a, b in zip(flat(ours(x)), flat(theirs(x))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, rnnkit.MGU])
def test_default_init_bound(cls):
    torch.manual_seed(0)
    m = cls(7, 16, num_layers=2)
    bound = 1 / 16**0.5
    for p in m.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.8 * bound


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    theirs, ours = build(kind, 3, 4, torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    outs = [flat(ours(x)), flat(theirs(x))]
    for a, b in zip(*outs):
        assert a.shape == b.shape and a.requires_grad == b.requires_grad
    # a backward through them works as through torch's, with zero gradients
    for m, o in zip((ours, theirs), outs):
        x.grad = None
        sum(t.sum() for t in o).backward()
        assert x.grad is not None and not x.grad.any()
        assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
def test_dropout_between_layers(cls):
    torch.manual_seed(0)
    m = cls(4, 8, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    m.eval()
    y_eval = m(x)[0]
    ref = cls(4, 8, num_layers=2, dtype=torch.float64)  # no dropout
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(y_eval, ref(x)[0], rtol=0, atol=0)
    m.train()
    assert not torch.allclose(m(x)[0], y_eval)


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: rnnkit.RNN(3, 5, 2, bidirectional=True, impl=impl, dtype=torch.float64),
        lambda impl: rnnkit.LSTM(3, 5, 2, bidirectional=True, proj_size=2, impl=impl, dtype=torch.float64),
        lambda impl: rnnkit.GRU(3, 5, 2, bidirectional=True, impl=impl, dtype=torch.float64),
        lambda impl: rnnkit.GRU(3, 5, 2, reset_after=False, impl=impl, dtype=torch.float64),
        lambda impl: rnnkit.MGU(3, 5, 2, bidirectional=True, impl=impl, dtype=torch.float64),
    ],
)
def test_layer_loop_equals_fused(make):
    torch.manual_seed(0)
    fused, loop = make("fused"), make("loop")
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(6, 3, 3, dtype=torch.float64, requires_grad=True)
    res = []
    for m in (fused, loop):
        outs = flat(m(x, lengths=[6, 2, 4]))
        loss = sum((o * o).sum() for o in outs)
        res.append(outs + list(torch.autograd.grad(loss, [x, *m.parameters()])))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_double_backward_through_layer():
    torch.manual_seed(0)
    m = rnnkit.GRU(2, 3, impl="loop", dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: m(x)[0], [x])
    # a gradient penalty: d/dW of |dL/dx|^2, against central finite differences
    w = m.weight_hh_l0

    def penalty():
        (gx,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        return gx.pow(2).sum()

    (gw,) = torch.autograd.grad(penalty(), w)
    eps, i, j = 1e-6, 1, 2
    with torch.no_grad():
        w[i, j] += eps
    up = penalty().item()
    with torch.no_grad():
        w[i, j] -= 2 * eps
    down = penalty().item()
    with torch.no_grad():
        w[i, j] += eps
    assert abs(gw[i, j].item() - (up - down) / (2 * eps)) < 1e-6
    fused = rnnkit.GRU(2, 3, dtype=torch.float64)
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(fused(x)[0].sum(), x, create_graph=True)


def test_packed_output_matches_lengths_output():
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])
    y_packed, (h_p, c_p) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y_pad, _ = pad_packed_sequence(y_packed)
    y_len, (h_l, c_l) = m(x, lengths=lengths)
    torch.testing.assert_close(y_pad, y_len, rtol=0, atol=0)
    torch.testing.assert_close(h_p, h_l, rtol=0, atol=0)
    torch.testing.assert_close(c_p, c_l, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN, rnnkit.MGU])
def test_under_bfloat16_autocast(cls):
    """Inside autocast the recurrence runs in float32 on the bfloat16 activations it is given."""
    torch.manual_seed(0)
    proj, rnn, head = (
        torch.nn.Linear(5, 6),
        cls(6, 8, num_layers=2, bidirectional=True),
        torch.nn.Linear(16, 3),
    )
    x = torch.randn(7, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = proj(x)
        assert a.dtype == torch.bfloat16
        y, _ = rnn(a, lengths=[7, 3, 5, 1])
        out = head(y)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, rnn(a.float(), lengths=[7, 3, 5, 1])[0], rtol=0, atol=0)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rnn.parameters())


def test_lengths_as_numpy_integers():
    """lengths may hold numpy integers (what a user's data pipeline often gives), as torch's
    pack_padded_sequence accepts; bools are refused."""
    import numpy as np

    m = rnnkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(m(x, lengths=[np.int64(5), np.int32(3)])[0], m(x, lengths=[5, 3])[0])
    with pytest.raises(rnnkit.RnnkitTypeError, match="lengths"):
        m(x, lengths=[True, 3])


@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_functional_kernels_take_an_empty_batch(impl):
    """B=0 through the functional kernels: the shapes, as the layers give them."""
    from rnnkit import functional as F

    x = torch.randn(4, 0, 3)
    y, h, c = F.lstm(x, None, None, torch.randn(8, 3), torch.randn(8, 2), impl=impl)
    assert y.shape == (4, 0, 2) and h.shape == (0, 2) and c.shape == (0, 2)
    for kernel, G in ((F.gru, 3), (F.rnn_tanh, 1), (F.mgu, 2)):
        y, h = kernel(x, None, torch.randn(G * 2, 3), torch.randn(G * 2, 2), impl=impl)
        assert y.shape == (4, 0, 2) and h.shape == (0, 2)
