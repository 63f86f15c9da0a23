"""The quality target of every task (docs/tasks.md), each trained through the command with the
task's defaults. Slow: `make test-slow`, or one at a time with `-k`, e.g.
`pytest -m slow tests/test_task_targets.py -k digits`."""

import json
import statistics

import pytest
import torch

from rnnkit.cli import main

pytestmark = pytest.mark.slow


def train(tmp_path, capsys, name, *args):
    run = tmp_path / name
    assert main(["train", *args, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_charlm_beats_xz_given_the_training_text(tmp_path, capsys):
    """The main job with its defaults (about 5 minutes): below xz -9 given the training text
    first and below the issue's 1.70 (1.57 measured: the continuous cache; the recurrent model
    alone 1.78), and dynamic evaluation at least 0.05 bpc lower still (docs/tasks.md, charlm)."""
    m = train(tmp_path, capsys, "charlm", "charlm")
    assert m["bpc"] < m["xz_cond_bpc"] and m["bpc"] < 1.70, m
    assert m["bpc"] < m["bpc_without_cache"] - 0.1, m  # what the cache copies
    assert main(["evaluate", str(tmp_path / "charlm"), "--dynamic", "--json"]) == 0
    dynamic = json.loads(capsys.readouterr().out)
    assert dynamic["bpc"] == m["bpc"] and dynamic["bpc_dynamic"] <= m["bpc"] - 0.05, dynamic
    # From a zero state, as `rnnkit sample --prime` and a new stream start, every built-in topic's
    # opening reads at under 4 bpc (healthy runs: at most about 3). A run that saw the zero state
    # before the same few texts only went off into ~19 bits a character on 12 of the 79.
    from pydoc_data.topics import topics

    from rnnkit import Run
    from rnnkit.data.text import CharVocab
    from rnnkit.tasks.charlm import bits_per_char

    run = Run.load(tmp_path / "charlm")
    vocab = CharVocab.restore(run.config["vocab"])
    with torch.no_grad():
        worst = max(
            (bits_per_char(run.model, vocab.encode(t[:400]), streams=1), k) for k, t in topics.items()
        )
    assert worst[0] < 4, worst


def test_classify_digits(tmp_path, capsys):
    assert train(tmp_path, capsys, "digits", "classify")["accuracy"] >= 0.97


def test_classify_surnames_beats_ngram_logistic_regression(tmp_path, capsys):
    m = train(tmp_path, capsys, "surnames", "classify", "--dataset", "surnames")
    assert m["accuracy"] > m["baseline_accuracy"]


def test_tag_finds_more_fields_than_the_window_regression(tmp_path, capsys):
    m = train(tmp_path, capsys, "tag", "tag")
    assert m["field_exact_match"] > m["baseline_field_exact_match"], m
    assert m["accuracy"] > m["baseline_accuracy"], m


def test_music_melodies_beat_the_ngram(tmp_path, capsys):
    """The chorale melodies with the defaults (about 2.5 minutes): fewer nats per note on the
    test chorales than the Kneser-Ney n-gram fitted in the same run (docs/tasks.md, music)."""
    m = train(tmp_path, capsys, "music", "music")
    assert m["nll_per_note"] < m["baseline_nll_per_note"], m


def test_music_four_voices_beat_the_ngram(tmp_path, capsys):
    m = train(tmp_path, capsys, "music4", "music", "--voices", "4")
    assert m["nll_per_note"] < m["baseline_nll_per_note"], m


def test_classify_on_a_built_set_within_what_docs_say(tmp_path, capsys):
    """classify's defaults on `messages` (benchmarks/classify_sets.py: program messages in four
    Romance languages, ~100 characters, from this machine's gettext catalogs): docs/tasks.md
    says the n-gram baseline wins there by about 1 point; this holds it to at most 2."""
    import runpy
    from pathlib import Path

    sets = runpy.run_path(str(Path(__file__).parent.parent / "benchmarks" / "classify_sets.py"))
    rows = sets["SETS"]["messages"]()
    if len(rows) < 6000:
        pytest.skip("this machine lacks the gettext catalogs the set is built from")
    data = tmp_path / "messages.tsv"
    sets["write"](data, rows)
    m = train(tmp_path, capsys, "messages", "classify", "--data", str(data))
    assert m["accuracy"] >= m["baseline_accuracy"] - 0.02, m


def test_forecast_sunspots_beats_arima_over_seeds(tmp_path, capsys):
    runs = [train(tmp_path, capsys, f"seed{s}", "forecast", "--seed", str(s)) for s in range(5)]
    rmse = [m["rmse"] for m in runs]
    # the test span is 40 years, so the target is on the mean over seeds
    assert statistics.mean(rmse) < 16.0 and statistics.mean(rmse) < runs[0]["baseline_rmse"], rmse


@pytest.mark.parametrize("feed", ["init", "every_step"])
def test_colors_beats_unigram(tmp_path, capsys, feed):
    m = train(tmp_path, capsys, feed, "colors", "--feed", feed)
    assert m["loss"] < m["baseline_loss"]


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_memory_adding_at_lag_200(tmp_path, capsys, model):
    m = train(tmp_path, capsys, model, "memory", "--problem", "adding", "--lag", "200", "--model", model)
    assert m["mse"] < 0.01  # the mean predictor: ~0.167


def test_dates(tmp_path, capsys):
    assert train(tmp_path, capsys, "dates", "dates")["exact_match"] >= 0.995


def test_ntm_copy_generalises_to_longer_sequences(tmp_path, capsys):
    """Graves et al. (2014), figure 4: trained on lengths 1-20, the NTM copies length 40 too; the
    LSTM baseline, trained as long, is reported beside it (it is expected to fail at 40)."""
    flags = ["memory", "--problem", "copy", "--eval-every", "250", "--eval-size", "200"]
    by_length = {}
    for model in ("ntm", "lstm"):
        run = tmp_path / model
        assert main(["train", *flags, "--model", model, "--out", str(run)]) == 0
        capsys.readouterr()
        assert main(["evaluate", str(run), "--json", "--lengths", "20,40"]) == 0
        by_length[model] = json.loads(capsys.readouterr().out)["bit_errors_by_length"]
    print(f"bit errors per sequence by length: {by_length}")
    assert by_length["ntm"]["20"] <= 1 and by_length["ntm"]["40"] <= 2, by_length
