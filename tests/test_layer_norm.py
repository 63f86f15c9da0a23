"""Layer-normalised LSTM and GRU (Ba et al. 2016): gradcheck of the fused kernels, fused against
the step equations and against a loop written here from the equations with F.layer_norm, the
layers against a per-sequence composition, the cells against one step of the layer, and errors."""

import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.cells import _layernorm as layernorm
from rnnkit.cells._layernorm import normalize, normalize_backward
from rnnkit.cells.speed.record import StepRecord
from rnnkit.functional import ln_gru, ln_lstm

D = torch.float64
T, B, I, H, P = 5, 4, 3, 6, 4
LENGTHS = [5, 4, 4, 2]  # sorted, as batch_sizes needs
BATCH_SIZES = [sum(n > t for n in LENGTHS) for t in range(T)]


def rand(g, *shape, scale=0.5):
    return (torch.randn(*shape, generator=g, dtype=D) * scale).requires_grad_()


def lstm_args(seed=0, proj=None, bias=True):
    """Positional (x, h0, c0, w_ih, w_hh, b_ih, b_hh) and keywords (ln_*, w_hr), random, float64.
    The LN gains and shifts are random too, so that a swapped gain or shift shows."""
    g = torch.Generator().manual_seed(seed)
    out = proj or H
    args = [rand(g, T, B, I), rand(g, B, out), rand(g, B, H), rand(g, 4 * H, I), rand(g, 4 * H, out)]
    args += [rand(g, 4 * H), rand(g, 4 * H)] if bias else [None, None]
    kw = {
        "ln_ih": (1 + rand(g, 4 * H, scale=0.2), rand(g, 4 * H)),
        "ln_hh": (1 + rand(g, 4 * H, scale=0.2), rand(g, 4 * H)),
        "ln_c": (1 + rand(g, H, scale=0.2), rand(g, H)),
        "w_hr": rand(g, proj, H) if proj else None,
    }
    return args, kw


def gru_args(seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    args = [rand(g, T, B, I), rand(g, B, H), rand(g, 3 * H, I), rand(g, 3 * H, H)]
    args += [rand(g, 3 * H), rand(g, 3 * H)] if bias else [None, None]
    kw = {
        "ln_ih": (1 + rand(g, 3 * H, scale=0.2), rand(g, 3 * H)),
        "ln_hh": (1 + rand(g, 3 * H, scale=0.2), rand(g, 3 * H)),
    }
    return args, kw


def leaves(args, kw):
    flat = list(args) + [t for v in kw.values() for t in (v if isinstance(v, tuple) else (v,))]
    return [t for t in flat if t is not None]


# --- the reference: the equations, one sequence at a time, with torch's layer_norm ------------


def ln(v, pair):
    return F.layer_norm(v, (v.shape[-1],), pair[0], pair[1], 1e-5)


def ref_lstm(x, h, c, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c, w_hr=None):
    """x (L, I), h (P,), c (H,) -> (y (L, P), h, c): the module docstring's equations."""
    ys = []
    for x_t in x:
        pre = ln(w_ih @ x_t, ln_ih) + ln(w_hh @ h, ln_hh)
        pre = pre + (0 if b_ih is None else b_ih) + (0 if b_hh is None else b_hh)
        i, f, g, o = pre.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln(c, ln_c))
        h = h if w_hr is None else w_hr @ h
        ys.append(h)
    return torch.stack(ys), h, c


def ref_gru(x, h, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh):
    ys = []
    for x_t in x:
        xr, xz, xn = (ln(w_ih @ x_t, ln_ih) + (0 if b_ih is None else b_ih)).chunk(3)
        hr, hz, hn = (ln(w_hh @ h, ln_hh) + (0 if b_hh is None else b_hh)).chunk(3)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        ys.append(h)
    return torch.stack(ys), h


def per_sequence(ref, x, states, lengths, **w):
    """Run `ref` on each sequence alone for its own length; pad outputs with zeros; (y, *finals)."""
    ys, finals = [], []
    for b, n in enumerate(lengths):
        y, *fin = ref(x[:n, b], *(s[b] for s in states), **w)
        ys.append(torch.cat([y, y.new_zeros(x.shape[0] - n, y.shape[1])]))
        finals.append(fin)
    return (torch.stack(ys, 1), *(torch.stack(f) for f in zip(*finals)))


def lstm_ref(args, kw, lengths):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
    w = dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, **kw)
    return per_sequence(ref_lstm, x, (h0, c0), lengths, **w)


def gru_ref(args, kw, lengths):
    x, h0, w_ih, w_hh, b_ih, b_hh = args
    return per_sequence(ref_gru, x, (h0,), lengths, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, **kw)


# --- 1. gradcheck of the fused kernels --------------------------------------------------------
# fast_mode (random projections of the Jacobian) keeps these quick; below, the gradients of a loss
# through every output are checked to 1e-10 against the step equations under autograd.


def test_layer_norm_backward_is_the_formula():
    """The LN backward of `_layernorm` (torch's fused kernel) against the formula written out."""
    g = torch.Generator().manual_seed(3)
    v, dy, gain = rand(g, 7, 12).detach(), rand(g, 7, 12).detach(), rand(g, 12).detach()
    vhat, mean, rstd = normalize(v)
    dv = normalize_backward(dy, v, mean, rstd, gain)[0]
    dvhat = dy * gain
    want = rstd * (dvhat - dvhat.mean(-1, keepdim=True) - vhat * (dvhat * vhat).mean(-1, keepdim=True))
    torch.testing.assert_close(dv, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "proj, bias, batch_sizes", [(None, True, None), (P, True, BATCH_SIZES), (None, False, BATCH_SIZES)]
)
def test_gradcheck_ln_lstm(proj, bias, batch_sizes):
    args, kw = lstm_args(proj=proj, bias=bias)
    inputs = leaves(args, kw)
    n = len([a for a in args if a is not None])

    def f(*t):
        a = list(t[:n]) + ([None, None] if not bias else [])
        k = t[n:]
        return ln_lstm(
            *a, ln_ih=k[0:2], ln_hh=k[2:4], ln_c=k[4:6], w_hr=k[6] if proj else None, batch_sizes=batch_sizes
        )

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("bias, batch_sizes", [(True, None), (False, BATCH_SIZES)])
def test_gradcheck_ln_gru(bias, batch_sizes):
    args, kw = gru_args(bias=bias)
    inputs = leaves(args, kw)
    n = len([a for a in args if a is not None])

    def f(*t):
        a = list(t[:n]) + ([None, None] if not bias else [])
        return ln_gru(*a, ln_ih=t[n : n + 2], ln_hh=t[n + 2 : n + 4], batch_sizes=batch_sizes)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize("piece", [10**6, 40])  # one piece, and pieces of a few rows or steps
@pytest.mark.parametrize("strided", [False, True])
def test_pooled_layer_norm_equals_one_call(piece, strided, monkeypatch):
    """`normalize` and `normalize_backward` piece by piece (pooled) equal one call of torch's
    kernel on contiguous copies, for every mask, also where dy and v are blocks of step records
    (strided: their rows do not flatten to one stride)."""
    monkeypatch.setattr(layernorm, "PIECE_ELEMS", piece)
    g = torch.Generator().manual_seed(5)
    steps, rows, n = 7, 3, 8
    v, dy = rand(g, steps, rows, n).detach(), rand(g, steps, rows, n).detach()
    gain, shift = rand(g, n).detach(), rand(g, n).detach()
    if strided:
        rec = StepRecord(rows, dy=n, pad=2, v=n)
        records = torch.randn(steps, rec.size, dtype=D, generator=g)
        rec.block(records, "dy").copy_(dy)
        rec.block(records, "v").copy_(v)
        dy, v = rec.block(records, "dy"), rec.block(records, "v")
        assert not dy.is_contiguous() and not v.is_contiguous()
    want = torch.native_layer_norm(v.contiguous(), (n,), gain, shift, 1e-5)
    for got, w in zip(normalize(v, gain, shift, pooled=True), want):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-12)
    mean, rstd = want[1:]
    for mask in [(True, True, True), (True, False, False), (False, True, True), (False, True, False)]:
        got = normalize_backward(dy, v, mean, rstd, gain, shift, mask, pooled=True)
        ref = normalize_backward(dy.contiguous(), v.contiguous(), mean, rstd, gain, shift, mask)
        for a, b in zip(got, ref):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_step_record_blocks():
    """Blocks follow each other, each a contiguous (rows, width) matrix, its first rows too."""
    rec = StepRecord(3, a=2, b=4, c=1)
    assert rec.size == 3 * (2 + 4 + 1)
    flat = torch.arange(float(rec.size))
    assert rec.block(flat, "b").tolist() == flat[6:18].view(3, 4).tolist()
    assert rec.block(flat, "b", 2).is_contiguous() and rec.block(flat, "b", 2).shape == (2, 4)
    assert flat[rec.span("b", "c")].tolist() == flat[6:].tolist()
    records = torch.zeros(5, rec.size)
    rec.block(records, "c")[2] = 1.0  # (T, B, width) views of a sequence of records
    assert records[2, 18:21].tolist() == [1.0, 1.0, 1.0] and records.sum() == 3


def test_ln_lstm_backward_twice_and_without_grad():
    """The fused LN-LSTM's backward leaves what it saved intact (a second backward of a retained
    graph gives the same gradients), and its forward without grad gives the same outputs."""
    args, kw = lstm_args(seed=2, proj=P)
    inputs = leaves(args, kw)
    outs = ln_lstm(*args, **kw, batch_sizes=BATCH_SIZES)
    loss = sum((o * o.detach().sin()).sum() for o in outs)
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    for a, b in zip(first, torch.autograd.grad(loss, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        for a, b in zip(outs, ln_lstm(*args, **kw, batch_sizes=BATCH_SIZES)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- 2. fused == loop == the equations written here -------------------------------------------


def check_all_equal(run, ref, inputs):
    """Outputs and gradients of a loss through every output agree to 1e-10 for each way."""
    results = []
    for outs in [run("fused"), run("loop"), ref()]:
        loss = sum((o * o.detach().cos()).sum() + 0.7 * o.sum() for o in outs)
        results.append((*outs, *torch.autograd.grad(loss, inputs)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("proj", [None, P])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_ln_lstm_fused_equals_loop_and_equations(proj, lengths):
    args, kw = lstm_args(seed=1, proj=proj)
    bs = None if lengths is None else BATCH_SIZES
    check_all_equal(
        lambda impl: ln_lstm(*args, **kw, batch_sizes=bs, impl=impl),
        lambda: lstm_ref(args, kw, lengths or [T] * B),
        leaves(args, kw),
    )


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_ln_gru_fused_equals_loop_and_equations(lengths):
    args, kw = gru_args(seed=1)
    bs = None if lengths is None else BATCH_SIZES
    check_all_equal(
        lambda impl: ln_gru(*args, **kw, batch_sizes=bs, impl=impl),
        lambda: gru_ref(args, kw, lengths or [T] * B),
        leaves(args, kw),
    )


# --- 3. layers and cells ----------------------------------------------------------------------


def layer_params(layer, idx_name):
    """One layer-direction's parameters as the reference's keywords (suffix e.g. '_l1_reverse')."""
    p = dict(layer.named_parameters())
    w = {
        k: p.get(f"{n}{idx_name}")
        for k, n in [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]
    }
    for site in ("ih", "hh", "c"):
        if f"layer_norm_{site}_weight{idx_name}" in p:
            w[f"ln_{site}"] = (
                p[f"layer_norm_{site}_weight{idx_name}"],
                p[f"layer_norm_{site}_bias{idx_name}"],
            )
    if f"weight_hr{idx_name}" in p:
        w["w_hr"] = p[f"weight_hr{idx_name}"]
    return w


def compose(layer, ref, x, lengths):
    """The stacked, bidirectional layer by hand: each sequence alone, each direction by `ref` from
    zero states (the reverse one on the sequence read backwards), outputs concatenated per layer.
    Returns (y (T, B, D*P), finals: one (L*D, B, *) tensor per state)."""
    D = 2 if layer.bidirectional else 1
    ys, finals = [], []
    for b, n in enumerate(lengths):
        inp, fin = x[:n, b], []
        for k in range(layer.num_layers):
            outs = []
            for d in range(D):
                w = layer_params(layer, f"_l{k}" + ("_reverse" if d else ""))
                zeros = [inp.new_zeros(s) for s in layer.state_sizes]
                y, *f = ref(inp if d == 0 else inp.flip(0), *zeros, **w)
                outs.append(y if d == 0 else y.flip(0))
                fin.append(f)
            inp = torch.cat(outs, 1)
        ys.append(torch.cat([inp, inp.new_zeros(x.shape[0] - n, inp.shape[1])]))
        finals.append([torch.stack(s) for s in zip(*fin)])
    return torch.stack(ys, 1), [torch.stack(s, 1) for s in zip(*finals)]


@pytest.mark.parametrize(
    "cls, ref, kw",
    [(rnnkit.LSTM, ref_lstm, {}), (rnnkit.LSTM, ref_lstm, {"proj_size": 2}), (rnnkit.GRU, ref_gru, {})],
)
@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_layer_bidirectional_stacked_lengths(cls, ref, kw, impl):
    torch.manual_seed(0)
    layer = cls(I, H, num_layers=2, bidirectional=True, layer_norm=True, dtype=D, impl=impl, **kw)
    with torch.no_grad():  # move gains and shifts off their 1 and 0, so that each one matters
        for name, p in layer.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(T, B, I, dtype=D)
    lengths = [2, 5, 4, 3]  # unsorted: the layer sorts
    y, state = layer(x, lengths=torch.tensor(lengths))
    states = state if isinstance(state, tuple) else (state,)
    y_ref, states_ref = compose(layer, ref, x, lengths)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    for s, s_ref in zip(states, states_ref):
        torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-10)
    # and the gradients of every parameter
    params = list(layer.parameters())
    got = torch.autograd.grad(y.sum() + sum(s.sum() for s in states), params)
    want = torch.autograd.grad(y_ref.sum() + sum(s.sum() for s in states_ref), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "layer_cls, cell_cls", [(rnnkit.LSTM, rnnkit.cells.LSTMCell), (rnnkit.GRU, rnnkit.cells.GRUCell)]
)
def test_cell_is_one_step_of_the_layer(layer_cls, cell_cls):
    torch.manual_seed(1)
    layer = layer_cls(I, H, layer_norm=True, dtype=D)
    cell = cell_cls(I, H, layer_norm=True, dtype=D)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(B, I, dtype=D)
    if layer_cls is rnnkit.LSTM:
        h0, c0 = torch.randn(B, H, dtype=D), torch.randn(B, H, dtype=D)
        _, (h, c) = layer(x[None], (h0[None], c0[None]))
        h_cell, c_cell = cell(x, (h0, c0))
        torch.testing.assert_close(c_cell, c[0], rtol=0, atol=1e-12)
    else:
        h0 = torch.randn(B, H, dtype=D)
        _, h = layer(x[None], h0[None])
        h_cell = cell(x, h0)
    torch.testing.assert_close(h_cell, h[0], rtol=0, atol=1e-12)


def test_parameters_names_and_initialisation():
    layer = rnnkit.LSTM(I, H, bidirectional=True, layer_norm=True)
    names = [n for n, _ in layer.named_parameters()]
    plain = [n for n, _ in torch.nn.LSTM(I, H, bidirectional=True).named_parameters()]
    assert names[: len(plain)] == plain  # torch's parameters first, in torch's order
    assert names[len(plain) :] == [
        f"layer_norm_{site}_{kind}_l0{sfx}"
        for sfx in ("", "_reverse")
        for site in ("ih", "hh", "c")
        for kind in ("weight", "bias")
    ]
    assert layer.layer_norm_c_weight_l0_reverse.shape == (H,)
    assert layer.layer_norm_ih_bias_l0.shape == (4 * H,)
    layer.reset_parameters()
    for n, p in layer.named_parameters():
        if n.startswith("layer_norm_"):
            assert torch.equal(p, torch.ones_like(p) if "_weight" in n else torch.zeros_like(p)), n
    # a plain LSTM's weights load; only the LN parameters are missing
    missing = layer.load_state_dict(
        torch.nn.LSTM(I, H, bidirectional=True).state_dict(), strict=False
    ).missing_keys
    assert missing == names[len(plain) :]
    gru = rnnkit.cells.GRUCell(I, H, layer_norm=True)
    assert [n for n, _ in gru.named_parameters()][4:] == [
        "layer_norm_ih_weight",
        "layer_norm_ih_bias",
        "layer_norm_hh_weight",
        "layer_norm_hh_bias",
    ]


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.cells.LSTMCell, rnnkit.cells.GRUCell])
def test_default_is_unchanged(cls):
    """layer_norm=False (the default) registers torch's parameters and nothing else."""
    ours, theirs = cls(I, H), getattr(torch.nn, cls.__name__)(I, H)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "layer_norm" not in repr(ours)


def test_regularisers_compose_with_layer_norm():
    """Zoneout at eval runs the masked loop over the LN step: it equals the kernels' output with
    the expectation mixed in by hand for one step (T=1, from zero states)."""
    torch.manual_seed(2)
    layer = rnnkit.GRU(I, H, layer_norm=True, zoneout=0.25, dtype=D).eval()
    plain = rnnkit.GRU(I, H, layer_norm=True, dtype=D)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(1, B, I, dtype=D)
    h0 = torch.randn(1, B, H, dtype=D)
    y, _ = layer(x, h0)
    y_plain, _ = plain(x, h0)
    torch.testing.assert_close(y, 0.25 * h0 + 0.75 * y_plain, rtol=0, atol=1e-12)


# --- 4. errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.MGU, rnnkit.cells.RNNCell, rnnkit.cells.MGUCell])
def test_layer_norm_unsupported(cls):
    with pytest.raises(
        rnnkit.RnnkitUnsupportedError, match=f"layer_norm=True is not supported by {cls.__name__}"
    ):
        cls(I, H, layer_norm=True)


@pytest.mark.parametrize(
    "cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN, rnnkit.cells.LSTMCell, rnnkit.cells.GRUCell]
)
def test_layer_norm_must_be_bool(cls):
    with pytest.raises(rnnkit.RnnkitTypeError, match="layer_norm must be a bool, got int"):
        cls(I, H, layer_norm=1)


@pytest.mark.parametrize("cls", [rnnkit.GRU, rnnkit.cells.GRUCell])
def test_layer_norm_gru_needs_reset_after(cls):
    with pytest.raises(rnnkit.RnnkitUnsupportedError, match="needs reset_after=True"):
        cls(I, H, layer_norm=True, reset_after=False)


def test_functional_layer_norm_arguments():
    args, kw = lstm_args()
    with pytest.raises(rnnkit.RnnkitValueError, match=r"ln_hh gain must have shape \(24,\)"):
        ln_lstm(*args, **{**kw, "ln_hh": (kw["ln_hh"][0][:5], kw["ln_hh"][1])})
    with pytest.raises(rnnkit.RnnkitTypeError, match="ln_c must be a pair"):
        ln_lstm(*args, **{**kw, "ln_c": kw["ln_c"][0]})
    with pytest.raises(rnnkit.RnnkitValueError, match="ln_ih shift has dtype torch.float32"):
        ln_lstm(*args, **{**kw, "ln_ih": (kw["ln_ih"][0], kw["ln_ih"][1].float())})
    g_args, g_kw = gru_args()
    with pytest.raises(rnnkit.RnnkitValueError, match=r"ln_ih gain must be 1-D"):
        ln_gru(*g_args, **{**g_kw, "ln_ih": (g_kw["ln_ih"][0][None], g_kw["ln_ih"][1])})


def test_double_backward_is_refused():
    args, kw = gru_args()
    y, _ = ln_gru(*args, **kw)
    with pytest.raises(rnnkit.RnnkitUnsupportedError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)
