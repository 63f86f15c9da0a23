"""music: the chorales as notes and tokens, the n-gram baseline against a plain loop, scores
written and read back, folders of scores kept by the run, and the commands end to end."""

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

import rnnkit
from rnnkit.cli import main
from rnnkit.data import music
from rnnkit.tasks._ngram import KneserNey
from rnnkit.tasks.music import chorales

TINY = ["--hidden-size", "16", "--embedding-dim", "8", "--steps", "4", "--eval-every", "2"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache of parsed chorales."""
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def four():
    return chorales(4)


def _kneser_ney_loop(train, V, N, start):
    """Interpolated Kneser-Ney as the formula reads, with tuples and counters."""
    grams = [Counter() for _ in range(N + 1)]
    for s in train:
        x = [start] * (N - 1) + list(s)
        for i in range(N - 1, len(x)):
            for k in range(1, N + 1):
                grams[k][tuple(x[i - k + 1 : i + 1])] += 1
    cont = [Counter() for _ in range(N + 1)]
    for k in range(1, N):
        for g in grams[k + 1]:
            cont[k][g[1:]] += 1

    def discount(c):
        n1 = sum(v == 1 for v in c.values())
        n2 = sum(v == 2 for v in c.values())
        return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5

    def prob(history, w, n):
        p = 1.0 / V
        for k in range(1, n + 1):
            c = grams[k] if k == n else cont[k]
            ctx = tuple(history[len(history) - (k - 1) :]) if k > 1 else ()
            total = sum(v for g, v in c.items() if g[:-1] == ctx)
            if total:
                types = sum(1 for g in c if g[:-1] == ctx)
                d = discount(c)
                p = max(c.get(ctx + (w,), 0) - d, 0) / total + d * types / total * p
        return p

    return prob


def test_kneser_ney_matches_the_formula_written_as_a_loop():
    rng = random.Random(0)
    V, N = 6, 4
    train = [[rng.randrange(1, V) for _ in range(rng.randrange(3, 25))] + [0] for _ in range(40)]
    test = [[1, 2, 3, 0], [5, 5, 5, 1, 0], [4, 0]]
    model, prob = KneserNey(train, V, N, 0), _kneser_ney_loop(train, V, N, 0)
    got = model.log_likelihoods(test)
    for n in range(1, N + 1):
        want = sum(math.log(prob([0] * (N - 1) + s[:i], s[i], n)) for s in test for i in range(len(s)))
        assert got[n] == pytest.approx(want, rel=1e-12)
        for history in ([], [3], [1, 2], [2, 3, 4, 5]):
            p = model.distribution(history, n)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            assert p[2] == pytest.approx(prob([0] * (N - 1) + history, 2, n), rel=1e-12)
    assert all(0 <= t < V for t in model.sample(3, 30, 0, np.random.default_rng(0)))


def test_tokens_and_text_give_the_notes_back(four):
    for piece in four:
        assert len(piece.voices) == 4 and piece.key.startswith("K:") and piece.bars[0] == 0
        for voices in (1, 4):
            p = piece.take_voices(voices)
            tokens = music.tokens(p)
            assert tokens[0] == p.key and tokens[1] == music.BAR and tokens[-1] == music.END
            back = music.from_tokens(tokens, voices)
            assert (back.key, back.length, back.bars, back.voices) == (p.key, p.length, p.bars, p.voices)
            assert music.parse_text(music.text(tokens, voices), voices) == tokens[:-1]
    up = four[0].transposed(2)
    assert up.voices[0][0][2] == four[0].voices[0][0][2] + 2
    assert music.parse_key(up.key)[0] == (music.parse_key(four[0].key)[0] + 2) % 12


def test_names_of_pitches_and_keys():
    assert [music.pitch_name(m) for m in (60, 61, 69, 70)] == ["C4", "C#4", "A4", "Bb4"]
    assert [music.parse_pitch(n) for n in ("C4", "Db4", "C#4", "B-3", "A4", "x", "-", "r")] == [
        60,
        61,
        61,
        58,
        69,
        None,
        None,
        None,
    ]
    assert music.parse_key("K:F#m") == (6, True) and music.key_token(10, False) == "K:Bb"
    with pytest.raises(rnnkit.RnnkitError, match="voice"):
        music.parse_text("G4/B3", 1)
    with pytest.raises(rnnkit.RnnkitError, match="is not a note"):
        music.parse_text("K:G | G4 H9", 1)


@pytest.mark.parametrize("suffix", [".mid", ".musicxml"])
def test_a_written_score_reads_back_with_its_notes(four, tmp_path, suffix):
    piece = four[1]
    path = tmp_path / f"piece{suffix}"
    music.write_score(piece, path)
    back = music.read_score(path, 4)
    assert back.voices == piece.voices and back.key == piece.key


def test_scores_are_parsed_without_music21s_pickles(tmp_path):
    from music21 import environment

    scratch = environment.Environment().getRootTempDir()
    before = set(scratch.glob("*.p*"))
    for _, path in music.chorale_paths()[:3]:
        music.read_score(path, 4)
    assert set(scratch.glob("*.p*")) == before


def _train(tmp_path, capsys, *flags, name="run"):
    run = tmp_path / name
    code = main(["train", "music", *TINY, *flags, "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return run


def test_music_end_to_end(tmp_path, capsys):
    run = _train(tmp_path, capsys, "--pieces", "8")
    assert main(["evaluate", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("nll_per_note", "baseline_nll_per_note", "sample_pitch_class_tv", "sample_interval_tv"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    assert 0 <= metrics["sample_interval_tv"] <= 1 and metrics["test_pieces"] == 1

    midi = tmp_path / "piece.mid"
    opening = "K:G | G4 - - - A4 - B4 -"  # notes in the piece whatever the tiny model draws
    assert (
        main(["sample", str(run), "--prime", opening, "--length", "64", "--out", str(midi), "--seed", "3"])
        == 0
    )
    text = capsys.readouterr().out.strip()
    drawn = music.from_tokens(music.parse_text(text, 1), 1)
    assert text.startswith(opening) and drawn.notes() >= 3
    assert music.read_score(midi, 1).voices == drawn.voices  # music21 reads back the sampled notes
    assert main(["sample", str(run), "--out", str(midi)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    assert main(["sample", str(run), "--out", str(tmp_path / "piece.wav")]) == 2
    assert ".mid" in capsys.readouterr().err

    assert main(["sample", str(run), "--prime", "K:G | G4 - - - A4", "--length", "16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("K:G | G4 - - - A4")
    assert main(["sample", str(run), "--prime", "G4 - B9/x"]) == 2
    assert "--prime" in capsys.readouterr().err
    unkeyed = rnnkit.Run.load(run).sample(prime="D5 - - - C5", length=12)
    assert unkeyed.startswith("K:") and "| D5 - - - C5" in unkeyed  # the likeliest key put first

    assert main(["predict", str(run), "K:G"]) == 0
    assert capsys.readouterr().out.startswith("K:G")
    assert main(["plot", str(run)]) == 0
    assert (run / "pianoroll.png").stat().st_size > 10_000
    xml = tmp_path / "piece.musicxml"
    rnnkit.Run.load(run).sample(out=xml, length=32)
    assert xml.read_text().lstrip().startswith("<?xml")


def test_a_folder_of_scores_is_kept_by_the_run(four, tmp_path, capsys):
    folder = tmp_path / "scores"
    folder.mkdir()
    for k, piece in enumerate(four[:3]):
        music.write_score(piece, folder / f"{k}.mid")
    music.write_score(four[3].take_voices(2), folder / "duet.mid")  # too few voices: skipped
    (folder / "broken.mid").write_bytes(b"not a midi file")  # unreadable: skipped
    (folder / "notes.txt").write_text("not a score")  # not a score file: ignored
    run = _train(tmp_path, capsys, "--data", str(folder), "--voices", "4")
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"] == "data/pieces.json"
    kept = json.loads((run / "data" / "pieces.json").read_text())
    assert sorted(p["name"] for p in kept["pieces"]) == ["0", "1", "2"]
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert main(["evaluate", str(run), "--json"]) == 0  # without the folder
    assert json.loads(capsys.readouterr().out)["test_pieces"] == 1
    assert main(["train", "--resume", str(run), "--steps", "6"]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--length", "8"]) == 0
    steps = [w for w in capsys.readouterr().out.split() if w != "|" and not w.startswith("K:")]
    assert steps and all(len(w.split("/")) == 4 for w in steps)  # S/A/T/B of each step


def test_too_little_music_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    out = ["--out", str(tmp_path / "run")]
    assert main(["train", "music", "--data", str(folder), *out]) == 2
    assert "no score files" in capsys.readouterr().err
    assert main(["train", "music", "--data", str(tmp_path / "missing"), *out]) == 2
    assert "no such file" in capsys.readouterr().err
