"""Jordan network: gradcheck of the fused kernel, fused vs the step equations vs a loop written here
from the equations of Jordan (1986), teacher forcing vs its cell, the input forms of the layer,
and the errors at its boundaries."""

import math

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.cells.jordan import OUTPUT_ACTIVATIONS, JordanCell, folds, jordan, jordan_teacher_forced
from rnnkit.layers.jordan import JordanRNN

D = torch.float64
T, B, I, H = 5, 4, 3, 6
O_STEP, O_FOLD = 2, 3  # H > 2 O: the kernel runs the steps as written; H <= 2 O: folded (identity)
LENGTHS = [5, 2, 4, 1]  # unsorted on purpose
BATCH_SIZES = [4, 3, 2, 2, 1]  # the same lengths, sorted: [5, 4, 2, 1]
VALUE, TYPE = rnnkit.RnnkitValueError, rnnkit.RnnkitTypeError
F_OUT = {
    None: lambda o: o,
    "tanh": torch.tanh,
    "sigmoid": lambda o: 1 / (1 + torch.exp(-o)),
    "relu": lambda o: torch.clamp(o, min=0),
    "softmax": lambda o: torch.exp(o) / torch.exp(o).sum(-1, keepdim=True),
}


def make_args(O=O_STEP, bias=True, seed=0):
    """x, y0, w_ih, w_yh, b_h, w_hy, b_y in float64, all requiring grad."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=D) * 0.5).requires_grad_()

    return [r(T, B, I), r(B, O), r(H, I), r(H, O), r(H) if bias else None, r(O, H), r(O) if bias else None]


def paper_loop(x, y0, w_ih, w_yh, b_h, w_hy, b_y, act=None):
    """h_t = tanh(W_ih x_t + W_yh y_{t-1} + b_h), y_t = f(W_hy h_t + b_y), one column per sequence."""
    b_h = torch.zeros(w_ih.shape[0], dtype=D) if b_h is None else b_h
    b_y = torch.zeros(w_hy.shape[0], dtype=D) if b_y is None else b_y
    y, ys = y0.T, []  # (O, B)
    for x_t in x:
        h = torch.tanh(w_ih @ x_t.T + w_yh @ y + b_h[:, None])  # (H, B)
        y = F_OUT[act]((w_hy @ h + b_y[:, None]).T).T  # softmax over the O outputs of each column
        ys.append(y.T)
    return torch.stack(ys), y.T


def paper_with_lengths(x, y0, weights, act, lengths):
    """Each sequence run alone to its length, then zero-padded to T."""
    ys, last = [], []
    for b, n in enumerate(lengths):
        y, y_n = paper_loop(x[:n, b : b + 1], y0[b : b + 1], *weights, act)
        ys.append(torch.cat([y, y.new_zeros(x.shape[0] - n, 1, y.shape[2])]))
        last.append(y_n)
    return torch.cat(ys, dim=1), torch.cat(last)


# --- 1. gradcheck of the fused kernel ---------------------------------------------------------


CASES = [(act, O_STEP) for act in OUTPUT_ACTIVATIONS] + [(None, O_FOLD)]


def test_both_kernel_paths_are_covered():
    assert not folds(None, H, O_STEP) and folds(None, H, O_FOLD) and not folds("tanh", H, O_FOLD)


@pytest.mark.parametrize("act,O", CASES)
@pytest.mark.parametrize("bias,batch_sizes", [(True, None), (True, BATCH_SIZES), (False, BATCH_SIZES)])
def test_gradcheck_fused(act, O, bias, batch_sizes):
    args = [a for a in make_args(O, bias) if a is not None]

    def f(x, y0, w_ih, w_yh, *rest):
        b_h, w_hy, b_y = rest if bias else (None, rest[0], None)
        return jordan(x, y0, w_ih, w_yh, b_h, w_hy, b_y, output_activation=act, batch_sizes=batch_sizes)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("act,O", [("sigmoid", O_STEP), (None, O_FOLD)])
def test_gradcheck_layer_with_lengths(act, O):
    torch.manual_seed(0)
    rnn = JordanRNN(I, H, O, output_activation=act, batch_first=True, dtype=D)
    x = torch.randn(B, T, I, dtype=D, requires_grad=True)
    y0 = torch.randn(B, O, dtype=D, requires_grad=True)
    params = list(rnn.parameters())

    names = [n for n, _ in rnn.named_parameters()]

    def f(x, y0, *p):
        return torch.func.functional_call(rnn, dict(zip(names, p)), (x, y0), {"lengths": LENGTHS})

    assert torch.autograd.gradcheck(f, (x, y0, *[p.detach().requires_grad_() for p in params]))


def test_double_backward_is_refused():
    args = make_args()
    y, _ = jordan(*args)
    with pytest.raises(rnnkit.RnnkitError, match="impl='loop'"):
        torch.autograd.grad(y.sum(), args[0], create_graph=True)


# --- 2. fused = loop = the equations ----------------------------------------------------------


@pytest.mark.parametrize("act,O", CASES)
@pytest.mark.parametrize("batch_sizes", [None, BATCH_SIZES])
def test_fused_equals_loop(act, O, batch_sizes):
    args = make_args(O)
    results = []
    for impl in ("fused", "loop"):
        y, y_n = jordan(*args, output_activation=act, batch_sizes=batch_sizes, impl=impl)
        loss = (y * y.detach().cos()).sum() + 1.3 * (y_n * y_n.detach().sin()).sum()
        results.append((y, y_n, *torch.autograd.grad(loss, args)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("act,O", CASES)
@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_matches_paper_equations(act, O, impl):
    args = [a.detach() for a in make_args(O)]
    y_ref, y_n_ref = paper_loop(*args, act)
    y, y_n = jordan(*args, output_activation=act, impl=impl)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_n, y_n_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act,O", [("tanh", O_STEP), (None, O_FOLD), ("softmax", O_STEP)])
@pytest.mark.parametrize("impl", ["fused", "loop"])
def test_layer_lengths_match_paper(act, O, impl):
    torch.manual_seed(1)
    rnn = JordanRNN(I, H, O, output_activation=act, impl=impl, dtype=D)
    x, y0 = torch.randn(T, B, I, dtype=D), torch.randn(B, O, dtype=D)
    y, y_n = rnn(x, y0, lengths=LENGTHS)
    y_ref, y_n_ref = paper_with_lengths(x, y0, rnn.weights(), act, LENGTHS)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_n, y_n_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act,O", [("relu", O_STEP), (None, O_FOLD)])
def test_batch_first_gradients_fused_equal_loop(act, O):
    """A (B, T, O) output hands the kernel a permuted gradient."""
    torch.manual_seed(5)
    rnns = [
        JordanRNN(I, H, O, output_activation=act, batch_first=True, impl=i, dtype=D)
        for i in ("fused", "loop")
    ]
    rnns[1].load_state_dict(rnns[0].state_dict())
    x, w = torch.randn(B, T, I, dtype=D), torch.randn(B, T, O, dtype=D)
    grads = [torch.autograd.grad((r(x)[0] * w).sum(), list(r.parameters())) for r in rnns]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_single_step_and_no_bias():
    args = [a if a is None else a.detach() for a in make_args(O_FOLD, bias=False)]
    args[0] = args[0][:1]
    for impl in ("fused", "loop"):
        torch.testing.assert_close(jordan(*args, impl=impl), paper_loop(*args), rtol=0, atol=1e-12)


# --- 3. teacher forcing = the cell with the targets fed back ----------------------------------


@pytest.mark.parametrize("act", ["sigmoid", None])
@pytest.mark.parametrize("batch_first", [False, True])
def test_teacher_forced_equals_cell(act, batch_first):
    torch.manual_seed(2)
    O = O_FOLD
    rnn = JordanRNN(I, H, O, output_activation=act, batch_first=batch_first, dtype=D)
    cell = JordanCell(I, H, O, output_activation=act, dtype=D)
    cell.load_state_dict(rnn.state_dict())  # the same parameter names
    x = torch.randn(T, B, I, dtype=D, requires_grad=True)
    tgt = torch.randn(T, B, O, dtype=D, requires_grad=True)
    y0 = torch.randn(B, O, dtype=D, requires_grad=True)
    w = torch.randn(T, B, O, dtype=D)  # weights of the loss, so every output counts differently

    layout = (lambda a: a.transpose(0, 1)) if batch_first else (lambda a: a)
    y, y_n = rnn(layout(x), y0, targets=layout(tgt))
    y = layout(y)
    ys, prev = [], y0
    for t in range(T):
        y_t, _ = cell(x[t], prev)
        ys.append(y_t)
        prev = tgt[t]
    y_ref = torch.stack(ys)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_n, y_ref[-1], rtol=0, atol=1e-12)
    inputs = [x, tgt, y0, *rnn.parameters()]
    grads = torch.autograd.grad((w * y).sum() + y_n.sum(), inputs)
    ref_inputs = [x, tgt, y0, *cell.parameters()]
    ref = torch.autograd.grad((w * y_ref).sum() + y_ref[-1].sum(), ref_inputs)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_teacher_forced_with_lengths():
    torch.manual_seed(3)
    rnn = JordanRNN(I, H, O_STEP, output_activation="tanh", dtype=D)
    cell = JordanCell(I, H, O_STEP, output_activation="tanh", dtype=D)
    cell.load_state_dict(rnn.state_dict())
    x, tgt = torch.randn(T, B, I, dtype=D), torch.randn(T, B, O_STEP, dtype=D)
    y, y_n = rnn(x, targets=tgt, lengths=LENGTHS)
    for b, n in enumerate(LENGTHS):
        prev = torch.zeros(1, O_STEP, dtype=D)
        for t in range(T):
            y_t, _ = cell(x[t, b : b + 1], prev)
            torch.testing.assert_close(y[t, b : b + 1], y_t if t < n else 0 * y_t, rtol=0, atol=1e-12)
            prev = tgt[t, b : b + 1]
            if t == n - 1:
                torch.testing.assert_close(y_n[b : b + 1], y_t, rtol=0, atol=1e-12)
    # the functional form, on the sorted batch, agrees with the layer
    order = torch.tensor([0, 2, 1, 3])  # LENGTHS sorted decreasingly
    y_f, _ = jordan_teacher_forced(
        x[:, order], tgt[:, order], None, *rnn.weights(), output_activation="tanh", batch_sizes=BATCH_SIZES
    )
    torch.testing.assert_close(y_f, y[:, order], rtol=0, atol=1e-12)


# --- the layer's input forms and parameters ---------------------------------------------------


def test_input_forms_agree():
    torch.manual_seed(4)
    rnn = JordanRNN(I, H, O_STEP, output_activation="tanh", dtype=D)
    x, y0 = torch.randn(T, B, I, dtype=D), torch.randn(B, O_STEP, dtype=D)
    y, y_n = rnn(x, y0, lengths=LENGTHS)
    y1, y1_n = rnn(x[:, 1], y0[1])  # unbatched: sequence 1, run to T
    ref, ref_n = paper_loop(x[:, 1:2], y0[1:2], *rnn.weights(), "tanh")
    torch.testing.assert_close((y1, y1_n), (ref[:, 0], ref_n[0]), rtol=0, atol=1e-12)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    yp, yp_n = rnn(packed, y0)
    torch.testing.assert_close(
        yp.data, pack_padded_sequence(y, torch.tensor(LENGTHS), enforce_sorted=False).data
    )
    torch.testing.assert_close(yp_n, y_n)
    tgt = torch.randn(T, B, O_STEP, dtype=D)
    packed_t = pack_padded_sequence(tgt, torch.tensor(LENGTHS), enforce_sorted=False)
    yt, yt_n = rnn(x, y0, targets=tgt, lengths=LENGTHS)
    ytp, ytp_n = rnn(packed, y0, targets=packed_t)
    torch.testing.assert_close(
        ytp.data, pack_padded_sequence(yt, torch.tensor(LENGTHS), enforce_sorted=False).data
    )
    torch.testing.assert_close(ytp_n, yt_n)


def test_init_and_repr():
    rnn = JordanRNN(3, 100, 7, output_activation="softmax", bias=False)
    assert [n for n, _ in rnn.named_parameters()] == ["weight_ih", "weight_yh", "weight_hy"]
    for p in rnn.parameters():
        assert p.abs().max() <= 1 / math.sqrt(100) and p.std() > 0.04
    assert "output_activation='softmax'" in repr(rnn) and "bias=False" in repr(rnn)
    y, y_n = rnn(torch.randn(4, 2, 3))
    torch.testing.assert_close(y.sum(-1), torch.ones(4, 2))  # softmax outputs


# --- 4. errors at the boundaries --------------------------------------------------------------


rnn = JordanRNN(I, H, O_STEP)
x = torch.randn(T, B, I)


@pytest.mark.parametrize(
    "call,kind,fragments",
    [
        (lambda: rnn(torch.randn(T, B, I + 1)), VALUE, ["input", f"{I} features", f"({T}, {B}, {I + 1})"]),
        (lambda: rnn(torch.randn(I)), VALUE, ["input", "2-D", "3-D", "got 1-D"]),
        (lambda: rnn([1.0]), TYPE, ["input", "list"]),
        (
            lambda: rnn(x, torch.randn(B, O_STEP + 1)),
            VALUE,
            ["y0", f"({B}, {O_STEP})", "(batch, output_size)"],
        ),
        (lambda: rnn(x, torch.randn(O_STEP)), VALUE, ["y0", "2-D", "got 1-D"]),
        (lambda: rnn(x, torch.randn(B, O_STEP, dtype=D)), VALUE, ["y0", "float64", "float32"]),
        (lambda: rnn(x[:, 0], torch.randn(B, O_STEP)), VALUE, ["y0", "1-D"]),
        (lambda: rnn(x, targets=torch.randn(T, B, O_STEP + 1)), VALUE, ["targets", f"({T}, {B}, {O_STEP})"]),
        (
            lambda: rnn(x, targets=torch.randn(T - 1, B, O_STEP)),
            VALUE,
            ["targets", f"({T - 1}, {B}, {O_STEP})"],
        ),
        (lambda: rnn(x, targets=torch.randn(T, O_STEP)), VALUE, ["targets", "3-D", "got 2-D"]),
        (lambda: rnn(x, targets=[0.0]), TYPE, ["targets", "list"]),
        (
            lambda: rnn(pack_padded_sequence(x, [5, 4, 3, 1]), targets=torch.randn(T, B, O_STEP)),
            VALUE,
            ["targets", "PackedSequence", "Tensor"],
        ),
        (lambda: rnn(x, lengths=[5, 2, 6, 1]), VALUE, ["lengths", f"1..{T}", "max 6"]),
        (lambda: rnn(x, lengths=[5, 0, 3, 1]), VALUE, ["lengths", "min 0"]),
        (lambda: rnn(x, lengths=[5, 2]), VALUE, ["lengths", f"({B})", "got 2"]),
        (lambda: rnn(x, lengths=torch.ones(B)), VALUE, ["lengths", "integer"]),
        (
            lambda: JordanRNN(I, H, O_STEP, output_activation="softplus"),
            VALUE,
            ["output_activation", "'softplus'"],
        ),
        (lambda: JordanRNN(I, H, 0), VALUE, ["output_size", ">= 1", "got 0"]),
        (lambda: JordanRNN(I, 2.0, O_STEP), TYPE, ["hidden_size", "int", "float"]),
        (lambda: JordanRNN(I, H, O_STEP, impl="cuda"), VALUE, ["impl", "'fused'", "'cuda'"]),
        (lambda: JordanRNN(I, H, O_STEP, bias=1), TYPE, ["bias", "bool", "int"]),
        (lambda: JordanRNN(I, H, O_STEP, batch_first=None), TYPE, ["batch_first", "bool", "NoneType"]),
        (lambda: JordanCell(I, H, O_STEP, output_activation="gelu"), VALUE, ["output_activation", "'gelu'"]),
        (lambda: JordanCell(I, H, O_STEP)(torch.randn(B, I + 2)), VALUE, ["input", f"{I} features"]),
        (lambda: JordanCell(I, H, O_STEP)(torch.randn(T, B, I)), VALUE, ["input", "1-D or 2-D", "got 3-D"]),
        (
            lambda: JordanCell(I, H, O_STEP)(torch.randn(B, I), torch.randn(B, H)),
            VALUE,
            ["y_prev", f"({B}, {O_STEP})", f"({B}, {H})"],
        ),
        (lambda: JordanCell(I, H, O_STEP)(torch.randn(I), torch.randn(B, O_STEP)), VALUE, ["y_prev", "1-D"]),
    ],
)
def test_errors(call, kind, fragments):
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, rnnkit.RnnkitError)
    assert isinstance(info.value, ValueError if kind is VALUE else TypeError)
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


def _kernel_args(**replace):
    w = dict(zip(["x", "y0", "w_ih", "w_yh", "b_h", "w_hy", "b_y"], [a.detach() for a in make_args()]))
    w.update(replace)
    return list(w.values())


@pytest.mark.parametrize(
    "args,kwargs,fragments",
    [
        (_kernel_args(x=torch.randn(T, B, I, dtype=D)[0]), {}, ["x", "3-D", "got 2-D"]),
        (_kernel_args(x=torch.randn(0, B, I, dtype=D)), {}, ["x", "at least one time step"]),
        (
            _kernel_args(w_ih=torch.randn(H, I + 1, dtype=D)),
            {},
            ["w_ih", f"(hidden_size, {I})", "input_size"],
        ),
        (_kernel_args(w_yh=torch.randn(H, H, dtype=D)), {}, ["w_yh", f"({H}, {O_STEP})", f"({H}, {H})"]),
        (_kernel_args(w_hy=torch.randn(O_STEP, H + 1, dtype=D)), {}, ["w_hy", f"(output_size, {H})"]),
        (_kernel_args(b_h=torch.randn(H + 1, dtype=D)), {}, ["b_h", f"({H},)", "(hidden_size,)"]),
        (_kernel_args(b_y=torch.randn(H, dtype=D)), {}, ["b_y", f"({O_STEP},)", "(output_size,)"]),
        (_kernel_args(y0=torch.randn(B + 1, O_STEP, dtype=D)), {}, ["y0", f"({B}, {O_STEP})"]),
        (_kernel_args(b_y=torch.randn(O_STEP)), {}, ["b_y", "float32", "float64"]),
        (_kernel_args(), {"output_activation": "elu"}, ["output_activation", "'elu'"]),
        (_kernel_args(), {"impl": "scan"}, ["impl", "'scan'"]),
        (_kernel_args(), {"batch_sizes": [4, 3, 3]}, ["batch_sizes", "one entry per time step"]),
        (_kernel_args(), {"batch_sizes": [4, 2, 3, 1, 1]}, ["batch_sizes", "non-increasing"]),
    ],
)
def test_kernel_errors(args, kwargs, fragments):
    with pytest.raises(VALUE) as info:
        jordan(*args, **kwargs)
    for f in fragments:
        assert f in str(info.value), f"{f!r} not in {str(info.value)!r}"


def test_teacher_forced_kernel_errors():
    args = _kernel_args()
    with pytest.raises(VALUE, match=r"targets must have shape \(5, 4, 2\)"):
        jordan_teacher_forced(args[0], torch.randn(T, B, O_STEP + 1, dtype=D), *args[1:])
    with pytest.raises(TYPE, match="targets must be a torch.Tensor"):
        jordan_teacher_forced(args[0], None, *args[1:])
