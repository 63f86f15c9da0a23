"""tag: labels from the fields Faker fills in, fields as spans, the file formats, end to end."""

import json

import pytest

import rnnkit
from rnnkit.cli import main
from rnnkit.data.addresses import FIELDS, OUTSIDE, _labelled, addresses
from rnnkit.tasks.tag import field_exact_match, read_tagged, spans


def _runs(text, labels):
    out = []
    for ch, label in zip(text, labels):
        if out and out[-1][0] == label:
            out[-1][1] += ch
        else:
            out.append([label, ch])
    return [(label, part) for label, part in out]


def test_labels_come_from_the_fields_that_wrote_the_text():
    pieces = [("12", "house"), (" ", None), ("ul.", "street"), (" ", None), ("Długa", "street")]
    pieces += [("\n", None), ("00-001", "postcode"), (" ", None), ("Warszawa", "city")]
    text, labels = _labelled(pieces)
    assert text == "12 ul. Długa, 00-001 Warszawa"
    assert _runs(text, labels) == [
        ("house", "12"),
        (OUTSIDE, " "),
        ("street", "ul. Długa"),  # the space between two pieces of the street is the street's
        (OUTSIDE, ", "),  # a line break becomes ", ", between fields
        ("postcode", "00-001"),
        (OUTSIDE, " "),
        ("city", "Warszawa"),
    ]


def test_generated_addresses_are_one_line_with_a_known_label_per_character():
    pairs = addresses(300, seed=3)
    assert pairs == addresses(300, seed=3)  # the same seed, the same data
    seen = set()
    for text, labels in pairs:
        assert len(labels) == len(text) and "\n" not in text and text == text.strip(" ,")
        assert set(labels) <= set(FIELDS)
        seen |= set(labels)
        for label, part in _runs(text, labels):
            if label == "house":
                assert any(ch.isdigit() for ch in part)
    assert {"house", "street", "postcode", "city", "country", OUTSIDE} <= seen


def test_spans_of_plain_and_bio_labels():
    assert spans(["a", "a", "O", "b", "a"]) == {(0, 2, "a"), (3, 4, "b"), (4, 5, "a")}
    assert spans(["B-LOC", "I-LOC", "B-LOC", "O", "I-PER"]) == {(0, 2, "LOC"), (2, 3, "LOC"), (4, 5, "PER")}
    gold = [["a", "a", "O", "b"], ["c"]]
    assert field_exact_match(gold, [["a", "a", "O", "b"], ["c"]]) == 1.0
    assert field_exact_match(gold, [["a", "a", "a", "b"], ["c"]]) == pytest.approx(2 / 3)  # a too long


def test_both_file_formats_are_read(tmp_path):
    chars = tmp_path / "chars.tsv"
    chars.write_text("ab 1\tx x O n\ncd\ty y\n")
    steps, unit = read_tagged(chars)
    assert unit == "char" and steps.steps[0] == list("ab 1") and steps.labels[0] == ["x", "x", "O", "n"]
    conll = tmp_path / "ner.conll"
    conll.write_text("John\tB-PER\nlives\tO\n\nin\tO\nParis\tB-LOC\n\n\n")
    steps, unit = read_tagged(conll)
    assert unit == "token" and steps.steps == [["John", "lives"], ["in", "Paris"]]
    assert steps.labels == [["B-PER", "O"], ["O", "B-LOC"]]
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tx x x\nabcd\tx x\n")
    with pytest.raises(rnnkit.RnnkitError, match="line 2: 2 labels for 4 characters"):
        read_tagged(bad)


def test_tag_addresses_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--examples", "200", "--hidden-size", "16", "--steps", "6", "--eval-every", "3"]
    assert main(["train", "tag", *flags, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    for name in ("accuracy", "baseline_accuracy", "field_exact_match", "baseline_field_exact_match"):
        assert 0 <= m[name] <= 1
    assert m["baseline_accuracy"] > 0.6  # the window regression reads addresses well
    assert main(["predict", str(run), "10 Downing Street, London SW1A 2AA"]) == 0
    line = capsys.readouterr().out.strip()
    values = rnnkit.Run.load(run).predict(["10 Downing Street, London SW1A 2AA"])[0]
    assert line == ("\t".join(f"{f}={t}" for f, t in values) or "(no field found)")
    assert all(t in "10 Downing Street, London SW1A 2AA" for _, t in values)
    assert main(["plot", str(run)]) == 0
    assert (run / "tags.png").read_bytes()[:4] == b"\x89PNG"


def test_tag_a_conll_file(tmp_path, capsys):
    """A CoNLL file written here: tokens are the steps; a word after 'in' is a place."""
    lines = []
    for i in range(60):
        lines += [f"person{i % 7}\tB-PER", "lives\tO", "in\tO", f"town{i % 5}\tB-LOC", ""]
    data = tmp_path / "ner.conll"
    data.write_text("\n".join(lines))
    run = tmp_path / "run"
    flags = ["--hidden-size", "16", "--steps", "150", "--eval-every", "50", "--lr", "1e-2", "--no-plots"]
    assert main(["train", "tag", "--data", str(data), *flags, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["accuracy"] == 1.0 and m["field_exact_match"] == 1.0 and m["test_sequences"] == 6
    values = rnnkit.Run.load(run).predict(["person3 lives in town2"])[0]
    assert values == [("PER", "person3"), ("LOC", "town2")]
    other = tmp_path / "chars.tsv"
    other.write_text("ab\tx y\n")
    assert main(["evaluate", str(run), "--data", str(other)]) == 2
    assert "its steps are chars, this run was trained on tokens" in capsys.readouterr().err
