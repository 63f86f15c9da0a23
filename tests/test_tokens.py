"""Words and subwords (rnnkit.data.tokens) and translate --tokens word|bpe end to end."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

import rnnkit
from rnnkit.cli import main
from rnnkit.data.tokens import UNK_TOKEN, Subwords

TEXTS = ["the cat sat on the mat.", "a dog, a cat; the end!", "dogs and cats sat together"]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_a_tokenizer_learns_from_text_and_comes_back_from_its_json(kind):
    t = Subwords.train(kind, TEXTS, 60, reversible=True, specials=("[S]", "[E]"))
    assert t.id(UNK_TOKEN) == 0 and t.id("[S]") == 1 and t.id("[E]") == 2
    again = Subwords.restore(json.loads(json.dumps(t.state())))  # through config.json
    for text in ["the cat sat on the mat.", "zebra \u2603 sat"]:
        assert again.ids(text) == t.ids(text)
    assert t.decode(t.ids("the cat sat on the mat.")) == "the cat sat on the mat."  # reversible
    assert 0 in t.ids("zebra \u2603")  # unseen: UNK, never an error
    assert t.encode("").tolist() == [0] and t.ids("") == []


def test_word_tokens_for_reading_split_punctuation():
    t = Subwords.train("word", TEXTS, 100)
    assert t.tokens("a dog, a cat;") == ["a", "dog", ",", "a", "cat", ";"]


def test_a_damaged_tokenizer_record_is_refused():
    with pytest.raises(rnnkit.RnnkitError, match="does not load"):
        Subwords.restore({"kind": "bpe", "json": "{not json"})
    other = Subwords.train("word", TEXTS, 50, specials=("[X]",))
    state = other.state()
    data = json.loads(state["json"])
    data["model"]["vocab"] = {"a": 0, UNK_TOKEN: 1}  # UNK must be id 0
    with pytest.raises(rnnkit.RnnkitError, match="not one rnnkit wrote"):
        Subwords.restore({"kind": "word", "json": json.dumps(data)})


@pytest.mark.parametrize("tokens", ["word", "bpe"])
def test_translate_with_tokens(tmp_path, capsys, tokens):
    """A file of sentence pairs (the target: the source's words reversed), trained a little:
    it runs end to end, loads back, predicts the same through the CLI, rnnkit.Run and the
    exported ONNX graphs with the tokenizers beside them."""
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "big", "small"]
    lines = []
    for _ in range(80):
        source = list(rng.choice(words, int(rng.integers(2, 5))))
        lines.append(f"{' '.join(source)}\t{' '.join(reversed(source))}.")
    data = tmp_path / "pairs.tsv"
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    flags = ["--tokens", tokens, "--vocab-size", "60", "--hidden-size", "16", "--embedding-dim", "8"]
    flags += ["--steps", "30", "--eval-every", "15", "--max-output", "12"]
    assert main(["train", "translate", "--data", str(data), *flags, "--out", str(run)]) == 0
    assert set(json.loads((run / "config.json").read_text())["task_state"]) == {
        "src_tokenizer",
        "tgt_tokenizer",
    }
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert 0 <= m["cer"] and 0 <= m["exact_match"] <= 1
    inputs = ["red cat runs", "zebra \u2603 sleeps"]
    assert main(["predict", str(run), *inputs]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == rnnkit.Run.load(run).predict(inputs)
    assert main(["plot", str(run)]) == 0  # the attention figure names the tokens
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert (run / meta["source_tokenizer"]).exists() and (run / meta["target_tokenizer"]).exists()
    example = runpy.run_path(str(Path(__file__).parent.parent / "examples" / "onnx_predict.py"))
    assert example["translate"](example["Exported"](run / "model.json"), inputs) == printed
