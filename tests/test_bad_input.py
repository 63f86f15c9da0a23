"""Bad input is refused at the public boundary with an rnnkit error that names the argument, what
was expected and what came; never a torch error from inside a matrix product."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import functional as F
from rnnkit.cells import GRUCell, LSTMCell, MGUCell, RNNCell

VALUE, TYPE = rnnkit.RnnkitValueError, rnnkit.RnnkitTypeError


def raises(kind, *fragments):
    """Context manager: the error is an RnnkitError of `kind` whose message has every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(kind)
            self.info = self.ctx.__enter__()
            return self

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert isinstance(self.info.value, rnnkit.RnnkitError)
            assert issubclass(kind, ValueError) == isinstance(self.info.value, ValueError)
            message = str(self.info.value)
            for f in fragments:
                assert f in message, f"{f!r} not in {message!r}"
            return handled

    return _Check()


gru = rnnkit.GRU(4, 6, num_layers=2)
lstm = rnnkit.LSTM(4, 6, num_layers=2)
x = torch.randn(5, 3, 4)


# --- layer forward -----------------------------------------------------------------------------


def test_input_rank():
    with raises(VALUE, "input", "2-D", "3-D", "got 1-D"):
        gru(torch.randn(4))
    with raises(VALUE, "input", "got 4-D", "(5, 3, 4, 1)"):
        gru(torch.randn(5, 3, 4, 1))


def test_feature_size():
    with raises(VALUE, "input", "4 features", "(5, 3, 7)"):
        gru(torch.randn(5, 3, 7))


def test_not_a_tensor():
    with raises(TYPE, "input", "list"):
        gru([[1.0, 2.0]])


def test_zero_length_sequence():
    with raises(VALUE, "at least one time step", "length 0"):
        gru(torch.randn(0, 3, 4))


@pytest.mark.parametrize(
    "shape, fragment",
    [((1, 3, 6), "(2, 3, 6)"), ((2, 2, 6), "(2, 3, 6)"), ((2, 3, 5), "(2, 3, 6)"), ((2, 3), "3-D")],
)
def test_hx_shape(shape, fragment):
    with raises(VALUE, "hx", fragment):
        gru(x, torch.randn(*shape))


def test_hx_wrong_type():
    with raises(TYPE, "hx", "list"):
        gru(x, [torch.zeros(2, 3, 6)])
    with raises(TYPE, "hx", "tuple (h_0, c_0)", "Tensor"):
        lstm(x, torch.zeros(2, 3, 6))
    with raises(TYPE, "hx", "length 3"):
        lstm(x, (torch.zeros(2, 3, 6),) * 3)


def test_lstm_c0_shape():
    with raises(VALUE, "c_0", "(2, 3, 6)", "(2, 3, 5)"):
        lstm(x, (torch.zeros(2, 3, 6), torch.zeros(2, 3, 5)))


def test_hx_rank_for_unbatched_input():
    with raises(VALUE, "hx", "2-D", "got 3-D"):
        gru(torch.randn(5, 4), torch.zeros(2, 1, 6))


@pytest.mark.parametrize(
    "bad, fragment", [([0, 5, 5], "1..5"), ([6, 5, 5], "1..5"), ([5, 5], "one entry per batch")]
)
def test_lengths_values(bad, fragment):
    with raises(VALUE, "lengths", fragment):
        gru(x, lengths=bad)


def test_lengths_types():
    with raises(VALUE, "lengths", "integer", "float"):
        gru(x, lengths=torch.tensor([5.0, 5.0, 5.0]))
    with raises(VALUE, "lengths", "integer", "bool"):
        gru(x, lengths=torch.tensor([True, True, True]))
    with raises(VALUE, "lengths", "1-D", "2-D"):
        gru(x, lengths=torch.tensor([[5, 5, 5]]))
    with raises(TYPE, "lengths", "str"):
        gru(x, lengths="5,5,5")
    with raises(TYPE, "lengths", "float"):
        gru(x, lengths=[5.0, 5, 5])


def test_lengths_with_packed_sequence():
    packed = pack_padded_sequence(x, [5, 3, 2])
    with raises(VALUE, "lengths", "PackedSequence"):
        gru(packed, lengths=[5, 3, 2])


def test_dtype_mismatch():
    with raises(VALUE, "input", "float64", "float32"):
        gru(x.double())
    with raises(VALUE, "hx", "float64", "float32"):
        gru(x, torch.zeros(2, 3, 6, dtype=torch.float64))


# --- constructors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, kind, fragments",
    [
        (dict(input_size=0, hidden_size=4), VALUE, ["input_size", ">= 1", "0"]),
        (dict(input_size=3, hidden_size=0), VALUE, ["hidden_size", ">= 1"]),
        (dict(input_size=3, hidden_size=-2), VALUE, ["hidden_size", "-2"]),
        (dict(input_size=3, hidden_size=4, num_layers=0), VALUE, ["num_layers", ">= 1"]),
        (dict(input_size=3, hidden_size=4, dropout=-0.1), VALUE, ["dropout", "[0, 1]", "-0.1"]),
        (dict(input_size=3, hidden_size=4, dropout=1.5), VALUE, ["dropout", "1.5"]),
        (dict(input_size=3, hidden_size=4, dropout="0.1"), TYPE, ["dropout", "str"]),
        (dict(input_size=3, hidden_size=4, impl="cuda"), VALUE, ["impl", "'fused'", "'cuda'"]),
        (dict(input_size=3, hidden_size=4, bias=1), TYPE, ["bias", "bool", "int"]),
        (dict(input_size=3.0, hidden_size=4), TYPE, ["input_size", "int", "float"]),
    ],
)
@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, rnnkit.MGU])
def test_constructor(cls, kwargs, kind, fragments):
    with raises(kind, *fragments):
        cls(**kwargs)


def test_nonlinearity():
    with raises(VALUE, "nonlinearity", "'tanh'", "'sigmoid'"):
        rnnkit.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("proj, fragment", [(4, "got 4"), (-1, "got -1"), (9, "1..3")])
def test_proj_size(proj, fragment):
    with raises(VALUE, "proj_size", fragment):
        rnnkit.LSTM(3, 4, proj_size=proj)


# --- functional kernels ------------------------------------------------------------------------

T, B, I, H = 4, 2, 3, 5


def args(gates):
    return [torch.randn(T, B, I), torch.zeros(B, H), torch.randn(gates * H, I), torch.randn(gates * H, H)]


KERNELS = {
    "rnn_tanh": (F.rnn_tanh, 1),
    "gru": (F.gru, 3),
    "mgu": (F.mgu, 2),
    "lstm": (lambda x, h, w1, w2, *a, **k: F.lstm(x, h, None, w1, w2, *a, **k), 4),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_functional_boundary(name):
    fn, G = KERNELS[name]
    x, h0, w_ih, w_hh = args(G)
    with raises(VALUE, "x", "3-D", "got 2-D"):
        fn(x[0], h0, w_ih, w_hh)
    with raises(VALUE, "w_ih", f"({G * H}, {I})", f"({G * H}, {I + 1})"):
        fn(x, h0, torch.randn(G * H, I + 1), w_hh)
    with raises(VALUE, "w_hh", f"({G * H}, {H})"):
        fn(x, h0, w_ih, torch.randn(G * H, H + 1))
    with raises(VALUE, "b_ih", f"({G * H},)"):
        fn(x, h0, w_ih, w_hh, torch.randn(G * H + 1), None)
    with raises(VALUE, "h0", f"({B}, {H})", f"({B + 1}, {H})"):
        fn(x, torch.zeros(B + 1, H), w_ih, w_hh)
    with raises(VALUE, "x", "float64", "float32"):
        fn(x.double(), h0, w_ih, w_hh)
    with raises(VALUE, "at least one time step"):
        fn(x[:0], h0, w_ih, w_hh)
    with raises(VALUE, "impl", "'fast'"):
        fn(x, h0, w_ih, w_hh, impl="fast")
    with raises(VALUE, "batch_sizes", "non-increasing"):
        fn(x, h0, w_ih, w_hh, batch_sizes=[1, 2, 2, 2])


# --- cells -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell, MGUCell])
def test_cells(cls):
    cell = cls(3, 4)
    with raises(VALUE, "input", "1-D or 2-D", "3-D"):
        cell(torch.randn(2, 2, 3))
    with raises(VALUE, "input", "3 features", "(2, 5)"):
        cell(torch.randn(2, 5))
    hx = torch.zeros(2, 5)
    with raises(VALUE, "(2, 4)", "(2, 5)"):
        cell(torch.randn(2, 3), (hx, hx) if cls is LSTMCell else hx)


def test_lstm_cell_hx_type():
    with raises(TYPE, "hx", "tuple"):
        LSTMCell(3, 4)(torch.randn(2, 3), torch.zeros(2, 4))


def test_projection_is_for_the_lstm_only():
    for layer in (rnnkit.GRU, rnnkit.RNN, rnnkit.MGU):
        with raises(VALUE, "proj_size", "LSTM only", layer.__name__):
            layer(8, 16, proj_size=4)
        layer(8, 16, proj_size=0)  # torch's default, accepted as torch does


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda: rnnkit.LSTM(8, 10**12), "LSTM(input_size=8, hidden_size=1000000000000"),
        (lambda: rnnkit.GRU(10**12, 8), "GRU(input_size=1000000000000"),
        (lambda: rnnkit.MinGRU(8, 10**12), "MinGRU(input_size=8, hidden_size=1000000000000"),
        (lambda: rnnkit.cells.LSTMCell(8, 10**12), "LSTMCell(input_size=8, hidden_size=1000000000000"),
        (lambda: rnnkit.JordanRNN(8, 10**12, 4), "hidden_size=1000000000000"),
    ],
)
def test_sizes_past_memory_are_a_clear_error(make, named):
    with raises(VALUE, named, "more memory than can be allocated"):
        make()
