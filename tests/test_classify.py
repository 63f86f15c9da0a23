"""classify on text: batches of similar lengths (same loss and gradient as one batch of the same
examples), evaluation in length order, steps by the data's size, early stopping by default,
the report (accuracy and macro-F1 beside the baseline's)."""

import json

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks._common import bucket_batch, by_length
from rnnkit.tasks.classify import ClassifyConfig, ClassifyTask


def _lines(n: int, seed: int = 0, labels=("a", "b", "c")) -> list[str]:
    """`label<TAB>text` lines of 3-40 characters whose label shows in the letters used."""
    rng = np.random.default_rng(seed)
    alphabet = {"a": "abcdefg ", "b": "defghij ", "c": "hijklmn "}
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        size = int(rng.integers(3, 41))
        out.append(f"{label}\t{''.join(rng.choice(list(alphabet[label]), size)).strip() or 'x'}")
    return out


@pytest.fixture
def text_task(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("\n".join(_lines(90)) + "\n")
    config = ClassifyConfig(hidden_size=6, embedding_dim=5, dropout=0.0, batch_size=8)
    return ClassifyTask(config, data=path)


def test_bucket_batch_visits_every_example_once_an_epoch_in_batches_of_similar_lengths():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0))
    per_epoch = 1000 // 10  # pools of 50 batches of 10: every batch full
    epoch = [bucket_batch(lengths, 10, step, pool=50) for step in range(per_epoch)]
    assert sorted(torch.cat(epoch).tolist()) == list(range(1000))
    assert torch.equal(bucket_batch(lengths, 10, 7, pool=50), epoch[7])  # known without replaying
    assert not torch.equal(bucket_batch(lengths, 10, per_epoch + 7, pool=50), epoch[7])  # a new epoch
    spread = np.mean([float(lengths[b].max() - lengths[b].min()) for b in epoch])
    assert spread < 10  # random batches of 10 from 1..199 spread over ~160
    # a ragged end: 1,003 examples in pools of 500 -> 50 + 50 + 1 batches, still each once
    lengths = torch.randint(1, 50, (1003,), generator=torch.Generator().manual_seed(1))
    epoch = [bucket_batch(lengths, 10, step, pool=50) for step in range(101)]
    assert sorted(torch.cat(epoch).tolist()) == list(range(1003))


def test_bucketed_batches_give_the_loss_and_gradient_of_one_batch(text_task):
    """Float64: an epoch of length-bucketed batches (padded, run with lengths=) gives the same
    class-weighted loss and gradient as one unsorted batch of the same examples."""
    task = text_task
    torch.manual_seed(0)
    model = task.build_model().double().train()  # dropout 0: training mode changes nothing else
    n = len(task.train.labels)
    per_epoch = -(-n // task.config.batch_size)
    total, weight_sum = 0.0, 0.0
    model.zero_grad()
    seen = []
    for step in range(per_epoch):
        x, lengths, y = task.batches(step)
        seen += bucket_batch(task.train_lengths, task.config.batch_size, step).tolist()
        loss, _, weight = task.step_fn(model, (x, lengths, y), None)
        (loss * weight).backward()
        total, weight_sum = total + (loss * weight).item(), weight_sum + float(weight)
    assert sorted(seen) == list(range(n))
    bucketed = [p.grad.clone() / weight_sum for p in model.parameters()]
    x, lengths = task.inputs(task.train)
    y = torch.from_numpy(task.label_ids(task.train.labels))
    assert lengths.unique().numel() > 10  # really padded
    model.zero_grad()
    loss, _, _ = task.step_fn(model, (x, lengths, y), None)
    loss.backward()
    assert total / weight_sum == pytest.approx(float(loss), rel=1e-12)
    for got, want in zip(bucketed, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_evaluation_in_length_order_gives_each_example_its_own_probabilities(text_task):
    task = text_task
    torch.manual_seed(0)
    model = task.build_model().double()
    p = task.probabilities(model, task.test, chunk=4)
    for i in range(len(task.test.labels)):
        one = task.probabilities(model, task.test.take([i]))
        torch.testing.assert_close(p[i : i + 1], one, rtol=1e-10, atol=1e-12)
    lengths = torch.tensor([5, 1, 3, 3, 9])
    batches = by_length(lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 2], [3, 0], [4]]


def test_steps_follow_the_size_and_length_of_the_training_data(tmp_path, capsys):
    """10 epochs of long lines; more steps for short ones (each step is cheaper); 600 at least;
    validation 16 times a run; a flag still wins."""

    def resolved(name, lines, *flags):
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        assert main(["train", "classify", "--data", str(path), "--print-config", *flags]) == 0
        return json.loads(capsys.readouterr().out)

    long = resolved("long.tsv", [f"{'ab'[i % 2]}\t{'xy' * 60} {i}" for i in range(6000)])
    per_epoch = -(-4200 // 64)  # 70% of 6,000 lines, batches of 64
    assert long["steps"] == 10 * per_epoch and long["eval_every"] == long["steps"] // 16
    assert long["patience"] is not None  # early stopping is on by default
    short = resolved("short.tsv", [f"{'ab'[i % 2]}\tn{i}" for i in range(6000)])
    assert short["steps"] > long["steps"]
    tiny = resolved("tiny.tsv", [f"{'ab'[i % 2]}\t{'xy' * 60} {i}" for i in range(40)])
    assert tiny["steps"] == 600
    assert resolved("long.tsv", [f"{'ab'[i % 2]}\tw {i}" for i in range(60)], "--steps", "7")["steps"] == 7


def test_early_stopping_keeps_the_best_validation_step_by_default(tmp_path, capsys):
    """Labels drawn at random: the model can only memorise, validation loss rises from the
    first evaluations, and with the default training settings the run stops early and keeps the
    best validation step's weights (evaluate gives the test record's figures)."""
    rng = np.random.default_rng(0)
    rows = [f"{rng.choice(['p', 'q'])}\t{''.join(rng.choice(list('abcdef'), 12))}" for _ in range(200)]
    path = tmp_path / "noise.tsv"
    path.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    assert (
        main(
            ["train", "classify", "--data", str(path), "--hidden-size", "32", "--no-plots", "--out", str(run)]
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())["train"]
    val = [r for r in records if r["split"] == "val"]
    best = min(val, key=lambda r: r["loss"])
    test = records[-1]
    assert test["split"] == "test" and test["selected_step"] == best["step"] < val[-1]["step"]
    assert val[-1]["step"] < config["steps"]  # stopped early
    assert len(val) - 1 - val.index(best) == config["patience"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(test["loss"])


def test_the_report_puts_the_baseline_beside_accuracy_and_macro_f1(tmp_path, capsys):
    path = tmp_path / "labels.tsv"
    path.write_text("\n".join(_lines(120)) + "\n")
    run = tmp_path / "run"
    flags = ["--hidden-size", "8", "--steps", "4", "--eval-every", "2", "--no-plots"]
    assert main(["train", "classify", "--data", str(path), *flags, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    from sklearn.metrics import f1_score

    confusion = np.array(m["confusion"])
    y = np.repeat(np.arange(3), confusion.sum(1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in confusion])
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert 0 <= m["baseline_macro_f1"] <= 1 and 0 <= m["baseline_accuracy"] <= 1
    assert set(m["per_class"]["a"]) == {"precision", "recall", "f1", "support"}
    assert main(["evaluate", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    order = [line.split()[0] for line in lines if line.strip()][:4]
    assert order == ["accuracy", "baseline_accuracy", "macro_f1", "baseline_macro_f1"]


@pytest.mark.parametrize("tokens", ["word", "bpe"])
def test_words_and_subwords(tmp_path, capsys, tokens):
    """--tokens word|bpe: a tokenizer trained on the training split, kept in the run (evaluate,
    predict and rnnkit.load read it back), unknown words mapped to UNK, exported beside the
    ONNX model (examples/onnx_predict.py then predicts what `rnnkit predict` prints)."""
    rng = np.random.default_rng(0)
    topics = {"fruit": ["apple", "pear", "plum", "fig"], "tool": ["hammer", "saw", "drill", "file"]}
    filler = ["the", "a", "good", "old", "new", "is", "here"]
    lines = []
    for i in range(120):
        label = "fruit" if i % 2 else "tool"
        words = list(rng.choice(filler, 4)) + [str(rng.choice(topics[label]))]
        rng.shuffle(words)
        lines.append(f"{label}\t{' '.join(words)}")
    data = tmp_path / "topics.tsv"
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    flags = ["--tokens", tokens, "--vocab-size", "40", "--hidden-size", "16", "--steps", "120"]
    flags += ["--eval-every", "40", "--no-plots"]
    assert main(["train", "classify", "--data", str(data), *flags, "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())["task_state"]
    assert saved["tokenizer"]["kind"] == tokens and "vocab" not in saved
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9  # one word decides
    import rnnkit

    texts = ["a good old plum", "the new drill is here", "zebra \u2603 quux", "   "]
    assert main(["predict", str(run), *texts]) == 0
    printed = capsys.readouterr().out.splitlines()
    values = rnnkit.Run.load(run).predict(texts)
    assert printed == [f"{label}\t{p:.4f}" for label, p in values]
    assert [label for label, _ in values[:2]] == ["fruit", "tool"]
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["tokens"] == tokens and (run / meta["tokenizer"]).exists()
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "onnx_predict.py"))
    got = example["classify"](example["Exported"](run / "model.json"), texts)
    assert [f"{label}\t{p:.4f}" for label, p in got] == printed
