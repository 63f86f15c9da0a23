"""Neural Turing Machine: each addressing stage and the memory's read and write against hand
computations in plain Python, the whole machine against finite differences (gradcheck, float64),
finite gradients at exact zeros, reads before the write within a step, and the boundary checks."""

import dataclasses
import math

import pytest
import torch
from torch.func import functional_call

from rnnkit.errors import RnnkitValueError
from rnnkit.models.ntm import (
    NTM,
    NTMConfig,
    content_weights,
    erase_add,
    head_params,
    interpolate,
    memory_read,
    memory_write,
    sharpen,
    shift,
)

f64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=f64)


def softmax_list(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def cosine(u, v):
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(a * a for a in v))
    return 0.0 if nu == 0 or nv == 0 else sum(a * b for a, b in zip(u, v)) / (nu * nv)


# ---------------------------------------------------------------- addressing stages


def test_content_weights_by_hand_with_zero_row_and_zero_memory():
    rows = [[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]]  # the middle row is all zero
    key, beta = [1.0, 1.0], 2.0
    # K = 1/sqrt(2), 0, 7/(5 sqrt(2))
    want = softmax_list([beta * cosine(key, r) for r in rows])
    memory = t([rows, [[0.0, 0.0]] * 3]).requires_grad_()  # batch 2: an all-zero memory
    k = t([key, key]).requires_grad_()
    w = content_weights(memory, k, t([[beta], [beta]]))
    assert w.shape == (2, 3)
    torch.testing.assert_close(w[0], t(want), atol=1e-7, rtol=0)
    torch.testing.assert_close(w[1], t([1 / 3] * 3), atol=1e-12, rtol=0)  # uniform
    (w * t([[1.0, 2.0, 3.0]] * 2)).sum().backward()
    assert torch.isfinite(memory.grad).all() and torch.isfinite(k.grad).all()


def test_content_weights_zero_key_is_uniform_with_finite_gradient():
    memory = t([[[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]]])
    key = torch.zeros(1, 2, dtype=f64, requires_grad=True)
    beta = t([[5.0]]).requires_grad_()
    w = content_weights(memory, key, beta)
    torch.testing.assert_close(w, t([[1 / 3] * 3]), atol=1e-12, rtol=0)
    (w * t([[1.0, -2.0, 3.0]])).sum().backward()
    assert torch.isfinite(key.grad).all() and torch.isfinite(beta.grad).all()


def test_content_weights_broadcast_over_heads_matches_one_head_at_a_time():
    gen = torch.Generator().manual_seed(0)
    memory = torch.randn(2, 5, 3, generator=gen, dtype=f64)
    keys = torch.randn(2, 4, 3, generator=gen, dtype=f64)  # 4 heads
    betas = torch.rand(2, 4, 1, generator=gen, dtype=f64) * 3
    together = content_weights(memory.unsqueeze(1), keys, betas)  # (2, 4, 5)
    for b in range(2):
        for h in range(4):
            sims = [float(betas[b, h, 0]) * cosine(keys[b, h].tolist(), row) for row in memory[b].tolist()]
            torch.testing.assert_close(together[b, h], t(softmax_list(sims)), atol=1e-7, rtol=0)


def test_interpolate_by_hand():
    w_c, w_prev, g = [0.7, 0.2, 0.1], [0.0, 0.5, 0.5], 0.3
    want = [g * a + (1 - g) * b for a, b in zip(w_c, w_prev)]  # [0.21, 0.41, 0.38]
    got = interpolate(t([w_c]), t([w_prev]), t([[g]]))
    torch.testing.assert_close(got, t([want]), atol=1e-15, rtol=0)


def test_shift_one_hot_moves_one_slot_with_wrap_around():
    last, first = t([[0.0, 0.0, 0.0, 0.0, 1.0]]), t([[1.0, 0.0, 0.0, 0.0, 0.0]])
    plus_one, minus_one, stay = t([[0.0, 0.0, 1.0]]), t([[1.0, 0.0, 0.0]]), t([[0.0, 1.0, 0.0]])
    assert shift(last, plus_one).tolist() == first.tolist()  # slot 4 -> slot 0
    assert shift(first, minus_one).tolist() == last.tolist()  # slot 0 -> slot 4
    assert shift(last, stay).tolist() == last.tolist()
    middle = t([[0.0, 0.0, 1.0, 0.0, 0.0]])
    assert shift(middle, plus_one).tolist() == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    assert shift(middle, minus_one).tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("K", [1, 2])
def test_shift_mixture_by_hand(K):
    w = [0.1, 0.2, 0.3, 0.15, 0.25, 0.0]
    s = [0.2, 0.5, 0.3] if K == 1 else [0.05, 0.2, 0.4, 0.25, 0.1]
    N = len(w)

    def s_of(d):  # the weight of the shift by d (in -K..K), else 0
        return s[d + K] if -K <= d <= K else 0.0

    # eq. (8): w~(i) = sum_j w(j) s((i - j) mod N), the shift (i - j) mod N read as -K..K
    want = [
        sum(w[j] * sum(s_of(d) for d in range(-K, K + 1) if (i - j - d) % N == 0) for j in range(N))
        for i in range(N)
    ]
    torch.testing.assert_close(shift(t([w]), t([s])), t([want]), atol=1e-15, rtol=0)
    assert math.isclose(sum(want), 1.0)


def test_sharpen_by_hand():
    w, gamma = [0.1, 0.3, 0.6], 2.0
    want = [x**gamma / sum(y**gamma for y in w) for x in w]  # [0.01, 0.09, 0.36] / 0.46
    torch.testing.assert_close(sharpen(t([w]), t([[gamma]])), t([want]), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("gamma", [1.0, 1.7, 4.0])
def test_sharpen_with_exact_zeros_is_finite_with_finite_gradients(dtype, gamma):
    w = torch.tensor([[0.0, 0.25, 0.75, 0.0]], dtype=dtype, requires_grad=True)
    g = torch.tensor([[gamma]], dtype=dtype, requires_grad=True)
    out = sharpen(w, g)
    denom = 0.25**gamma + 0.75**gamma
    want = torch.tensor([[0.0, 0.25**gamma / denom, 0.75**gamma / denom, 0.0]], dtype=dtype)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    (out * torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=dtype)).sum().backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(g.grad).all()
    # d/dgamma of the sharpened weighting at the nonzero slots, by hand:
    # out_i = w_i^g / S, dout_i/dg = out_i (ln w_i - sum_j out_j ln w_j)
    p = [0.25**gamma / denom, 0.75**gamma / denom]
    mean_log = p[0] * math.log(0.25) + p[1] * math.log(0.75)
    dgamma = 2.0 * p[0] * (math.log(0.25) - mean_log) + 3.0 * p[1] * (math.log(0.75) - mean_log)
    assert g.grad.item() == pytest.approx(dgamma, rel=1e-4, abs=1e-6)


def test_sharpen_all_zero_weighting_stays_finite():
    w = torch.zeros(1, 3, dtype=f64, requires_grad=True)
    g = t([[2.0]]).requires_grad_()
    out = sharpen(w, g)
    torch.testing.assert_close(out, t([[1 / 3] * 3]), atol=1e-12, rtol=0)
    out[0, 0].backward()
    assert torch.isfinite(w.grad).all() and torch.isfinite(g.grad).all()


def test_head_params_constraints_by_hand():
    M, K = 2, 1
    raw = [0.5, -1.5, 0.3, -0.4, 1.0, 2.0, 3.0, -0.7]  # k (2), beta, g, s (3), gamma
    p = head_params(t([raw]), M, K)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    torch.testing.assert_close(p.key, t([[0.5, -1.5]]))
    torch.testing.assert_close(p.beta, t([[softplus(0.3)]]))
    torch.testing.assert_close(p.g, t([[1 / (1 + math.exp(0.4))]]))
    torch.testing.assert_close(p.s, t([softmax_list([1.0, 2.0, 3.0])]))
    torch.testing.assert_close(p.gamma, t([[1 + softplus(-0.7)]]))
    e, a = erase_add(t([[0.0, 2.0, -1.0, 0.5]]), 2)
    torch.testing.assert_close(e, t([[0.5, 1 / (1 + math.exp(-2.0))]]))
    torch.testing.assert_close(a, t([[math.tanh(-1.0), math.tanh(0.5)]]))


# ---------------------------------------------------------------- memory


def test_memory_write_and_read_by_hand():
    mem = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    w, e, a = [0.25, 0.75], [1.0, 0.5, 0.0], [10.0, -1.0, 2.0]
    # eqs. (3)-(4), element by element
    want = [[mem[i][j] * (1 - w[i] * e[j]) + w[i] * a[j] for j in range(3)] for i in range(2)]
    # [[3.25, 1.5, 3.5], [8.5, 2.375, 7.5]]
    new = memory_write(t([mem]), t([w]), t([e]), t([a]))
    torch.testing.assert_close(new, t([want]), atol=1e-14, rtol=0)
    r = memory_read(new, t([[0.4, 0.6]]))
    torch.testing.assert_close(r, t([[0.4 * want[0][j] + 0.6 * want[1][j] for j in range(3)]]))
    # several heads at once: memory (B, 1, N, M) with w (B, R, N)
    rs = memory_read(t([mem]).unsqueeze(1), t([[[1.0, 0.0], [0.5, 0.5]]]))
    torch.testing.assert_close(rs, t([[[1.0, 2.0, 3.0], [2.5, 3.5, 4.5]]]))


# ---------------------------------------------------------------- the machine


def tiny(controller="lstm", output_size=2, **kw):
    torch.manual_seed(0)
    cfg = dict(controller=controller, controller_size=4, memory_slots=5, memory_width=3, shift_range=1)
    cfg.update(kw)
    return NTM(NTMConfig(3, output_size, **cfg)).to(f64)


def gradcheck_model(model, x):
    """gradcheck of the logits in x and in every parameter (flattened into one vector)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).requires_grad_()

    def f(x, flat):
        pieces = flat.split([math.prod(s) for s in shapes])
        params = {n: v.view(s) for n, v, s in zip(names, pieces, shapes)}
        return functional_call(model, params, (x,))

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), flat), atol=1e-6, rtol=1e-4)


def all_grads(model, x):
    x = x.clone().requires_grad_()
    model.zero_grad()
    model(x).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_gradcheck_tiny_ntm(controller):
    model = tiny(controller)
    x = torch.randn(2, 3, 3, dtype=f64, generator=torch.Generator().manual_seed(1))
    gradcheck_model(model, x)


def test_gradcheck_with_all_zero_initial_memory():
    model = tiny("lstm")
    model.memory_init = 0.0  # every row starts all zero: cosine similarity 0, uniform content weights
    x = torch.randn(2, 3, 3, dtype=f64, generator=torch.Generator().manual_seed(2))
    gradcheck_model(model, x)
    for g in all_grads(model.float(), x.float()):
        assert g is not None and torch.isfinite(g).all()


def test_gradcheck_with_exact_zeros_reaching_sharpen():
    """Exactly one-hot initial weightings and a shut interpolation gate (sigmoid(-1e4) is exactly
    0): at step 1 every head's w^g is the one-hot w_0 and the shifted weighting has exact zeros,
    which sharpen must raise to gamma with finite gradients."""
    model = tiny("lstm")
    A = model.head_width
    M, K, heads = 3, 1, 2
    with torch.no_grad():
        model.weighting0.fill_(-1e4)
        model.weighting0[:, 2] = 0.0  # all of w_0 on slot 2
        for h in range(heads):
            model.heads.bias[h * A + M + 1] = -1e4  # g: after k (M) and beta (1)
    x = torch.randn(2, 3, 3, dtype=f64, generator=torch.Generator().manual_seed(3))
    _, trace = model(x, return_trace=True)
    first = torch.cat([trace["read_weights"][:, 0, 0], trace["write_weights"][:, 0]])  # (2B, N)
    # slots 0 and 4 lie out of reach of slot 2 with shifts -1..1: only the 1e-12 guard is left there
    assert (first[:, [0, 4]] < 1e-15).all() and (first[:, [0, 4]] >= 0).all()
    torch.testing.assert_close(first.sum(-1), torch.ones(4, dtype=f64))
    assert 2 * K + 1 < model.config.memory_slots
    gradcheck_model(model, x)
    for g in all_grads(model.float(), x.float()):
        assert g is not None and torch.isfinite(g).all()


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_reads_come_before_the_write_within_a_step(controller):
    """The output layer is set to copy the read vector (logits_t = r_t), the write head to add a
    fixed, distinctive vector: the read at step 1 must see M_0 (the constant 1e-6), the read at
    step 2 must see M_1 = M_0 * (1 - w_1 e^T) + w_1 a^T, computed here by hand from the trace."""
    model = tiny(controller, output_size=3, read_heads=1)  # output_size = memory_width
    cfg = model.config
    H, M, N = cfg.controller_size, cfg.memory_width, cfg.memory_slots
    erase_bias, add_bias = [0.0, 1.0, -1.0], [1.0, -2.0, 3.0]
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.weight[:, H:] = torch.eye(M, dtype=f64)
        model.output.bias.zero_()
        ea = slice(2 * model.head_width, None)  # the write head's [e, a] rows
        model.heads.weight[ea] = 0.0
        model.heads.bias[ea] = t(erase_bias + add_bias)
    e = [1 / (1 + math.exp(-b)) for b in erase_bias]
    a = [math.tanh(b) for b in add_bias]

    x = torch.randn(2, 2, 3, dtype=f64, generator=torch.Generator().manual_seed(4))
    logits, trace = model(x, return_trace=True)
    _, trace1 = model(x[:, :1], return_trace=True)  # the same first step, stopped there: M_1

    # step 1 reads M_0: every slot holds 1e-6, and the read weighting sums to 1
    torch.testing.assert_close(logits[:, 0], torch.full((2, M), 1e-6, dtype=f64), atol=1e-12, rtol=0)
    for b in range(2):
        w1 = trace["write_weights"][b, 0].tolist()
        M1 = [[1e-6 * (1 - w1[i] * e[j]) + w1[i] * a[j] for j in range(M)] for i in range(N)]
        torch.testing.assert_close(trace1["memory"][b], t(M1), atol=1e-12, rtol=0)
        r2 = trace["read_weights"][b, 1, 0].tolist()
        want = [sum(r2[i] * M1[i][j] for i in range(N)) for j in range(M)]
        torch.testing.assert_close(logits[b, 1], t(want), atol=1e-12, rtol=0)
        # a write-then-read step would have returned about w a^T for step 1, far from 1e-6
        assert max(abs(v) for v in want) > 1e-3


def test_initial_state_and_trace_layout():
    model = NTM(NTMConfig(4, 3, controller_size=6, memory_slots=7, memory_width=2, read_heads=2))
    w0 = torch.softmax(model.weighting0, -1)
    torch.testing.assert_close(w0[:, 0], torch.full((3,), 0.99))  # two read heads and the write head
    x = torch.randn(5, 4, 4)
    logits, trace = model(x, return_trace=True)
    assert logits.shape == (5, 4, 3)
    assert trace["read_weights"].shape == (5, 4, 2, 7)
    assert trace["write_weights"].shape == (5, 4, 7)
    assert trace["memory"].shape == (5, 7, 2)
    assert not any(v.requires_grad for v in trace.values())
    torch.testing.assert_close(trace["read_weights"].sum(-1), torch.ones(5, 4, 2))
    # the first write, before any other: M_1 = 1e-6 (1 - w e^T) + w a^T, so batch rows that saw
    # the same first input hold the same memory after step 1
    same = x[:1, :1].expand(2, 1, 4)
    _, tr = model(same, return_trace=True)
    torch.testing.assert_close(tr["memory"][0], tr["memory"][1])
    # the registry rebuilds models from the config as a dict
    rebuilt = NTM(NTMConfig(**dataclasses.asdict(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(x), logits)


# ---------------------------------------------------------------- the boundary


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"memory_slots": 0}, "memory_slots"),
        ({"memory_width": -1}, "memory_width"),
        ({"read_heads": 0}, "read_heads"),
        ({"controller_size": 0}, "controller_size"),
        ({"controller": "gru"}, "controller"),
        ({"shift_range": -1}, "shift_range"),
        ({"shift_range": 3, "memory_slots": 6}, "shift_range"),
    ],
)
def test_bad_config_names_the_argument(kwargs, name):
    with pytest.raises(RnnkitValueError, match=name):
        NTMConfig(3, 2, **kwargs)


def test_bad_sizes_name_the_argument():
    with pytest.raises(RnnkitValueError, match="input_size"):
        NTMConfig(0, 2)
    with pytest.raises(RnnkitValueError, match="output_size"):
        NTMConfig(3, 0)
    NTMConfig(3, 2, shift_range=0, memory_slots=1)  # the smallest machine is valid


def test_bad_input_names_the_argument():
    model = NTM(NTMConfig(3, 2, controller_size=4, memory_slots=5, memory_width=3))
    with pytest.raises(RnnkitValueError, match=r"x must be 3-D"):
        model(torch.randn(2, 3))
    with pytest.raises(RnnkitValueError, match=r"x must have 3 features \(input_size\)"):
        model(torch.randn(2, 4, 5))
    with pytest.raises(RnnkitValueError, match="at least one time step"):
        model(torch.randn(2, 0, 3))
    with pytest.raises(RnnkitValueError, match="x has dtype torch.float64"):
        model(torch.randn(2, 4, 3, dtype=f64))
    with pytest.raises(RnnkitValueError, match="key must have 3"):
        content_weights(torch.randn(1, 5, 3), torch.randn(1, 2), torch.ones(1, 1))
    with pytest.raises(RnnkitValueError, match="odd number"):
        shift(torch.rand(1, 5), torch.rand(1, 2))
