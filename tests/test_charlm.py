"""charlm on a text a user brings: small files, the selected weights, baselines computed once."""

import json
import math
import random

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.text import CharVocab


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_small_file_keeps_the_weights_before_overfitting(tmp_path, capsys):
    """A text of 3,000 characters overfits within a few hundred steps: validation rises again,
    the run stops early (the default patience) and keeps the best validation step's weights,
    not the last ones; the test record names that step."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))[:3000]
    data = tmp_path / "small.txt"
    data.write_text(text)
    run = tmp_path / "run"
    flags = ["--hidden-size", "64", "--embedding-dim", "16", "--seq-len", "32", "--batch-size", "8"]
    flags += ["--lr", "1e-2", "--schedule", "constant", "--dropout", "0", "--weight-dropout", "0"]
    flags += ["--steps", "1000", "--eval-every", "20", "--no-plots"]
    assert main(["train", "--data", str(data), *flags, "--out", str(run)]) == 0
    records = _records(run)
    val = [r for r in records if r["split"] == "val"]
    best = min(val, key=lambda r: r["bpc"])
    test = records[-1]
    assert test["split"] == "test" and test["selected_step"] == best["step"] < val[-1]["step"]
    assert val[-1]["bpc"] > best["bpc"] + 0.05  # it did overfit
    assert val[-1]["step"] < 1000  # and stopped early
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bpc"] == pytest.approx(test["bpc"])


def test_a_text_shorter_than_a_window_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "short.txt"
    data.write_text("x" * 120)  # 96 training characters, one window needs 101
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "fewer than one window" in err and "--seq-len" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_compressors_are_run_once(tmp_path, capsys, text_file, monkeypatch):
    """gzip and xz over the training and test text (xz -9 over tens of megabytes takes minutes)
    are computed when the run ends and read back by evaluate; a test file of the user's is
    measured afresh."""
    run = tmp_path / "run"
    flags = ["--hidden-size", "8", "--seq-len", "8", "--steps", "4", "--eval-every", "4", "--no-plots"]
    assert main(["train", "--data", str(text_file), *flags, "--out", str(run)]) == 0
    final = _records(run)[-1]
    saved = json.loads((run / "baseline.json").read_text())
    assert saved["xz_cond_bpc"] == final["xz_cond_bpc"]

    def refuse(*args):
        raise AssertionError("the compressors ran again")

    monkeypatch.setattr("rnnkit.tasks.charlm.compressor_bits", refuse)
    edited = {**saved, "xz_bpc": "small"}  # an edited record is not used: it is computed again
    (run / "baseline.json").write_text(json.dumps(edited))
    with pytest.raises(AssertionError, match="ran again"):
        main(["evaluate", str(run), "--json"])
    (run / "baseline.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["xz_bpc"] == final["xz_bpc"]
    monkeypatch.undo()
    other = tmp_path / "other.txt"
    other.write_text("a different test text. " * 20)
    assert main(["evaluate", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["xz_bpc"] != final["xz_bpc"]
    assert json.loads((run / "baseline.json").read_text()) == saved  # the run's own is kept


def test_encode_is_the_vocabulary_lookup():
    vocab = CharVocab("hello wörld\n")
    text = "hello wörld 😀 unseen\n" * 3
    assert vocab.encode(text).tolist() == [vocab.index.get(ch, 0) for ch in text]
    assert vocab.encode("").dtype == torch.long and vocab.encode("").numel() == 0


def test_subwords_report_bits_per_character(tmp_path, capsys, text_file):
    """--tokens bpe: a BPE tokenizer learnt on the training text, kept in the run; bpc is the
    mean bits per subword times subwords per character (so it compares with characters);
    sampling and the export (tokenizer beside the graph) give text."""
    import runpy
    from pathlib import Path

    import rnnkit
    from rnnkit.tasks.charlm import bits_per_char

    run = tmp_path / "run"
    flags = ["--tokens", "bpe", "--vocab-size", "300", "--hidden-size", "16", "--embedding-dim", "8"]
    flags += ["--seq-len", "16", "--steps", "4", "--eval-every", "4", "--no-plots"]
    assert main(["train", "--data", str(text_file), *flags, "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"]["kind"] == "bpe" and "vocab" not in config
    trained = rnnkit.Run.load(run)
    task = trained._task
    test = task.splits.test
    ids = task.vocab.encode(test)
    assert len(ids) < 0.8 * len(test)  # subwords: fewer steps than characters
    want = bits_per_char(trained.model, ids) * len(ids) / len(test)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bpc"] == pytest.approx(want)
    text = trained.predict(["The "])[0]
    assert text.startswith("The ") and len(text) > 4
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run)]) == 0
    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "onnx_predict.py"))
    import numpy as np

    sampled = example["charlm_sample"](
        example["Exported"](run / "model.json"), "The ", 20, 1.0, np.random.default_rng(0)
    )
    assert sampled.startswith("The ") and len(sampled) > 4


def test_each_pass_over_the_text_starts_its_streams_elsewhere(tmp_path):
    """Training reads the text as parallel streams with the state carried from window to window.
    Within a pass each stream goes on where its last window's k1 steps ended; a new pass starts
    them over (zero state) at other places of the text, read as a ring, so the zero state meets
    a different text each time. With fixed starts a trained model met it only before the same few
    beginnings, and from a zero state 12 of the 79 built-in topics' openings sent it into a state
    of about 19 bits a character (docs/tasks.md, charlm)."""
    from rnnkit.tasks.charlm import CharLMConfig, CharLMTask

    data = tmp_path / "text.txt"
    rng = random.Random(0)  # no window of the text occurs twice in it
    data.write_text("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000)))
    task = CharLMTask(CharLMConfig(seq_len=10, batch_size=4), data=str(data))
    ids, N = task.train_ids, len(task.train_ids)
    ring = torch.cat([ids, ids])

    def start(row):  # where a row sits in the text, checking that it is a piece of the ring
        return next(s for s in range(N) if torch.equal(ring[s : s + len(row)], row))

    passes, previous = {}, None
    for step in range(200):
        tokens, restart, k1 = task.batches(step)
        assert tokens.shape == (4, 11) and k1 == 10
        starts = [start(row) for row in tokens]
        if restart:
            passes[step] = starts
        else:  # each stream continues where the previous window's updates ended
            assert starts == [(s + k1) % N for s in previous]
        previous = starts
    assert len(passes) >= 3 and 0 in passes
    firsts = [tuple(s) for s in passes.values()]
    assert len(set(firsts)) == len(firsts)  # every pass starts its streams somewhere new
    assert len({s % k1 for f in firsts for s in f}) > 1  # and the windows' edges move too


def test_a_model_of_your_own_is_evaluated(tmp_path, text_file):
    """The task reads any model forward(tokens, state) -> (logits, state) (what the Trainer takes
    for a model of a user's own): no config, so no cache, and the figures still come."""
    from torch import nn

    from rnnkit.tasks.charlm import CharLMConfig, CharLMTask

    class Own(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.embedding, self.rnn, self.head = (
                nn.Embedding(vocab, 8),
                nn.LSTM(8, 16, batch_first=True),
                nn.Linear(16, vocab),
            )

        def forward(self, tokens, state=None):
            h, state = self.rnn(self.embedding(tokens), state)
            return self.head(h), state

    task = CharLMTask(CharLMConfig(seq_len=16, batch_size=4), data=str(text_file))
    task.run_dir = tmp_path
    model = Own(len(task.vocab))
    assert set(task.evaluate(model)) == {"bpc"}
    metrics = task.test_metrics(model)
    assert "bpc_without_cache" not in metrics and math.isfinite(metrics["bpc"])
