"""Cells a user writes, through the public API only (rnnkit.cells.Cell, rnnkit.Recurrent,
rnnkit.cells.register), against loops written here: every sequence run alone, layer by layer and
direction by direction, is the reference for the layer's batched, padded and packed forms."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.cli import main


class Elman(rnnkit.cells.Cell):
    """h_t = tanh(W x_t + U h_{t-1} + b): one state."""

    recurrent_weights = ("weight_hh",)

    def __init__(self, input_size, hidden_size, scale=1.0):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size,)
        self.weight_ih = torch.nn.Parameter(
            torch.randn(hidden_size, input_size) * scale / math.sqrt(input_size)
        )
        self.weight_hh = torch.nn.Parameter(torch.randn(hidden_size, hidden_size) / math.sqrt(hidden_size))
        self.bias = torch.nn.Parameter(torch.randn(hidden_size) * 0.1)

    def forward(self, x_t, state):
        (h,) = state
        return (torch.tanh(x_t @ self.weight_ih.T + h @ self.weight_hh.T + self.bias),)


class Leaky(rnnkit.cells.Cell):
    """Two states: c_t = f * c_{t-1} + (1 - f) * tanh(W x_t + U h_{t-1}), h_t = tanh(c_t) * o,
    f = sigmoid(W_f x_t + U_f h_{t-1}), o = sigmoid(V x_t); the output h is narrower than c."""

    recurrent_weights = ("u", "u_f")

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.state_sizes = (H, H)
        self.w, self.w_f, self.v = (torch.nn.Parameter(torch.randn(H, input_size) * 0.5) for _ in range(3))
        self.u, self.u_f = (torch.nn.Parameter(torch.randn(H, H) * 0.3) for _ in range(2))

    def forward(self, x_t, state):
        h, c = state
        f = torch.sigmoid(x_t @ self.w_f.T + h @ self.u_f.T)
        c = f * c + (1 - f) * torch.tanh(x_t @ self.w.T + h @ self.u.T)
        return torch.tanh(c) * torch.sigmoid(x_t @ self.v.T), c


class FusedElman(Elman):
    """The same cell with a whole-sequence kernel: the input projection of all steps at once."""

    calls = 0

    def forward_sequence(self, x, state, batch_sizes=None):
        type(self).calls += 1
        (h,) = state
        pre = x @ self.weight_ih.T + self.bias  # (T, B, H) in one product
        ys = []
        for t in range(x.shape[0]):
            n = x.shape[1] if batch_sizes is None else batch_sizes[t]
            new = torch.tanh(pre[t, :n] + h[:n] @ self.weight_hh.T)
            h = torch.cat([new, h[n:]])
            ys.append(torch.cat([new, new.new_zeros(x.shape[1] - n, new.shape[1])]))
        return torch.stack(ys), (h,)


def reference(layer, seqs, hx=None, zoneout=None):
    """Each sequence alone through a plain loop over the layer's cells: (outputs, final states),
    outputs a list of (T_b, D * P), final states (L * D, B, n) per state."""
    L, D = layer.num_layers, layer.num_directions
    outs, finals = [], [[] for _ in layer.state_sizes]
    for b, seq in enumerate(seqs):
        inp, last = seq, []
        for k in range(L):
            ys = []
            for d in range(D):
                cell = layer.cells[k * D + d]
                s = tuple(
                    torch.zeros(n, dtype=seq.dtype) if hx is None else hx[j][k * D + d, b]
                    for j, n in enumerate(layer.state_sizes)
                )
                steps = inp if d == 0 else inp.flip(0)
                y = []
                for x_t in steps:
                    new = cell(x_t[None], tuple(v[None] for v in s))
                    new = tuple(v[0] for v in new)
                    if zoneout is not None:
                        new = tuple(p * old + (1 - p) * v for p, old, v in zip(zoneout, s, new))
                    s = new
                    y.append(s[0])
                y = torch.stack(y)
                ys.append(y if d == 0 else y.flip(0))
                last.append(s)
            inp = torch.cat(ys, dim=-1)
        outs.append(inp)
        for j in range(len(layer.state_sizes)):
            finals[j].append(torch.stack([s[j] for s in last]))
    return outs, [torch.stack(f, dim=1) for f in finals]


def make(cell, layers=1, bidirectional=False, **kw):
    torch.manual_seed(0)
    return rnnkit.Recurrent(cell, 3, 5, layers, bidirectional=bidirectional, dtype=torch.float64, **kw)


def padded(seqs):
    T = max(len(s) for s in seqs)
    x = torch.zeros(T, len(seqs), seqs[0].shape[1], dtype=torch.float64)
    for b, s in enumerate(seqs):
        x[: len(s), b] = s
    return x


SEQS = [
    torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) for n in (6, 2, 4, 6)
]


@pytest.mark.parametrize("cell", [Elman, Leaky, FusedElman])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True), (3, False), (1, True)])
def test_layer_equals_each_sequence_run_alone(cell, layers, bidirectional):
    layer = make(cell, layers, bidirectional)
    ref, ref_states = reference(layer, SEQS)
    lengths = [len(s) for s in SEQS]
    y, states = layer(padded(SEQS), lengths=lengths)
    for b, r in enumerate(ref):
        torch.testing.assert_close(y[: lengths[b], b], r, rtol=0, atol=1e-12)
        assert not y[lengths[b] :, b].any()  # zero past each length
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, rtol=0, atol=1e-12)
    # the same batch packed, and batch-first
    packed = pack_padded_sequence(padded(SEQS), torch.tensor(lengths), enforce_sorted=False)
    y_packed, states_packed = layer(packed)
    y_unpacked, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed)
    torch.testing.assert_close(y_unpacked, y, rtol=0, atol=1e-12)
    for a, b in zip(states_packed, states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    layer.batch_first = True
    y_first, _ = layer(padded(SEQS).transpose(0, 1), lengths=lengths)
    torch.testing.assert_close(y_first.transpose(0, 1), y, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", [Elman, Leaky])
def test_given_state_unbatched_input_and_equal_lengths(cell):
    layer = make(cell, 2, True)
    seqs = [s[:2] for s in SEQS]  # all of length 2: no lengths needed
    hx = tuple(torch.randn(4, len(seqs), n, dtype=torch.float64) for n in layer.state_sizes)
    ref, ref_states = reference(layer, seqs, hx)
    y, states = layer(padded(seqs), hx)
    torch.testing.assert_close(y, torch.stack(ref, dim=1), rtol=0, atol=1e-12)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, rtol=0, atol=1e-12)
    y1, states1 = layer(seqs[0], tuple(h[:, 0] for h in hx))  # unbatched: (T, I) and (L*D, n)
    torch.testing.assert_close(y1, ref[0], rtol=0, atol=1e-12)
    assert all(s.shape == (4, n) for s, n in zip(states1, layer.state_sizes))


def test_fused_and_stepped_paths_agree():
    fused = make(FusedElman, 2, True)
    stepped = make(FusedElman, 2, True, impl="loop")
    stepped.load_state_dict(fused.state_dict())
    x = padded(SEQS).requires_grad_()
    lengths = [len(s) for s in SEQS]
    FusedElman.calls = 0
    y, (h,) = fused(x, lengths=lengths)
    assert FusedElman.calls == 4  # every layer-direction ran its kernel
    grads = torch.autograd.grad((y**2).sum() + h.sum(), [x, *fused.parameters()])
    y2, (h2,) = stepped(x, lengths=lengths)
    assert FusedElman.calls == 4  # impl="loop" steps forward
    grads2 = torch.autograd.grad((y2**2).sum() + h2.sum(), [x, *stepped.parameters()])
    torch.testing.assert_close(y, y2, rtol=0, atol=1e-12)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", [Elman, Leaky])
def test_gradcheck_through_the_layer(cell):
    layer = rnnkit.Recurrent(cell, 2, 3, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def run(x, *weights):
        out = torch.func.functional_call(
            layer, dict(zip(dict(layer.named_parameters()), weights)), (x,), {"lengths": [4, 2]}
        )
        return out[0], *out[1]

    assert torch.autograd.gradcheck(run, (x, *params))


def test_zoneout_at_eval_is_its_expectation():
    layer = make(Leaky, 2, True, zoneout=(0.3, 0.6)).eval()
    ref, ref_states = reference(layer, SEQS, zoneout=(0.3, 0.6))
    lengths = [len(s) for s in SEQS]
    y, states = layer(padded(SEQS), lengths=lengths)
    for b, r in enumerate(ref):
        torch.testing.assert_close(y[: lengths[b], b], r, rtol=0, atol=1e-12)
    for s, r in zip(states, ref_states):
        torch.testing.assert_close(s, r, rtol=0, atol=1e-12)


def test_zoneout_in_training_keeps_or_updates_each_unit():
    layer = make(Elman, zoneout=0.5).train()
    x = padded(SEQS[:1])
    torch.manual_seed(3)
    y, _ = layer(x)
    y_plain, _ = make(Elman)(x)
    # a kept unit repeats its previous value; an updated one is the cell's new value
    prev = torch.cat([torch.zeros_like(y[:1]), y[:-1]])
    assert ((y - prev).abs() < 1e-15).any() and ((y - prev).abs() > 1e-6).any()
    assert not torch.equal(y, y_plain)


class Recording(Elman):
    seen: list = []

    def forward(self, x_t, state):
        type(self).seen.append((self.weight_ih, self.weight_hh))
        return super().forward(x_t, state)


def test_weight_dropout_masks_exactly_the_recurrent_weights():
    layer = make(Recording, weight_dropout=0.5).train()
    Recording.seen = []
    layer(padded(SEQS[:2]))
    cell = layer.cells[0]
    first_ih, first_hh = Recording.seen[0]
    assert all(w_ih is cell.weight_ih for w_ih, _ in Recording.seen)  # W_ih is never masked
    ratio = first_hh / cell.weight_hh
    assert set(ratio.unique().tolist()) <= {0.0, 2.0} and (ratio == 0).any() and (ratio == 2).any()
    assert all(torch.equal(w_hh, first_hh) for _, w_hh in Recording.seen)  # one mask per forward
    Recording.seen = []
    layer.eval()(padded(SEQS[:2]))
    assert all(w_hh is cell.weight_hh for _, w_hh in Recording.seen)  # identity at eval


def test_recurrent_dropout_masks_the_state_the_cell_reads():
    layer = make(Elman, recurrent_dropout=0.5).train()
    x = padded(SEQS[:1])
    torch.manual_seed(5)
    y, _ = layer(x)
    torch.manual_seed(5)
    mask = torch.empty(1, 5, dtype=torch.float64).bernoulli_(0.5).div_(0.5)  # drawn as the layer does
    h = torch.zeros(1, 5, dtype=torch.float64)
    cell = layer.cells[0]
    for t in range(x.shape[0]):
        (h,) = cell(x[t], (h * mask,))
        torch.testing.assert_close(y[t], h, rtol=0, atol=1e-12)


def test_learned_initial_state_and_dropout_between_layers():
    layer = make(Leaky, 2, learn_initial_state=True)
    assert [n for n, _ in layer.named_parameters() if n.startswith("initial")] == [
        "initial_state_0",
        "initial_state_1",
    ]
    with torch.no_grad():
        layer.initial_state_0.normal_()
        layer.initial_state_1.normal_()
    hx = tuple(p[:, None].expand(-1, 4, -1) for p in (layer.initial_state_0, layer.initial_state_1))
    y_learned, _ = layer(padded(SEQS), lengths=[len(s) for s in SEQS])
    y_given, _ = layer(padded(SEQS), hx, lengths=[len(s) for s in SEQS])
    torch.testing.assert_close(y_learned, y_given, rtol=0, atol=0)


def test_bad_cells_and_options_are_clear_errors():
    class NoSizes(rnnkit.cells.Cell):
        def forward(self, x_t, state):
            return state

    with pytest.raises(rnnkit.RnnkitValueError, match="state_sizes"):
        rnnkit.Recurrent(NoSizes, 3, 4)
    with pytest.raises(rnnkit.RnnkitTypeError, match="Elman"):
        rnnkit.Recurrent(Elman, 3, 4, no_such_option=1)
    with pytest.raises(rnnkit.RnnkitValueError, match="recurrent_weights"):
        rnnkit.Recurrent(type("Unnamed", (Elman,), {"recurrent_weights": ()}), 3, 4, weight_dropout=0.5)
    with pytest.raises(rnnkit.RnnkitValueError, match="not_registered"):
        rnnkit.Recurrent("not_registered", 3, 4)
    with pytest.raises(rnnkit.RnnkitTypeError, match="hx"):
        rnnkit.Recurrent(Leaky, 3, 4)(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))  # two states needed
    layer = rnnkit.Recurrent(Elman, 3, 4, scale=0.5)  # an option of the cell's own
    assert layer(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


def test_registry():
    rnnkit.cells.register("test_elman", Elman)
    rnnkit.cells.register("test_elman", Elman)  # the same class again: a no-op
    assert "test_elman" in rnnkit.cells.available()
    assert {"rnn", "lstm", "gru", "mgu", "ln_lstm", "ln_gru", "min_gru", "min_lstm"} <= set(
        rnnkit.cells.available()
    )
    for name, cls, error in (
        ("test_elman", Leaky, "taken by"),
        ("lstm", Elman, "built-in"),
        ("Bad Name", Elman, "lower-case"),
        ("test_other", torch.nn.Linear, "subclass of rnnkit.cells.Cell"),
    ):
        with pytest.raises(rnnkit.RnnkitError, match=error):
            rnnkit.cells.register(name, cls)
    layer = rnnkit.Recurrent("test_elman", 3, 4)
    assert isinstance(layer.cells[0], Elman)
    # a built-in name is the family's layer, with its parameter names
    lstm = rnnkit.Recurrent("lstm", 3, 4, 2, bidirectional=True)
    assert isinstance(lstm, rnnkit.LSTM)
    assert lstm.state_dict().keys() == rnnkit.LSTM(3, 4, 2, bidirectional=True).state_dict().keys()


@pytest.mark.parametrize("name", rnnkit.cells.available()[:10])
def test_a_built_in_name_is_its_layer_with_states_as_tuples(name):
    """Recurrent(name) has the named layer's state_dict and gives its numbers, with hx and the
    final state as tuples (one tensor per state) as for any cell."""
    torch.manual_seed(0)
    ours = rnnkit.Recurrent(name, 3, 4, 2, bidirectional=True, dtype=torch.float64)
    named = rnnkit.layers.by_name.LAYERS[name](3, 4, 2, bidirectional=True, dtype=torch.float64)
    named.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == named.state_dict().keys()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, states = ours(x)
    y_named, state_named = named(x)
    state_named = (state_named,) if isinstance(state_named, torch.Tensor) else state_named
    torch.testing.assert_close(y, y_named, rtol=0, atol=0)
    assert isinstance(states, tuple) and len(states) == len(state_named)
    for a, b in zip(states, state_named):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    y_again, _ = ours(x, states)  # the final state fed back as hx
    torch.testing.assert_close(y_again, named(x, state_named[0] if len(states) == 1 else state_named)[0])


def test_a_registered_cell_trains_from_the_command_line_and_loads_back(tmp_path, text_file, capsys):
    rnnkit.cells.register("test_leaky", Leaky)
    run = tmp_path / "run"
    argv = ["train", "--cell", "test_leaky", "--data", str(text_file), "--steps", "4", "--eval-every", "2"]
    assert (
        main([*argv, "--hidden-size", "8", "--embedding-dim", "4", "--seq-len", "10", "--out", str(run)]) == 0
    )
    model = rnnkit.load(run)
    assert isinstance(model.rnn.cells[0], Leaky)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["bpc"] < 10


ENTRY_CELL = """
import torch
import rnnkit


class EntryElman(rnnkit.cells.Cell):
    recurrent_weights = ("weight_hh",)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.state_sizes = (hidden_size,)
        self.weight_ih = torch.nn.Parameter(torch.randn(hidden_size, input_size) * 0.3)
        self.weight_hh = torch.nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.3)

    def forward(self, x_t, state):
        return (torch.tanh(x_t @ self.weight_ih.T + state[0] @ self.weight_hh.T),)
"""


def test_a_cell_of_an_installed_package_loads_through_its_entry_point(tmp_path, text_file):
    """A package that declares its cell in the rnnkit.cells entry-point group (here a module and
    its dist-info on PYTHONPATH, as an installed package has): the command line offers the cell,
    and a run trained with it loads back in another process."""
    site = tmp_path / "site"
    (site / "entry_cells-0.1.dist-info").mkdir(parents=True)
    (site / "entry_cells.py").write_text(ENTRY_CELL)
    (site / "entry_cells-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: entry-cells\nVersion: 0.1\n"
    )
    (site / "entry_cells-0.1.dist-info" / "entry_points.txt").write_text(
        "[rnnkit.cells]\nentry_elman = entry_cells:EntryElman\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    run = tmp_path / "run"
    common = [
        "--data",
        str(text_file),
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--hidden-size",
        "6",
        "--seq-len",
        "10",
    ]
    train = [sys.executable, "-m", "rnnkit", "train", "--cell", "entry_elman", *common, "--out", str(run)]
    assert subprocess.run(train, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    evaluate = [sys.executable, "-m", "rnnkit", "evaluate", str(run), "--json"]
    out = subprocess.run(evaluate, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 0 < json.loads(out.stdout)["bpc"] < 10
    without = subprocess.run(evaluate, capture_output=True, text=True, timeout=300)  # package gone
    assert without.returncode == 2 and without.stderr.count("\n") == 1 and "entry_elman" in without.stderr


@pytest.mark.parametrize("cell", rnnkit.cells.available()[:10])
def test_every_built_in_cell_trains_evaluates_samples_and_loads_back(tmp_path, text_file, capsys, cell):
    run = tmp_path / "run"
    argv = ["train", "--cell", cell, "--data", str(text_file), "--steps", "3", "--eval-every", "3"]
    assert (
        main([*argv, "--hidden-size", "8", "--embedding-dim", "4", "--seq-len", "10", "--out", str(run)]) == 0
    )
    assert json.loads((run / "config.json").read_text())["model"]["config"]["cell"] == cell
    assert type(rnnkit.load(run).rnn).__name__ == type(rnnkit.Recurrent(cell, 4, 8)).__name__
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["bpc"] < 10
    assert main(["sample", str(run), "--length", "20", "--prime", "The "]) == 0
    assert capsys.readouterr().out.startswith("The ")


REGULARIZED = [
    "--zoneout",
    "0.1",
    "--recurrent-dropout",
    "0.2",
    "--weight-dropout",
    "0.3",
    "--learn-initial-state",
]
OTHER_TASKS = {
    "classify": ["--cell", "mgu", "--batch-size", "8"],
    "forecast": ["--cell", "ln_gru"],
    "dates": ["--cell", "gru_reset_before", "--val-pairs", "8", "--test-pairs", "8", "--max-output", "12"],
    "translate": ["--cell", "rnn_relu"],
    "colors": ["--cell", "ln_lstm", "--batch-size", "8"],
    "music": ["--cell", "mgu", "--pieces", "5"],
}


@pytest.mark.parametrize("task", list(OTHER_TASKS))
def test_every_task_takes_a_non_default_cell_and_every_regularizer(tmp_path, capsys, task, quick_arima):
    data = []
    if task == "translate":
        (tmp_path / "pairs.tsv").write_text(
            "".join(f"{w}\t{w[::-1]}\n" for w in ("cat", "dog", "sun", "moon") * 4)
        )
        data = ["--data", str(tmp_path / "pairs.tsv")]
    run = tmp_path / "run"
    argv = ["train", task, *data, *OTHER_TASKS[task], *REGULARIZED, "--hidden-size", "6", "--steps", "2"]
    assert main([*argv, "--eval-every", "2", "--out", str(run)]) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    for key, value in (
        ("zoneout", 0.1),
        ("recurrent_dropout", 0.2),
        ("weight_dropout", 0.3),
        ("learn_initial_state", True),
    ):
        assert saved["task_config"][key] == value and saved["model"]["config"][key] == value
    model = rnnkit.load(run)  # honoured when the run loads back
    layers = [m for m in model.modules() if hasattr(m, "regularizer")]
    assert layers and all(
        m.regularizer.zoneout[0] == 0.1 and m.regularizer.weight_dropout == 0.3 for m in layers
    )
    assert all(m.regularizer.recurrent_dropout == 0.2 and m.learn_initial_state for m in layers)
    assert saved["model"]["config"]["cell"] == OTHER_TASKS[task][1]


def test_a_cell_without_a_regularizer_says_so(tmp_path, text_file, capsys):
    argv = [
        "train",
        "--cell",
        "min_gru",
        "--zoneout",
        "0.1",
        "--data",
        str(text_file),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*argv, "--steps", "1"]) == 2
    assert "cell 'min_gru' does not take zoneout" in capsys.readouterr().err


@pytest.mark.slow
def test_a_user_cell_compiles_with_its_loop_unrolled():
    """API.md, Export: a user's cell without forward_sequence runs under torch.compile
    (fullgraph=True), its loop unrolled at the traced length, with the eager numbers."""
    layer = make(Leaky, 2, True)
    x = padded(SEQS[:2])[:4]
    compiled = torch.compile(layer, fullgraph=True)
    y, (h, c) = compiled(x)
    y0, (h0, c0) = layer(x)
    for a, b in ((y, y0), (h, h0), (c, c0)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
