"""minGRU and minLSTM (Feng et al. 2024): the layers against loops written here from the paper's
equations, gradcheck of the hand-derived backwards, the parallel scan against the sequential one
(long sequences, float32), lengths / bidirectional / stacking against hand compositions, and the
errors at the public boundaries."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit.cells.minimal import MinGRUCell, MinLSTMCell, min_rnn
from rnnkit.cells.scan import linear_scan, log_linear_scan, scan
from rnnkit.errors import RnnkitTypeError, RnnkitUnsupportedError, RnnkitValueError
from rnnkit.layers.minimal import MinGRU, MinLSTM

D = torch.float64
LAYERS = {"gru": MinGRU, "lstm": MinLSTM}


def g(x):
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def paper_loop(cell, x, w, b, h=None, log_space=False):
    """The paper's sequential equations, one step at a time: x (T, B, I) -> (y, h_n)."""
    H = w.shape[0] // (2 if cell == "gru" else 3)
    if h is None:  # the paper's h_0 = g(0) in log space, zeros otherwise
        h = x.new_full((x.shape[1], H), 0.5 if log_space else 0.0)
    ys = []
    for x_t in x:
        pre = x_t @ w.T + b
        h_tilde = pre[:, -H:]
        if log_space:
            h_tilde = g(h_tilde)
        if cell == "gru":
            z = torch.sigmoid(pre[:, :H])
            h = (1 - z) * h + z * h_tilde
        else:
            f, i = torch.sigmoid(pre[:, :H]), torch.sigmoid(pre[:, H : 2 * H])
            h = f / (f + i) * h + i / (f + i) * h_tilde
        ys.append(h)
    return torch.stack(ys), h


def layer(cell, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return LAYERS[cell](*args, **kwargs).double()


# --- 1. the equations, and gradcheck of every hand-derived backward ---------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
@pytest.mark.parametrize("given_state", [False, True])
def test_matches_paper_equations(cell, log_space, mode, given_state):
    m = layer(cell, 3, 5, log_space=log_space, mode=mode)
    x = torch.randn(40, 4, 3, dtype=D) * 2  # h~ on both sides of 0 (both branches of g)
    h0 = torch.rand(1, 4, 5, dtype=D) if given_state else None
    w, b = m.weight_ih_l0, m.bias_ih_l0
    y, h_n = m(x, h0)
    y_ref, h_ref = paper_loop(cell, x, w, b, None if h0 is None else h0[0], log_space)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n[0], h_ref, rtol=1e-10, atol=1e-10)
    # the gradients of the fused path (projection, gates, scan) against autograd through the loop
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum() + h_n.sum(), (w, b))
    ref = torch.autograd.grad((y_ref * weights).sum() + h_ref.sum(), (w, b), retain_graph=True)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the fused kernel in pieces of 7 steps (state and gradient carried across) is the same
    kwargs = {"cell": cell, "log_space": log_space, "mode": mode, "block": 7}
    y_7, h_7 = min_rnn(x, None if h0 is None else h0[0], w, b, **kwargs)
    torch.testing.assert_close(y_7, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_7, h_ref, rtol=1e-10, atol=1e-10)
    grads_7 = torch.autograd.grad((y_7 * weights).sum() + h_7.sum(), (w, b))
    for got, want in zip(grads_7, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_gradcheck_scans(mode):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(23, 2, 3, dtype=D, generator=gen).requires_grad_()
    b = torch.randn(23, 2, 3, dtype=D, generator=gen).requires_grad_()
    h0 = torch.randn(2, 3, dtype=D, generator=gen).requires_grad_()
    # chunk_size=4: the blocked scan recurses (5 chunks of 4, then 1 of 4) and runs a tail of 3
    assert torch.autograd.gradcheck(lambda *t: linear_scan(*t, mode=mode, chunk_size=4), (a, b, h0))
    la = a.detach().log().requires_grad_()
    h0p = h0.detach().abs().requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: log_linear_scan(*t, mode=mode, chunk_size=4), (la, b, h0p))


@pytest.mark.parametrize("cell,gates", [("gru", 2), ("lstm", 3)])
@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_fused_kernel(cell, gates, log_space, mode, packed):
    # block=3: the 8 steps run as pieces of 3, 3 and 2, the state and its gradient carried across
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 3, 2, dtype=D, generator=gen) * 2).requires_grad_()
    w = torch.randn(gates * 4, 2, dtype=D, generator=gen).requires_grad_()
    b = torch.randn(gates * 4, dtype=D, generator=gen).requires_grad_()
    h0 = (torch.rand(3, 4, dtype=D, generator=gen) + 0.5).requires_grad_()  # > 0 for log space
    bs = [3, 3, 3, 3, 2, 2, 1, 1] if packed else None

    def f(*args):
        return min_rnn(*args, cell=cell, log_space=log_space, mode=mode, batch_sizes=bs, block=3)

    assert torch.autograd.gradcheck(f, (x, h0, w, b))


def test_log_space_zero_state_has_finite_gradient():
    m = layer("gru", 3, 5, log_space=True)
    h0 = torch.zeros(1, 2, 5, dtype=D, requires_grad=True)  # log h0 = -inf inside the scan
    x = torch.randn(6, 2, 3, dtype=D)
    (dh0,) = torch.autograd.grad(m(x, h0)[0].sum(), h0)
    (ref,) = torch.autograd.grad(paper_loop("gru", x, m.weight_ih_l0, m.bias_ih_l0, h0[0], True)[0].sum(), h0)
    assert torch.isfinite(dh0).all()
    torch.testing.assert_close(dh0, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_the_loop(reverse):
    a, b, h0 = torch.rand(101, 2, 3, dtype=D), torch.randn(101, 2, 3, dtype=D), torch.randn(2, 3, dtype=D)
    ref, h = torch.empty_like(b), h0
    for t in reversed(range(101)) if reverse else range(101):  # h_t = a_t h_{t-1} + b_t (or h_{t+1})
        h = ref[t] = a[t] * h + b[t]
    for kwargs in ({}, {"chunk_size": 3}, {"chunk_size": 10}, {"mode": "sequential"}):
        torch.testing.assert_close(scan(a, b, h0, reverse=reverse, **kwargs), ref, rtol=1e-12, atol=1e-12)
        logs = scan(a.log(), b.abs().log(), h0.abs().log(), log_space=True, reverse=reverse, **kwargs)
        ref_pos, h = torch.empty_like(b), h0.abs()
        for t in reversed(range(101)) if reverse else range(101):
            h = ref_pos[t] = a[t] * h + b[t].abs()
        torch.testing.assert_close(logs.exp(), ref_pos, rtol=1e-12, atol=1e-12)


# --- 2. parallel = sequential, chunked with a carried state = one run, long sequences ---------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
def test_parallel_equals_sequential_float32_long(cell, log_space):
    torch.manual_seed(0)
    m = LAYERS[cell](4, 8, log_space=log_space)
    x = torch.randn(4096, 2, 4, requires_grad=True)
    y_par, h_par = m(x)
    m.mode = "sequential"
    y_seq, h_seq = m(x)
    torch.testing.assert_close(y_par, y_seq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_par, h_seq, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(y_par)
    (dx_seq,) = torch.autograd.grad((y_seq * weights).sum(), x)
    m.mode = "parallel"
    (dx_par,) = torch.autograd.grad((m(x)[0] * weights).sum(), x)
    torch.testing.assert_close(dx_par, dx_seq, rtol=1e-5, atol=1e-6)
    # the fused kernel in pieces of 100 steps (the CPU default on larger batches) is one run
    y_blk, h_blk = min_rnn(x, None, m.weight_ih_l0, m.bias_ih_l0, cell=cell, log_space=log_space, block=100)
    torch.testing.assert_close(y_blk, y_par, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_blk, h_par[0], rtol=1e-5, atol=1e-6)
    (dx_blk,) = torch.autograd.grad((y_blk * weights).sum(), x)
    torch.testing.assert_close(dx_blk, dx_seq, rtol=1e-5, atol=1e-6)
    # a long sequence in two chunks, the first's h_n carried in as hx, is one run
    y1, h1 = m(x[:1500])
    y2, h2 = m(x[1500:], h1)
    torch.testing.assert_close(torch.cat([y1, y2]), y_par, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h_par, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("log_space", [False, True])
def test_stable_at_100k_steps(log_space):
    torch.manual_seed(0)
    m = MinGRU(3, 32, log_space=log_space)
    x = torch.randn(100_000, 2, 3)
    with torch.no_grad():
        y_par, h_par = m(x)
        m.mode = "sequential"
        y_seq, h_seq = m(x)
    assert torch.isfinite(y_par).all()
    torch.testing.assert_close(y_par, y_seq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_par, h_seq, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
def test_step_streams_the_sequence(cell, log_space):
    m = layer(cell, 3, 5, num_layers=2, log_space=log_space)
    x = torch.randn(9, 4, 3, dtype=D)
    y, h_n = m(x)
    h, outs = None, []
    for x_t in x:
        out, h = m.step(x_t, h)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_n, rtol=1e-12, atol=1e-12)
    out, h1 = m.step(x[0, 0], None)  # unbatched
    torch.testing.assert_close(out, y[0, 0], rtol=1e-12, atol=1e-12)
    assert h1.shape == (2, 5)


@pytest.mark.parametrize("cls,cell", [(MinGRUCell, "gru"), (MinLSTMCell, "lstm")])
@pytest.mark.parametrize("log_space", [False, True])
def test_cells_are_one_step_of_the_layer(cls, cell, log_space):
    m = layer(cell, 3, 5, log_space=log_space)
    c = cls(3, 5, log_space=log_space).double()
    c.weight_ih.data.copy_(m.weight_ih_l0.data)
    c.bias_ih.data.copy_(m.bias_ih_l0.data)
    x, h0 = torch.randn(1, 4, 3, dtype=D), torch.rand(1, 4, 5, dtype=D)
    torch.testing.assert_close(c(x[0], h0[0]), m(x, h0)[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c(x[0, 1]), m(x[:, 1:2])[1][0, 0], rtol=1e-12, atol=1e-12)


# --- 3. lengths, bidirectional, stacking against running alone / composing by hand -----------


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_lengths_equal_each_sequence_alone(cell, log_space, mode):
    m = layer(cell, 3, 5, num_layers=2, bidirectional=True, log_space=log_space, mode=mode)
    lens = [7, 3, 5, 1, 7]
    x = torch.randn(8, len(lens), 3, dtype=D)  # padded one step past the longest
    h0 = torch.rand(4, len(lens), 5, dtype=D)
    y, h_n = m(x, h0, lengths=lens)
    assert y.shape == (8, len(lens), 10) and h_n.shape == (4, len(lens), 5)
    for i, n in enumerate(lens):
        y_i, h_i = m(x[:n, i : i + 1], h0[:, i : i + 1].contiguous())
        torch.testing.assert_close(y[:n, i], y_i[:, 0], rtol=1e-12, atol=1e-12)
        assert (y[n:, i] == 0).all()
        torch.testing.assert_close(h_n[:, i], h_i[:, 0], rtol=1e-12, atol=1e-12)
    # the same batch as a PackedSequence, and batch_first
    packed = pack_padded_sequence(x, torch.tensor(lens), enforce_sorted=False)
    y_p, h_p = m(packed, h0)
    torch.testing.assert_close(
        y_p.data, pack_padded_sequence(y, torch.tensor(lens), enforce_sorted=False).data
    )
    torch.testing.assert_close(h_p, h_n)
    m.batch_first = True
    y_b, h_b = m(x.transpose(0, 1), h0, lengths=lens)
    torch.testing.assert_close(y_b.transpose(0, 1), y)
    torch.testing.assert_close(h_b, h_n)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
def test_bidirectional_stacked_dropout_is_the_hand_composition(cell, log_space):
    m = layer(cell, 3, 5, num_layers=2, bidirectional=True, dropout=0.3, log_space=log_space)
    m.train()
    x = torch.randn(6, 4, 3, dtype=D)
    h0 = torch.rand(4, 4, 5, dtype=D)
    torch.manual_seed(7)
    y, h_n = m(x, h0)

    def direction(inp, k, rev, h):
        suffix = "_reverse" if rev else ""
        w, b = getattr(m, f"weight_ih_l{k}{suffix}"), getattr(m, f"bias_ih_l{k}{suffix}")
        out, h_last = paper_loop(cell, inp.flip(0) if rev else inp, w, b, h, log_space)
        return (out.flip(0) if rev else out), h_last

    torch.manual_seed(7)
    inp, finals = x, []
    for k in range(2):
        (fw, h_f), (bw, h_b) = direction(inp, k, False, h0[2 * k]), direction(inp, k, True, h0[2 * k + 1])
        inp, finals = torch.cat([fw, bw], dim=2), finals + [h_f, h_b]
        if k == 0:  # dropout between the layers, drawn as the layer draws it
            inp = torch.nn.functional.dropout(inp, 0.3, training=True)
    torch.testing.assert_close(y, inp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, torch.stack(finals), rtol=1e-10, atol=1e-10)


def test_parameters_as_torch_gru():
    m = MinLSTM(3, 5, num_layers=2, bidirectional=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (15, 3),
        "bias_ih_l0": (15,),
        "weight_ih_l0_reverse": (15, 3),
        "bias_ih_l0_reverse": (15,),
        "weight_ih_l1": (15, 10),
        "bias_ih_l1": (15,),
        "weight_ih_l1_reverse": (15, 10),
        "bias_ih_l1_reverse": (15,),
    }
    assert all(p.abs().max() <= 1 / math.sqrt(5) for p in m.parameters())
    assert [n for n, _ in MinGRU(3, 5, bias=False).named_parameters()] == ["weight_ih_l0"]
    y, h = MinGRU(3, 5, bias=False)(torch.randn(4, 3))  # unbatched
    assert y.shape == (4, 5) and h.shape == (1, 5)


def test_functional_kernel_with_batch_sizes():
    torch.manual_seed(0)
    x, w, b = torch.randn(5, 3, 2, dtype=D), torch.randn(4, 2, dtype=D), torch.randn(4, dtype=D)
    y, h = min_rnn(x, None, w, b, batch_sizes=[3, 3, 2, 2, 1])
    for i, n in enumerate([5, 4, 2]):
        y_i, h_i = paper_loop("gru", x[:n, i : i + 1], w, b)
        torch.testing.assert_close(y[:n, i : i + 1], y_i, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h[i], h_i[0], rtol=1e-12, atol=1e-12)


# --- 4. errors at the public boundaries -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"input_size": 0}, RnnkitValueError, "input_size must be >= 1, got 0"),
        ({"hidden_size": "8"}, RnnkitTypeError, "hidden_size must be an int, got str"),
        ({"num_layers": 0}, RnnkitValueError, "num_layers must be >= 1"),
        ({"bias": 1}, RnnkitTypeError, "bias must be a bool, got int"),
        ({"batch_first": None}, RnnkitTypeError, "batch_first must be a bool"),
        ({"bidirectional": "yes"}, RnnkitTypeError, "bidirectional must be a bool"),
        ({"log_space": 1}, RnnkitTypeError, "log_space must be a bool, got int"),
        ({"dropout": 1.5}, RnnkitValueError, r"dropout must be in \[0, 1\].*got 1.5"),
        ({"dropout": "0.1"}, RnnkitTypeError, "dropout must be a number"),
        ({"mode": "fast"}, RnnkitValueError, "mode must be one of 'parallel', 'sequential', got 'fast'"),
    ],
)
@pytest.mark.parametrize("cls", [MinGRU, MinLSTM])
def test_bad_constructor_arguments(cls, kwargs, error, match):
    args = {"input_size": 3, "hidden_size": 5, **kwargs}
    with pytest.raises(error, match=match):
        cls(**args)


def test_bad_forward_and_step_arguments():
    m, x = MinGRU(3, 5), torch.randn(6, 2, 3)
    cases = [
        (lambda: m(x.tolist()), RnnkitTypeError, "input must be a torch.Tensor"),
        (lambda: m(x[None]), RnnkitValueError, "input must be 2-D .* or 3-D batched, got 4-D"),
        (
            lambda: m(torch.randn(6, 2, 4)),
            RnnkitValueError,
            r"input must have 3 features .* got shape \(6, 2, 4\)",
        ),
        (lambda: m(x.double()), RnnkitValueError, "input has dtype torch.float64 but the layer's parameters"),
        (lambda: m(x, torch.zeros(2, 2, 5)), RnnkitValueError, r"hx must have shape \(1, 2, 5\)"),
        (lambda: m(x, torch.zeros(1, 2, 5).double()), RnnkitValueError, "hx has dtype torch.float64"),
        (lambda: m(x, lengths=[6, 7]), RnnkitValueError, r"lengths must each be in 1..6"),
        (lambda: m(x, lengths=[6]), RnnkitValueError, r"lengths must have one entry per batch element \(2\)"),
        (lambda: m.step(x), RnnkitValueError, "input must be 1-D or 2-D, got 3-D"),
        (lambda: m.step(x[0], torch.zeros(2, 2, 5)), RnnkitValueError, r"hx must have shape \(1, 2, 5\)"),
        (
            lambda: MinGRU(3, 5, bidirectional=True).step(x[0]),
            RnnkitUnsupportedError,
            "bidirectional layer",
        ),
        (
            lambda: MinGRU(3, 5, log_space=True)(x, -torch.ones(1, 2, 5)),
            RnnkitValueError,
            "hx must be >= 0 with log_space=True",
        ),
        (lambda: MinGRUCell(3, 5)(x[0], torch.zeros(2, 4)), RnnkitValueError, r"hx must have shape \(2, 5\)"),
        (lambda: min_rnn(x, None, torch.randn(10, 3), cell="rnn"), RnnkitValueError, "cell must be one of"),
        (lambda: min_rnn(x, None, torch.randn(9, 3), cell="gru"), RnnkitValueError, "w_ih must have 2"),
        (lambda: min_rnn(x, None, torch.randn(10, 3), block=0), RnnkitValueError, "block must be >= 1"),
        (lambda: min_rnn(x, None, torch.randn(10, 3), block=2.5), RnnkitTypeError, "block must be an int"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("layer_class", [MinGRU, MinLSTM])
def test_batch_first_input_gradient(layer_class):
    """A batch-first input reaches the kernel as a transposed (non-contiguous) view; its gradient
    must equal that of the same input given time-major (the backward viewed dx's rows and failed)."""
    torch.manual_seed(0)
    first = layer_class(3, 4, batch_first=True, dtype=torch.float64)
    major = layer_class(3, 4, dtype=torch.float64)
    major.load_state_dict(first.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    (dx_first,) = torch.autograd.grad(first(x)[0].square().sum(), x)
    x_major = x.detach().transpose(0, 1).contiguous().requires_grad_()
    (dx_major,) = torch.autograd.grad(major(x_major)[0].square().sum(), x_major)
    torch.testing.assert_close(dx_first, dx_major.transpose(0, 1), rtol=0, atol=1e-12)
