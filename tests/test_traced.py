"""Every built-in layer under tracing (rnnkit.cells.traced): torch.compile(fullgraph=True),
torch.export.export and torch.onnx.export (dynamo) give the eager layer's numbers, with and
without `lengths`, T and B dynamic, at sizes other than those traced."""

import pytest
import torch
from torch.export import Dim

import rnnkit

I, H = 5, 7
LAYERS = {
    "rnn": lambda: rnnkit.RNN(I, H, batch_first=True),
    "rnn_relu": lambda: rnnkit.RNN(I, H, nonlinearity="relu", batch_first=True),
    "lstm": lambda: rnnkit.LSTM(I, H, batch_first=True),
    "lstm_proj": lambda: rnnkit.LSTM(I, H, proj_size=3, batch_first=True),
    "gru": lambda: rnnkit.GRU(I, H, batch_first=True),
    "gru_reset_before": lambda: rnnkit.GRU(I, H, reset_after=False, batch_first=True),
    "mgu": lambda: rnnkit.MGU(I, H, batch_first=True),
    "ln_lstm": lambda: rnnkit.Recurrent("ln_lstm", I, H, batch_first=True),
    "ln_gru": lambda: rnnkit.Recurrent("ln_gru", I, H, batch_first=True),
    "min_gru": lambda: rnnkit.MinGRU(I, H, batch_first=True),
    "min_lstm": lambda: rnnkit.MinLSTM(I, H, batch_first=True),
    "jordan": lambda: rnnkit.JordanRNN(I, H, 4, batch_first=True),
    "lstm_2_layers_bidirectional": lambda: rnnkit.LSTM(
        I, H, num_layers=2, bidirectional=True, batch_first=True
    ),
    "mgu_2_layers_bidirectional": lambda: rnnkit.MGU(
        I, H, num_layers=2, bidirectional=True, batch_first=True
    ),
    "cell_unit": lambda: rnnkit.Recurrent(rnnkit.cells.registry.registered("gru"), I, H, batch_first=True),
}
# in eval only (in training their masks are random draws): zoneout's expectation, still a Scan
EVAL_ONLY = {"lstm_zoneout": lambda: rnnkit.LSTM(I, H, zoneout=0.2, batch_first=True)}
INDUCTOR_FAST = ("lstm", "jordan")  # the rest of inductor under the slow marker


class Outputs(torch.nn.Module):
    """A layer's outputs as a flat tuple (y, *final states), what every tracer takes."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, lengths=None):
        y, s = self.layer(x, lengths=lengths)
        return (y, *(s if isinstance(s, tuple) else (s,)))


def make(name):
    torch.manual_seed(0)
    return Outputs({**LAYERS, **EVAL_ONLY}[name]()).eval()


def inputs(B, T, with_lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, I, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g) if with_lengths else None
    if with_lengths:
        lengths[0] = T  # one full-length row and, with B > 1, shorter ones
    return x, lengths


def call(model, x, lengths):
    return model(x) if lengths is None else model(x, lengths)


def outputs_and_grads(model, x, lengths):
    x = x.clone().requires_grad_()
    out = call(model, x, lengths)
    weights = [torch.linspace(0.5, 1.5, o.numel()).view(o.shape) for o in out]  # every output counts
    loss = sum((o * w).sum() for o, w in zip(out, weights))
    return [*out, *torch.autograd.grad(loss, [x, *model.parameters()])]


def dynamic(with_lengths):
    BT = {0: Dim("batch"), 1: Dim("time")}
    return (BT, {0: Dim("batch")}) if with_lengths else (BT,)


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.as_tensor(a), b.detach(), rtol=tol, atol=tol)


def compiled_matches_eager(name, with_lengths, backend):
    torch._dynamo.reset()
    model = make(name).train()  # gradients too
    fn = torch.compile(model, fullgraph=True, backend=backend, dynamic=True)
    for B, T in ((3, 6), (4, 9)):
        x, lengths = inputs(B, T, with_lengths, seed=B)
        assert_close(outputs_and_grads(fn, x, lengths), outputs_and_grads(model, x, lengths), 1e-5)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_compile_fullgraph_equals_eager(name, with_lengths):
    compiled_matches_eager(name, with_lengths, "aot_eager")


@pytest.mark.parametrize("name", INDUCTOR_FAST)
def test_compile_inductor_equals_eager(name):
    compiled_matches_eager(name, True, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("name", [n for n in LAYERS if n not in INDUCTOR_FAST])
def test_compile_inductor_equals_eager_all(name, with_lengths):
    compiled_matches_eager(name, with_lengths, "inductor")


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_export_equals_eager(name, with_lengths):
    model = make(name)
    x, lengths = inputs(3, 6, with_lengths)
    args = (x,) if lengths is None else (x, lengths)
    program = torch.export.export(model, args, dynamic_shapes=dynamic(with_lengths))
    for B, T in ((2, 4), (5, 11)):
        x, lengths = inputs(B, T, with_lengths, seed=B)
        with torch.no_grad():
            assert_close(call(program.module(), x, lengths), call(model, x, lengths), 1e-5)


def test_export_holds_one_op_per_direction_whatever_the_length():
    """The loop over time is inside the op: the graph does not grow with T."""
    model = make("lstm_2_layers_bidirectional")
    counts = []
    for T in (5, 50):
        x, lengths = inputs(2, T, True)
        program = torch.export.export(model, (x, lengths))
        nodes = list(program.graph.nodes)
        counts.append(len(nodes))
        assert sum("rnnkit.sequence" in str(n.target) for n in nodes) == 4
    assert counts[0] == counts[1]


def onnx_matches_eager(name, with_lengths, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = make(name)
    x, lengths = inputs(3, 6, with_lengths)
    args = (x,) if lengths is None else (x, lengths)
    program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic(with_lengths), verbose=False)
    path = tmp_path / f"{name}.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for B, T in ((2, 4), (5, 11)):
        x, lengths = inputs(B, T, with_lengths, seed=B)
        feeds = dict(zip(names, [x.numpy()] + ([] if lengths is None else [lengths.numpy()])))
        with torch.no_grad():
            assert_close(session.run(None, feeds), call(model, x, lengths), 1e-4)
    return program


# The plain LSTM, GRU and RNN become ONNX's own operators (onnxruntime's fused kernels), the
# other cells a Scan over their step; the rest of the layers (and each without lengths) are slow.
ONNX_FAST = {
    "lstm": "LSTM",
    "gru_reset_before": "GRU",
    "rnn_relu": "RNN",
    "mgu_2_layers_bidirectional": "Scan",  # several scans in one graph: batch stays dynamic
    "lstm_2_layers_bidirectional": "LSTM",
}


@pytest.mark.parametrize("name", ONNX_FAST)
def test_onnx_runtime_equals_eager(name, tmp_path):
    program = onnx_matches_eager(name, True, tmp_path)
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert ONNX_FAST[name] in ops and ("Scan" in ops) == (ONNX_FAST[name] == "Scan")


@pytest.mark.slow
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("name", [*LAYERS, *EVAL_ONLY])
def test_onnx_runtime_equals_eager_all(name, with_lengths, tmp_path):
    onnx_matches_eager(name, with_lengths, tmp_path)


def test_traced_lengths_are_checked_when_the_op_runs():
    program = torch.export.export(make("gru"), inputs(3, 6, True), dynamic_shapes=dynamic(True))
    x, _ = inputs(2, 4, False)
    with pytest.raises(rnnkit.RnnkitError, match="lengths"):
        program.module()(x, torch.tensor([4, 7]))


def test_a_saved_exported_program_runs_in_a_fresh_process(tmp_path):
    """The op finds its kernel again by the spec it holds (registry name, sizes, options)."""
    import subprocess
    import sys

    model = make("ln_gru")
    x, lengths = inputs(3, 6, True)
    torch.export.save(torch.export.export(model, (x, lengths)), tmp_path / "m.pt2")
    with torch.no_grad():
        want = call(model, x, lengths)[0]
    torch.save({"x": x, "lengths": lengths, "want": want}, tmp_path / "io.pt")
    code = f"""
import torch, rnnkit.cells
io = torch.load({str(tmp_path / "io.pt")!r})
program = torch.export.load({str(tmp_path / "m.pt2")!r})
got = program.module()(io["x"], io["lengths"])[0]
torch.testing.assert_close(got, io["want"], rtol=1e-6, atol=1e-6)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eager_path_does_not_use_the_op(monkeypatch):
    """Outside tracing the fused kernels run directly, their intermediates kept for backward."""
    from rnnkit.cells import traced

    def fail(*args):
        raise AssertionError("the op ran eagerly")

    monkeypatch.setattr(traced, "sequence", fail)
    model = make("lstm").train()
    x, lengths = inputs(2, 5, True)
    outputs_and_grads(model, x, lengths)


def test_the_readme_tracing_example_runs(capsys):
    """README, "torch.compile and torch.export": the code block as written."""
    import pathlib
    import re

    torch._dynamo.reset()
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"### torch.compile and torch.export\n.*?```python\n(.*?)```", readme, re.S)[1]
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([3, 80, 64])"


MODELS = {
    "language_model": lambda m: (
        m.LanguageModel(m.LanguageModelConfig(20, hidden_size=16, embedding_dim=8)),
        (torch.randint(0, 20, (3, 7)),),
    ),
    "language_model_with_cache": lambda m: (  # charlm's model: the cache's memory in the state
        m.LanguageModel(m.LanguageModelConfig(20, hidden_size=16, embedding_dim=8, cache_size=5)),
        (torch.randint(0, 20, (3, 7)),),
    ),
    "classifier": lambda m: (
        m.SequenceClassifier(
            m.SequenceClassifierConfig(
                4, vocab_size=20, hidden_size=16, pooling="attention", bidirectional=True
            )
        ),
        (torch.randint(0, 20, (3, 7)),),
    ),
    "tagger": lambda m: (
        m.SequenceTagger(m.SequenceTaggerConfig(5, input_size=6, hidden_size=16, cell="mgu")),
        (torch.randn(3, 7, 6),),
    ),
}


@pytest.mark.parametrize("name", MODELS)
def test_models_compile_and_export(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, args = MODELS[name](rnnkit.models)
    model.eval()
    flat = lambda out: torch.utils._pytree.tree_leaves(out)  # noqa: E731
    with torch.no_grad():
        want = flat(model(*args))
        assert_close(flat(torch.compile(model, fullgraph=True, backend="aot_eager")(*args)), want, 1e-5)
        assert_close(flat(torch.export.export(model, args).module()(*args)), want, 1e-5)


def test_a_registered_cell_exports_to_onnx_as_a_scan(tmp_path):
    """A cell written against the public hook (IndRNN, with its own forward_sequence) keeps a
    dynamic time axis in ONNX: a Scan over its forward with its parameters as inputs."""
    torch.manual_seed(0)
    layer = rnnkit.Recurrent("indrnn", I, H, batch_first=True)
    LAYERS["indrnn_scan"] = lambda: layer
    try:
        program = onnx_matches_eager("indrnn_scan", True, tmp_path)
    finally:
        del LAYERS["indrnn_scan"]
    assert "Scan" in {node.op_type for node in program.model_proto.graph.node}
