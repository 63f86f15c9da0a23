"""Zoneout, recurrent (variational) dropout, weight dropout (DropConnect on W_hh) and learned
initial states, on every cell family, as cells and as layers: gradcheck with fixed masks, against
a reference loop of the step equations written here with the masks applied by hand, the eval-time
forms, determinism under a seed, mask rates, lengths, and the errors at the boundary."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import rnnkit
from rnnkit.cells import Masks

D = torch.float64
T, B, I, H, P = 4, 3, 2, 3, 2
sig, tanh = torch.sigmoid, torch.tanh

KINDS = ["rnn", "lstm", "lstm_proj", "gru", "gru_before", "mgu"]
CELL_KINDS = ["rnn", "lstm", "gru", "gru_before", "mgu"]
REGULARISERS = {
    "zoneout": dict(zoneout=0.3),
    "zoneout_pair": dict(zoneout=(0.3, 0.6)),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "weight_dropout": dict(weight_dropout=0.4),
    "all": dict(zoneout=0.25, recurrent_dropout=0.3, weight_dropout=0.2),
}


def regs_for(kind):
    return [r for r in REGULARISERS if r != "zoneout_pair" or kind.startswith("lstm")]


# --- the reference: the step equations, written out again, with the masks applied by hand ------


def lin(x, w, b):
    return x @ w.T + (0 if b is None else b)


def ref_step(kind, x, state, W, w_hh, m):
    """One step; m multiplies h_{t-1} wherever it enters W_hh (1 when off)."""
    h, hm = state[0], state[0] * m
    b_ih, b_hh = W["bias_ih"], W["bias_hh"]
    if kind == "rnn":
        return (tanh(lin(x, W["weight_ih"], b_ih) + lin(hm, w_hh, b_hh)),)
    if kind.startswith("lstm"):
        i, f, g, o = (lin(x, W["weight_ih"], b_ih) + lin(hm, w_hh, b_hh)).chunk(4, 1)
        c = sig(f) * state[1] + sig(i) * tanh(g)
        h = sig(o) * tanh(c)
        return (h if W.get("weight_hr") is None else h @ W["weight_hr"].T, c)
    gi = lin(x, W["weight_ih"], b_ih).chunk(3 if kind.startswith("gru") else 2, 1)
    bh = (None,) * 3 if b_hh is None else b_hh.chunk(3 if kind.startswith("gru") else 2)
    wh = w_hh.chunk(3 if kind.startswith("gru") else 2)
    if kind == "mgu":
        f = sig(gi[0] + lin(hm, wh[0], bh[0]))
        n = tanh(gi[1] + lin(f * hm, wh[1], bh[1]))
        return ((1 - f) * h + f * n,)
    r = sig(gi[0] + lin(hm, wh[0], bh[0]))
    z = sig(gi[1] + lin(hm, wh[1], bh[1]))
    if kind == "gru":
        n = tanh(gi[2] + r * lin(hm, wh[2], bh[2]))
    else:
        n = tanh(gi[2] + lin(r * hm, wh[2], bh[2]))
    return ((1 - z) * n + z * h,)


def ref_masked_step(kind, x, state, W, masks, zoneout):
    """s_t = d s_{t-1} + (1 - d) s~_t per state, with the dropout masks applied."""
    w_hh = W["weight_hh"] if masks.weight is None else W["weight_hh"] * masks.weight
    m = 1 if masks.recurrent is None else masks.recurrent[: x.shape[0]]
    new = ref_step(kind, x, state, W, w_hh, m)
    return [n if d is None else d * s + (1 - d) * n for s, n, d in zip(state, new, zoneout)]


def ref_layer(m, kind, x, masks):
    """A 2-layer bidirectional layer from zero states, x (T, B, I) time-major."""
    params = dict(m.named_parameters())
    inp, finals = x, []
    for k in range(m.num_layers):
        outs = []
        for d in range(2):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
            W = {n: params.get(n + sfx) for n in names}
            mk = masks[2 * k + d]
            seq = inp if d == 0 else inp.flip(0)
            sizes = [W["weight_hh"].shape[1], H][: 2 if kind.startswith("lstm") else 1]
            state = [x.new_zeros(x.shape[1], n) for n in sizes]
            ys = []
            for t in range(x.shape[0]):
                zo = [z[t] if isinstance(z, torch.Tensor) else z for z in mk.zoneout]
                state = ref_masked_step(kind, seq[t], state, W, mk, zo)
                ys.append(state[0])
            y = torch.stack(ys)
            outs.append(y if d == 0 else y.flip(0))
            finals.append(state)
        inp = torch.cat(outs, 2)
    return [inp] + [torch.stack([f[i] for f in finals]) for i in range(len(finals[0]))]


# --- building layers and cells -------------------------------------------------------------------


def make_layer(kind, **kw):
    cls = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "mgu": rnnkit.MGU}[kind.split("_")[0]]
    extra = {"lstm_proj": dict(proj_size=P), "gru_before": dict(reset_after=False)}.get(kind, {})
    return cls(I, H, 2, bidirectional=True, dtype=D, **extra, **kw)


def make_cell(kind, **kw):
    cls = {
        "rnn": rnnkit.cells.RNNCell,
        "lstm": rnnkit.cells.LSTMCell,
        "gru": rnnkit.cells.GRUCell,
        "mgu": rnnkit.cells.MGUCell,
    }[kind.split("_")[0]]
    return cls(I, H, dtype=D, **({"reset_after": False} if kind == "gru_before" else {}), **kw)


def flat(out):
    y, s = out
    return [y, *(s if isinstance(s, tuple) else (s,))]


def plain_twin(m, kind):
    """The same layer (same weights) without regularisers."""
    twin = make_layer(kind)
    twin.load_state_dict(m.state_dict(), strict=False)
    return twin


# --- 1. gradcheck with fixed masks ---------------------------------------------------------------


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("reg", ["zoneout", "recurrent_dropout", "weight_dropout", "all"])
def test_cell_gradcheck_fixed_masks(kind, reg):
    torch.manual_seed(0)
    cell = make_cell(kind, **REGULARISERS[reg]).train()
    steps = [cell.sample_masks(B) for _ in range(2)]  # weight and recurrent shared, as per sequence
    steps[1] = steps[1]._replace(recurrent=steps[0].recurrent, weight=steps[0].weight)
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(2, B, I, dtype=D, requires_grad=True)
    h0 = torch.randn(B, H, dtype=D, requires_grad=True)

    def run(x, h0, *params):
        state = h0 if kind != "lstm" else (h0, torch.tanh(h0))
        for t in range(2):
            state = functional_call(cell, dict(zip(names, params)), (x[t], state), {"masks": steps[t]})
        return state

    params = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    assert gradcheck(run, (x, h0, *params))


@pytest.mark.parametrize("kind", KINDS)
def test_layer_gradcheck_fixed_masks(kind):
    torch.manual_seed(0)
    m = make_layer(kind, **REGULARISERS["all"]).train()
    masks = m.sample_masks(3, 2)
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(3, 2, I, dtype=D, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def run(x, *params):
        out = functional_call(m, dict(zip(names, params)), (x,), {"lengths": [3, 2], "masks": masks})
        return tuple(flat(out))

    assert gradcheck(run, (x, *params))


# --- 2. against the reference; eval forms; p = 0 ----------------------------------------------


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("reg", ["zoneout", "recurrent_dropout", "weight_dropout", "all"])
def test_cell_matches_reference(kind, reg):
    torch.manual_seed(1)
    cell = make_cell(kind, **REGULARISERS[reg])
    x, h = torch.randn(B, I, dtype=D), torch.randn(B, H, dtype=D)
    state = (h, torch.randn(B, H, dtype=D)) if kind == "lstm" else (h,)
    masks = cell.sample_masks(B)
    got = cell(x, state if kind == "lstm" else h, masks=masks)
    W = dict(cell.named_parameters())
    want = ref_masked_step(kind, x, state, W, masks, masks.zoneout)
    torch.testing.assert_close(list(got) if kind == "lstm" else [got], want, rtol=1e-12, atol=1e-12)
    cell.eval()  # eval: zoneout's expectation, the dropouts the identity
    p = REGULARISERS[reg].get("zoneout")
    want = ref_masked_step(kind, x, state, W, Masks(), (p or None,) * len(state))
    got = cell(x, state if kind == "lstm" else h)
    torch.testing.assert_close(list(got) if kind == "lstm" else [got], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,reg", [(k, r) for k in KINDS for r in regs_for(k)])
def test_layer_matches_reference(kind, reg):
    torch.manual_seed(2)
    m = make_layer(kind, **REGULARISERS[reg])
    x = torch.randn(T, B, I, dtype=D)
    torch.manual_seed(3)
    masks = m.sample_masks(T, B)
    got = flat(m(x, masks=masks))
    torch.testing.assert_close(got, ref_layer(m, kind, x, masks), rtol=1e-10, atol=1e-12)
    torch.manual_seed(3)  # forward draws exactly what sample_masks draws
    assert all(torch.equal(a, b) for a, b in zip(flat(m(x)), got))
    m.eval()
    got = flat(m(x))
    if "zoneout" in REGULARISERS[reg]:  # the expectation p s_{t-1} + (1 - p) s~_t
        zo = m.regularizer.zoneout
        want = ref_layer(m, kind, x, [Masks(zoneout=zo)] * 4)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    else:  # the dropouts are the identity: exactly the plain layer
        assert all(torch.equal(a, b) for a, b in zip(got, flat(plain_twin(m, kind).eval()(x))))


@pytest.mark.parametrize("kind", KINDS)
def test_rate_zero_is_the_plain_layer_exactly(kind):
    torch.manual_seed(4)
    m = make_layer(kind, zoneout=0.0, recurrent_dropout=0.0, weight_dropout=0.0).train()
    x = torch.randn(T, B, I, dtype=D)
    assert not m.regularizer.active
    assert all(torch.equal(a, b) for a, b in zip(flat(m(x)), flat(plain_twin(m, kind)(x))))
    assert list(m.state_dict()) == list(plain_twin(m, kind).state_dict())


@pytest.mark.parametrize("kind", ["lstm_proj", "gru_before", "mgu"])
def test_lengths_each_sequence_as_if_alone(kind):
    """With lengths (unsorted), each sequence gives what it gives alone with its masks' rows;
    padded steps keep the state (zoneout or not) and output zeros."""
    torch.manual_seed(5)
    m = make_layer(kind, **REGULARISERS["all"])
    lengths = [2, 4, 1]
    x = torch.randn(T, B, I, dtype=D)
    masks = m.sample_masks(T, B)
    out = flat(m(x, lengths=lengths, masks=masks))
    for b, n in enumerate(lengths):
        rows = [
            Masks(
                recurrent=mk.recurrent[b : b + 1],
                weight=mk.weight,
                zoneout=tuple(z[:n, b : b + 1] for z in mk.zoneout),
            )
            for mk in masks
        ]
        alone = flat(m(x[:n, b : b + 1], masks=rows))
        torch.testing.assert_close(out[0][:n, b], alone[0][:, 0], rtol=1e-12, atol=1e-12)
        assert torch.equal(out[0][n:, b], torch.zeros_like(out[0][n:, b]))
        for s, s_alone in zip(out[1:], alone[1:]):
            torch.testing.assert_close(s[:, b], s_alone[:, 0], rtol=1e-12, atol=1e-12)


def test_batch_first_unbatched_and_packed_match_time_major():
    """Every input form draws the same masks under the same seed, so each must give the numbers
    of the time-major batch with the same weights."""
    kw = {"dtype": D, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.2}
    torch.manual_seed(6)
    ref = rnnkit.LSTM(I, H, **kw)
    bf = rnnkit.LSTM(I, H, batch_first=True, **kw)
    bf.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=D)

    def run(m, inp):
        torch.manual_seed(7)
        return m(inp)[0]

    want = run(ref, x)
    torch.testing.assert_close(run(bf, x.transpose(0, 1)), want.transpose(0, 1), rtol=0, atol=1e-12)
    one = run(ref, x[:, :1])  # a batch of one against the same sequence unbatched
    torch.testing.assert_close(run(ref, x[:, 0]), one[:, 0], rtol=0, atol=1e-12)
    packed = torch.nn.utils.rnn.pack_sequence(list(x.unbind(1)))  # equal lengths: same masks
    got = torch.nn.utils.rnn.pad_packed_sequence(run(ref, packed))[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --- 3. determinism, variation between calls, rates ---------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_seeded_and_varying(kind):
    m = make_layer(kind, **REGULARISERS["all"])
    x = torch.randn(T, B, I, dtype=D)
    torch.manual_seed(7)
    a = flat(m(x))
    b = flat(m(x))  # the generator moved on: new masks
    torch.manual_seed(7)
    c = flat(m(x))
    assert all(torch.equal(u, v) for u, v in zip(a, c))
    assert not torch.allclose(a[0], b[0])
    cell = make_cell(kind, **REGULARISERS["all"])
    xc = torch.randn(B, I, dtype=D)
    torch.manual_seed(8)
    u = cell(xc)
    torch.manual_seed(8)
    assert all(torch.equal(p, q) for p, q in zip(u, cell(xc)))


def test_mask_rates_values_dtype():
    torch.manual_seed(9)
    m = rnnkit.LSTM(I, 64, dtype=D, zoneout=(0.1, 0.5), recurrent_dropout=0.3, weight_dropout=0.6)
    (mk,) = m.sample_masks(50, 40)
    for t in (mk.recurrent, mk.weight, *mk.zoneout):
        assert t.dtype == D and t.device == m.weight_hh_l0.device
    assert set(mk.recurrent.unique().tolist()) == {0.0, 1 / 0.7}  # inverted scaling
    assert set(mk.weight.unique().tolist()) == {0.0, 1 / 0.4}
    assert abs((mk.recurrent == 0).double().mean().item() - 0.3) < 0.05
    assert abs((mk.weight == 0).double().mean().item() - 0.6) < 0.05
    assert abs(mk.zoneout[0].mean().item() - 0.1) < 0.02  # 1 = keep the previous value
    assert abs(mk.zoneout[1].mean().item() - 0.5) < 0.02
    assert mk.zoneout[0].shape == (50, 40, 64) and mk.recurrent.shape == (40, 64)
    m2 = rnnkit.GRU(I, 16, dtype=torch.float32, recurrent_dropout=0.5)
    (mk2,) = m2.sample_masks(3, 2)
    assert mk2.recurrent.dtype == torch.float32 and mk2.weight is None and mk2.zoneout == (None,)


# --- 4. learned initial state ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rnn", "lstm_proj", "gru", "mgu"])
def test_learned_initial_state_layer(kind):
    torch.manual_seed(10)
    m = make_layer(kind, learn_initial_state=True)
    lstm = kind.startswith("lstm")
    shapes = {"initial_h": (4, P if lstm else H)} | ({"initial_c": (4, H)} if lstm else {})
    sd = m.state_dict()
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert all(torch.equal(sd[k], torch.zeros(s, dtype=D)) for k, s in shapes.items())
    assert list(sd)[: len(plain_twin(m, kind).state_dict())] == list(plain_twin(m, kind).state_dict())
    with torch.no_grad():
        for k in shapes:
            getattr(m, k).normal_()
    x = torch.randn(T, B, I, dtype=D)
    out = flat(m(x))
    hx = [getattr(m, k)[:, None].expand(-1, B, -1) for k in shapes]
    want = flat(plain_twin(m, kind)(x, tuple(hx) if lstm else hx[0]))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    sum(o.sum() for o in out).backward()
    assert all(getattr(m, k).grad is not None and getattr(m, k).grad.abs().sum() > 0 for k in shapes)
    m.zero_grad(set_to_none=True)
    given = [torch.randn(*s[:1], B, s[1], dtype=D) for s in shapes.values()]
    out = flat(m(x, tuple(given) if lstm else given[0]))  # a given hx overrides
    want = flat(plain_twin(m, kind)(x, tuple(given) if lstm else given[0]))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    sum(o.sum() for o in out).backward()
    assert all(getattr(m, k).grad is None for k in shapes)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_learned_initial_state_cell(kind):
    torch.manual_seed(11)
    cell = make_cell(kind, learn_initial_state=True)
    names = ["initial_h", "initial_c"] if kind == "lstm" else ["initial_h"]
    assert [k for k in cell.state_dict() if k.startswith("initial")] == names
    with torch.no_grad():
        for k in names:
            getattr(cell, k).normal_()
    x = torch.randn(B, I, dtype=D)
    out = cell(x)
    given = [getattr(cell, k).detach().expand(B, H) for k in names]
    want = cell(x, tuple(given) if kind == "lstm" else given[0])
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    (out[0] if kind == "lstm" else out).sum().backward()
    assert cell.initial_h.grad.abs().sum() > 0
    assert cell(torch.randn(I, dtype=D))[0].shape == ((H,) if kind == "lstm" else ())


# --- 5. errors at the boundary ----------------------------------------------------------------


@pytest.mark.parametrize("build", [make_layer, make_cell])
@pytest.mark.parametrize("name", ["zoneout", "recurrent_dropout", "weight_dropout"])
def test_bad_rates(build, name):
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(rnnkit.RnnkitValueError, match=rf"{name}.*\[0, 1\).*got"):
            build("gru", **{name: bad})
    for bad in ("0.1", None, True):
        with pytest.raises(rnnkit.RnnkitTypeError, match=rf"{name} must be a number"):
            build("gru", **{name: bad})


@pytest.mark.parametrize("build", [make_layer, make_cell])
def test_bad_zoneout_forms_and_flags(build):
    for kind in ("rnn", "gru", "mgu"):
        with pytest.raises(rnnkit.RnnkitValueError, match=r"zoneout.*pair \(p_h, p_c\) is for the LSTM"):
            build(kind, zoneout=(0.1, 0.2))
    with pytest.raises(rnnkit.RnnkitValueError, match=r"zoneout must be a rate or a pair"):
        build("lstm", zoneout=(0.1, 0.2, 0.3))
    with pytest.raises(rnnkit.RnnkitValueError, match=r"zoneout\[1\] must be a probability"):
        build("lstm", zoneout=(0.1, 1.0))
    with pytest.raises(rnnkit.RnnkitTypeError, match=r"learn_initial_state must be a bool, got str"):
        build("lstm", learn_initial_state="yes")


def test_bad_masks():
    m = make_layer("lstm", recurrent_dropout=0.2)
    x = torch.randn(T, B, I, dtype=D)
    masks = m.sample_masks(T, B)
    with pytest.raises(rnnkit.RnnkitTypeError, match=r"masks must be a list of Masks.*got dict"):
        m(x, masks={})
    with pytest.raises(rnnkit.RnnkitValueError, match=r"masks must hold 4 Masks.*got 3"):
        m(x, masks=masks[:3])
    bad = [masks[0]._replace(recurrent=masks[0].recurrent[:2])] + masks[1:]
    with pytest.raises(rnnkit.RnnkitValueError, match=r"masks\[0\]\.recurrent must be shape \(3, 3\)"):
        m(x, masks=bad)
    bad = [masks[0]._replace(weight=torch.ones(12, 3, dtype=D))] + masks[1:]
    with pytest.raises(rnnkit.RnnkitValueError, match=r"masks\[0\]\.weight must be None \(that regul"):
        m(x, masks=bad)
    cell = make_cell("rnn", zoneout=0.1)
    with pytest.raises(rnnkit.RnnkitTypeError, match=r"masks must be an rnnkit.cells.Masks, got tuple"):
        cell(torch.randn(B, I, dtype=D), masks=(None, None, ()))
    with pytest.raises(rnnkit.RnnkitValueError, match=r"masks\.zoneout must hold one entry per state"):
        cell(torch.randn(B, I, dtype=D), masks=Masks())
    with pytest.raises(rnnkit.RnnkitValueError, match=r"steps must be >= 1"):
        m.sample_masks(0, 2)
