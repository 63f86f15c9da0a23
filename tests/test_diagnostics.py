"""rnnkit.diagnostics against independent references: ||dL/dh_t|| against an explicit loop of
torch.nn.*Cell steps with retain_grad, the spectrum against torch.linalg on the gate blocks, the
clipped norms against a plain backward of the whole sequence."""

import json
import math

import pytest
import torch

from rnnkit.diagnostics import gradient_flow, hidden_grad_norms, spectrum, write_report
from rnnkit.errors import RnnkitValueError
from rnnkit.layers import GRU, LSTM, RNN

T, B, I, H = 6, 3, 5, 4
F64 = {"dtype": torch.float64}
CELL_OF = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
OURS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def kind_of(layer) -> str:
    if isinstance(layer, (LSTM, torch.nn.LSTM)):
        return "lstm"
    return "gru" if isinstance(layer, (GRU, torch.nn.GRU)) else "rnn"


def reference_norms(layer, x, loss):
    """||dL/dh_t|| from a Python loop of torch cells holding the layer's weights: each h_t is the
    cell's output, read by the next step and the loss; h_t.grad is then the full dL/dh_t."""
    kind = kind_of(layer)
    extra = {"nonlinearity": layer.nonlinearity} if kind == "rnn" else {}
    cell = CELL_OF[kind](layer.input_size, layer.hidden_size, dtype=x.dtype, **extra)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    c, hs = torch.zeros_like(h), []
    for t in range(x.shape[0]):
        if kind == "lstm":
            h, c = cell(x[t], (h, c))
        else:
            h = cell(x[t], h)
        h.retain_grad()
        hs.append(h)
    (hs[-1].sum() if loss == "last" else sum(h.sum() for h in hs)).backward()
    return torch.stack([h.grad.norm() for h in hs])


def data(seed=0, length=T):
    return torch.randn(length, B, I, generator=torch.Generator().manual_seed(seed), **F64)


def fresh(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(I, H, **F64, **kw)


@pytest.mark.parametrize("loss", ["last", "all"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_hidden_grad_norms_torch_rnn(loss, nonlinearity):
    layer, x = fresh(torch.nn.RNN, nonlinearity=nonlinearity), data()
    torch.testing.assert_close(hidden_grad_norms(layer, x, loss=loss), reference_norms(layer, x, loss))


@pytest.mark.parametrize("loss", ["last", "all"])
@pytest.mark.parametrize("impl", ["fused", "loop"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_hidden_grad_norms_rnnkit(kind, impl, loss):
    layer, x = fresh(OURS[kind], seed=1, impl=impl), data(seed=2)
    got = hidden_grad_norms(layer, x, loss=loss)
    assert got.shape == (T,) and got.dtype == torch.float64
    torch.testing.assert_close(got, reference_norms(layer, x, loss))
    if loss == "last":  # dL/dh_T = 1 everywhere: its norm is sqrt(B * H)
        assert got[-1].item() == pytest.approx(math.sqrt(B * H))


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_fused_and_loop_agree(kind):
    fused, x = fresh(OURS[kind], seed=3), data(seed=4, length=12)
    loop = OURS[kind](I, H, **F64, impl="loop")
    loop.load_state_dict(fused.state_dict())
    for loss in ("last", "all"):
        torch.testing.assert_close(
            hidden_grad_norms(fused, x, loss=loss), hidden_grad_norms(loop, x, loss=loss)
        )


def test_hidden_grad_norms_leaves_layer_alone_and_batch_first():
    layer, x = fresh(LSTM, seed=5), data(seed=6)
    with torch.no_grad():  # works under no_grad, touches no parameter's .grad
        got = hidden_grad_norms(layer, x)
    assert all(p.grad is None for p in layer.parameters())
    bf = LSTM(I, H, **F64, batch_first=True)
    bf.load_state_dict(layer.state_dict())
    torch.testing.assert_close(hidden_grad_norms(bf, x), got)  # x stays time-major
    torch.testing.assert_close(got, reference_norms(layer, x, "last"))


@pytest.mark.parametrize(("cls", "gates"), [(torch.nn.RNN, 1), (LSTM, 4), (GRU, 3), (torch.nn.GRU, 3)])
def test_spectrum_matches_linalg(cls, gates):
    layer = fresh(cls, seed=7)
    s = spectrum(layer)
    json.dumps(s)  # plain Python values
    assert len(s["gates"]) == gates == len(s["blocks"])
    radii = []
    for name, w in zip(s["gates"], layer.weight_hh_l0.detach().split(H)):
        sv = torch.linalg.svdvals(w)
        mod = torch.linalg.eigvals(w).abs().sort(descending=True).values
        torch.testing.assert_close(torch.tensor(s["blocks"][name]["singular_values"], **F64), sv)
        torch.testing.assert_close(torch.tensor(s["blocks"][name]["eigenvalue_moduli"], **F64), mod)
        assert s["blocks"][name]["spectral_radius"] == pytest.approx(mod.max().item())
        radii.append(mod.max().item())
    assert s["spectral_radius"] == pytest.approx(max(radii))
    torch.testing.assert_close(
        torch.tensor(s["singular_values"], **F64), torch.linalg.svdvals(layer.weight_hh_l0.detach())
    )
    assert s["gates"] == {1: ["hh"], 4: ["i", "f", "g", "o"], 3: ["r", "z", "n"]}[gates]


@pytest.fixture(scope="module")
def flow():
    return gradient_flow(length=100, hidden_size=16, input_size=3, batch_size=4, seed=11, clip=0.5)


def rebuilt(kind, result):
    """The layer and input gradient_flow used, rebuilt from its documented recipe."""
    cfg = result["config"]
    torch.manual_seed(cfg["seed"])
    layer = OURS[kind](cfg["input_size"], cfg["hidden_size"], **F64)
    shape = (cfg["length"], cfg["batch_size"], cfg["input_size"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(cfg["seed"]), **F64)
    return layer, x


def test_gradient_flow_layout_and_vanishing(flow):
    json.loads(json.dumps(flow, allow_nan=False))
    assert list(flow["cells"]) == ["rnn", "lstm", "gru"]
    for kind, r in flow["cells"].items():
        assert len(r["grad_norms"]) == 100
        assert r["ratio_first_last"] == pytest.approx(r["grad_norms"][0] / r["grad_norms"][-1])
        layer, x = rebuilt(kind, flow)
        torch.testing.assert_close(torch.tensor(r["grad_norms"], **F64), reference_norms(layer, x, "last"))
        assert r["spectrum"] == spectrum(layer)
    rnn = flow["cells"]["rnn"]
    # default init, tanh, 100 steps: the gradient reaching h_1 has vanished
    assert rnn["grad_norms"][0] < 1e-6 * rnn["grad_norms"][-1]
    assert rnn["clipping"]["early_fraction"] < 1e-6


def test_gradient_flow_clipping(flow):
    for kind, r in flow["cells"].items():
        c = r["clipping"]
        layer, x = rebuilt(kind, flow)
        layer(x)[0][-1].sum().backward()  # the same loss, one plain backward over the whole sequence
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in layer.parameters()]))
        assert c["total_norm_before"] == pytest.approx(total.item(), rel=1e-9)
        assert c["total_norm_before"] > c["clip"] == 0.5  # clipping was active
        assert c["total_norm_after"] <= c["clip"] + 1e-6
        assert c["total_norm_after"] == pytest.approx(c["clip"], rel=1e-5)
        assert len(c["step_grad_norms"]) == 100 and c["early_steps"] == 10
        share = sum(c["step_grad_norms"][:10]) / sum(c["step_grad_norms"])
        assert c["early_fraction"] == pytest.approx(share) and 0 <= share <= 1
        # the per-step contributions add up to the total: their norms bound it from above
        assert sum(c["step_grad_norms"]) >= total.item() * (1 - 1e-9)


def test_gradient_flow_no_clipping_needed_and_rng_untouched():
    state = torch.random.get_rng_state()
    r = gradient_flow(("gru",), length=5, hidden_size=3, input_size=2, batch_size=2, clip=1e9)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = r["cells"]["gru"]["clipping"]
    assert c["total_norm_after"] == pytest.approx(c["total_norm_before"], rel=1e-12)
    assert c["early_steps"] == 1


def test_write_report(tmp_path):
    result = gradient_flow(length=10, hidden_size=4, input_size=2, batch_size=2)
    paths = write_report(result, tmp_path / "new" / "dir")
    assert paths["png"].name == "gradients.png" and paths["json"].name == "gradients.json"
    png = paths["png"].read_bytes()
    assert len(png) > 1000 and png[:4] == b"\x89PNG"
    with open(paths["json"]) as f:
        assert json.load(f) == result


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"cells": ("rnn", "lstmm")}, "cells"),
        ({"cells": ()}, "cells"),
        ({"cells": ("gru", "gru")}, "cells"),
        ({"length": 0}, "length"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"clip": 0.0}, "clip"),
        ({"loss": "mean"}, "loss"),
    ],
)
def test_gradient_flow_bad_arguments(kwargs, name):
    with pytest.raises(RnnkitValueError, match=name):
        gradient_flow(**kwargs)


def test_hidden_grad_norms_bad_arguments():
    x = data()
    with pytest.raises(RnnkitValueError, match="num_layers"):
        hidden_grad_norms(RNN(I, H, num_layers=2, **F64), x)
    with pytest.raises(RnnkitValueError, match="loss"):
        hidden_grad_norms(RNN(I, H, **F64), x, loss="first")
    with pytest.raises(RnnkitValueError, match="x must"):
        hidden_grad_norms(RNN(I, H, **F64), x[:0])
    with pytest.raises(RnnkitValueError, match="proj_size"):
        spectrum(LSTM(I, H, proj_size=2, **F64))


def test_first_layer_copies_the_bottom_forward_recurrence():
    from rnnkit.diagnostics import first_layer
    from rnnkit.models import SequenceClassifier, SequenceClassifierConfig

    model = SequenceClassifier(
        SequenceClassifierConfig(3, input_size=5, hidden_size=6, num_layers=2, cell="gru", bidirectional=True)
    )
    kind, layer = first_layer(model)
    assert kind == "gru" and layer.num_layers == 1 and not layer.bidirectional
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        torch.testing.assert_close(getattr(layer, name), getattr(model.rnn, name), rtol=0, atol=0)
    with pytest.raises(RnnkitValueError, match="no recurrent layer"):
        first_layer(torch.nn.Linear(2, 2))
