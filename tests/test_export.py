"""`rnnkit export` (API.md, "Export"): for a short run of every task with predict, onnxruntime on
the files gives the PyTorch model's numbers (1e-4) on held-out inputs at several batch sizes and
lengths, and examples/onnx_predict.py (numpy and onnxruntime only) gives what `rnnkit predict`
prints."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.cli import main

ort = pytest.importorskip("onnxruntime")
EXAMPLE = Path(__file__).parent.parent / "examples" / "onnx_predict.py"
TINY = ["--steps", "4", "--eval-every", "2", "--hidden-size", "12"]


def train(root, task, *flags, data=None, name=None):
    out = root / (name or task)
    argv = ["train", task, "--out", str(out), *TINY, *flags, *([] if data is None else ["--data", str(data)])]
    assert main(argv) == 0
    assert main(["export", str(out)]) == 0
    return rnnkit.Run.load(out), out / "model.json"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE))  # its functions, as a program would call them


def session(json_path, part="model"):
    meta = json.loads(Path(json_path).read_text())
    (graph,) = [g for g in meta["graphs"] if g["part"] == part]
    return ort.InferenceSession(str(Path(json_path).with_name(graph["file"]))), meta


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(a, b.detach().numpy(), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def charlm(root, text_file):
    flags = ("--num-layers", "2", "--seq-len", "16", "--batch-size", "4")
    return train(root, "charlm", *flags, data=text_file)


def same_language_model(run, path, layers: int, sizes) -> None:
    """The graph of a charlm or music run: (tokens, states) -> (logits, states) as the model gives
    them, at each (batch, time) of `sizes`, from the JSON's initial state and from a state the
    model reached (the LSTM's h and c made random; a charlm's cache memory holding what it read)."""
    s, meta = session(path)
    n = len(meta["initial_state"])
    cache = run.model.config.cache_size
    assert n == 2 + 2 * bool(cache)  # LSTM: h, c; then the cache's keys and ids
    assert [i.name for i in s.get_inputs()] == ["tokens", *(f"state_in_{j}" for j in range(n))]
    assert [o.name for o in s.get_outputs()] == ["logits", *(f"state_out_{j}" for j in range(n))]
    V = len(meta["vocabulary"])
    g = torch.Generator().manual_seed(0)
    for B, T in sizes:
        tokens = torch.randint(0, V, (B, T), generator=g)
        initial = tuple(
            torch.tensor(x, dtype=torch.float32)[:, None].expand(-1, B, -1) for x in meta["initial_state"]
        )
        with torch.no_grad():
            _, reached = run.model(torch.randint(0, V, (B, 2 * T + 3), generator=g))
        reached = (*(torch.randn(layers, B, 12, generator=g) for _ in range(2)), *reached[2:])
        for state in (initial, reached):
            assert [tuple(x.shape) for x in state][:2] == [(layers, B, 12)] * 2
            with torch.no_grad():
                logits, out = run.model(tokens, state)
            got = s.run(
                None, {"tokens": tokens.numpy(), **{f"state_in_{j}": x.numpy() for j, x in enumerate(state)}}
            )
            for a, b in zip(got, (logits, *out), strict=True):
                close(a, b)


def test_charlm_logits_and_states(charlm):
    same_language_model(*charlm, layers=2, sizes=((1, 1), (3, 7), (8, 33)))


def test_charlm_example_samples_text(charlm, example):
    text = example["charlm_sample"](example["Exported"](charlm[1]), "The ", 30, 1.0, np.random.default_rng(0))
    assert text.startswith("The ") and len(text) == 34


@pytest.fixture(scope="module")
def labelled_text(root):
    rng = np.random.default_rng(0)
    rows = [
        f"{lab}\t{''.join(rng.choice(list(chars), rng.integers(3, 12)))}"
        for lab, chars in (("a", "abc"), ("x", "xyz"), ("m", "mno"))
        for _ in range(20)
    ]
    path = root / "labelled.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("cell", ["gru"])  # ONNX's GRU operator (the Scans: tests/test_traced.py)
def test_classify_text_probabilities(root, labelled_text, cell, capsys, example):
    flags = ("--cell", cell, "--bidirectional")
    run, path = train(root, "classify", *flags, data=labelled_text, name=f"classify-{cell}")
    s, meta = session(path)
    assert [i.name for i in s.get_inputs()] == ["tokens", "lengths"]
    g = torch.Generator().manual_seed(1)
    for B, T in ((1, 4), (5, 9), (16, 20)):
        tokens = torch.randint(0, len(meta["vocabulary"]), (B, T), generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        with torch.no_grad():
            want = run.model(tokens, lengths=lengths).softmax(-1)
        (got,) = s.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        close(got, want)
    texts = ["abcab", "zzyx\u2603", "nom", "a"]
    capsys.readouterr()
    assert main(["predict", str(run.run_dir), *texts]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [
        f"{label}\t{p:.4f}" for label, p in example["classify"](example["Exported"](path), texts)
    ] == printed


def test_tag_fields(root, capsys, example):
    run, path = train(root, "tag", "--examples", "100")
    s, meta = session(path)
    assert [i.name for i in s.get_inputs()] == ["tokens", "lengths"] and meta["unit"] == "char"
    g = torch.Generator().manual_seed(3)
    for B, T in ((1, 5), (4, 17)):
        tokens = torch.randint(0, len(meta["vocabulary"]), (B, T), generator=g)
        lengths = torch.cat([torch.tensor([T]), torch.randint(1, T + 1, (B - 1,), generator=g)])
        with torch.no_grad():
            logits, _ = run.model(tokens, lengths=lengths)
        (got,) = s.run(None, {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        for b in range(B):  # past a length the graph's numbers are not defined
            close(got[b, : lengths[b]], logits[b, : lengths[b]].softmax(-1))
    texts = ["10 Downing Street, London SW1A 2AA", "Hauptstr. 5, 10115 Berlin"]
    capsys.readouterr()
    assert main(["predict", str(run.run_dir), *texts]) == 0
    printed = capsys.readouterr().out.splitlines()
    fields = example["tag"](example["Exported"](path), texts)
    assert ["\t".join(f"{f}={t}" for f, t in fs) or "(no field found)" for fs in fields] == printed


def test_classify_numbers(root, example):
    run, path = train(root, "classify")  # the built-in digits: features (8 steps of 8)
    s, meta = session(path)
    assert [i.name for i in s.get_inputs()] == ["features", "lengths"] and meta["time_steps"] == 8
    g = torch.Generator().manual_seed(2)
    for B in (1, 7):
        raw = torch.rand(B, 8, 8, generator=g) * 16
        got = example["classify"](
            example["Exported"](path), [",".join(map(str, r.flatten().tolist())) for r in raw]
        )
        want = run.predict([",".join(map(str, r.flatten().tolist())) for r in raw])
        assert [lab for lab, _ in got] == [lab for lab, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-4)


def test_forecast_recursion(root, example, monkeypatch):
    from rnnkit.tasks.forecast import ForecastTask

    monkeypatch.setattr(ForecastTask, "arima_order", lambda self: (1, 0, 0))  # not what is tested here
    run, path = train(root, "forecast")
    model = example["Exported"](path)
    history = ",".join(str(v) for v in np.linspace(10, 150, 14))
    got = example["forecast"](model, history, 5)
    (want,) = run.predict([history])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_translate_and_colors_decode_as_predict(root, example):
    words = ["cat", "dog", "sun", "moon", "tree", "house", "river", "stone", "bird", "fish", "rain", "snow"]
    pairs = root / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1].upper()}\n" for w in words * 2))
    run, path = train(
        root, "translate", "--attention", "additive", "--bidirectional", "--max-output", "8", data=pairs
    )
    inputs = ["cat", "stones", "x"]
    assert example["translate"](example["Exported"](path), inputs) == run.predict(inputs)
    run, path = train(root, "colors")
    inputs = ["0.1,0.2,0.9", "1,0,0", "0.5,0.5,0.5"]
    assert example["color_names"](example["Exported"](path), inputs) == run.predict(inputs)


@pytest.mark.slow  # dates builds its 1,061 locales' patterns first (~10 s); translate covers the graphs
def test_dates_decodes_as_predict_with_a_locale(root, example):
    run, path = train(
        root, "dates", "--embedding-dim", "8", "--val-pairs", "20", "--test-pairs", "20", "--max-output", "12"
    )
    inputs = ["3 mars 2021", "12/05/1999"]
    assert example["translate"](example["Exported"](path), inputs, "fr") == run.predict(inputs, locale="fr")
    assert example["translate"](example["Exported"](path), inputs) == run.predict(inputs)


def test_music_logits_and_the_example_draws_a_piece(root, example, monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    run, path = train(root, "music", "--pieces", "6", "--voices", "4")
    _, meta = session(path)
    assert meta["voices"] == 4 and meta["vocabulary"][meta["end_id"]] == "<end>"
    same_language_model(run, path, layers=1, sizes=((1, 1), (4, 40)))
    text = example["music_sample"](example["Exported"](path), "K:G |", 16, 1.0, np.random.default_rng(0))
    from rnnkit.data import music

    assert text.startswith("K:G |") and music.parse_text(text, 4)  # rnnkit reads the piece back


def test_example_runs_without_torch(charlm):
    """The example's own process never imports torch (or rnnkit)."""
    code = f"""
import runpy, sys
sys.argv = ["onnx_predict.py", {str(charlm[1])!r}, "The ", "--length", "20"]
runpy.run_path({str(EXAMPLE)!r}, run_name="__main__")
assert "torch" not in sys.modules and "rnnkit" not in sys.modules, "torch was imported"
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("The ") and len(out) >= 25  # the prime, 20 characters and a newline


def test_export_refuses_to_replace_a_file_it_did_not_write(charlm, tmp_path, capsys):
    run_dir = str(charlm[0].run_dir)
    mine = tmp_path / "model.onnx"
    mine.write_text("a user's file")
    assert main(["export", run_dir, "--out", str(mine)]) == 2
    assert "not an rnnkit export" in capsys.readouterr().err and mine.read_text() == "a user's file"
    assert main(["export", run_dir, "--out", str(tmp_path / "m.txt")]) == 2
    # an export of ours is replaced
    assert main(["export", run_dir, "--out", str(tmp_path / "again.onnx")]) == 0
    assert main(["export", run_dir, "--out", str(tmp_path / "again.onnx")]) == 0


def test_memory_has_no_export(root, capsys):
    out = root / "memory"
    assert main(["train", "memory", "--out", str(out), *TINY, "--lag", "5"]) == 0
    capsys.readouterr()
    assert main(["export", str(out)]) == 2
    assert "no export" in capsys.readouterr().err


def test_export_without_the_extra_says_how_to_install(charlm, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    assert main(["export", str(charlm[0].run_dir)]) == 2
    assert "pip install 'rnnkit[export]'" in capsys.readouterr().err


def test_the_readme_onnx_commands_run(charlm):
    """README, "ONNX: predict without PyTorch": the shell block, on a run of this module."""
    import re
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"### ONNX: predict without PyTorch\n.*?```\n(.*?)```", readme, re.S)[1]
    run_dir = str(charlm[0].run_dir)
    bin_dir = Path(sys.executable).parent
    for line in block.strip().splitlines():
        argv = shlex.split(line.split("#")[0].replace("runs/tour", run_dir))
        argv[0] = str(bin_dir / "rnnkit") if argv[0] == "rnnkit" else sys.executable
        out = subprocess.run(
            argv, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
        ).stdout
    assert out.startswith("The ")
