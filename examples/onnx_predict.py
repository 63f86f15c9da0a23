"""Predict with an exported run using onnxruntime and numpy only (no torch, no rnnkit).

    rnnkit export runs/charlm-...                        # writes model.onnx and model.json
    python examples/onnx_predict.py runs/charlm-.../model.json "The " "import "
    python examples/onnx_predict.py runs/classify-.../model.json "Dvorak" "Nakamura"

charlm continues each input with sampled characters (--length, --temperature, --seed); classify
prints the likeliest label and its probability; forecast the next --steps values; dates,
translate and colors decode greedily (colors reads r,g,b); tag prints each input's fields; music
continues each input (a prime such as "K:G |") to a piece in rnnkit's text form.
Everything a task needs beside the graphs (vocabulary, labels, start and end ids) is in the
JSON file `rnnkit export` writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime


class Exported:
    """An `rnnkit export` output: the JSON beside the graphs, and a session per graph."""

    def __init__(self, json_path):
        self.path = Path(json_path)
        self.meta = json.loads(self.path.read_text(encoding="utf-8"))
        self.task = self.meta["task"]
        self.sessions = {
            g["part"]: onnxruntime.InferenceSession(
                str(self.path.with_name(g["file"])), providers=["CPUExecutionProvider"]
            )
            for g in self.meta["graphs"]
        }

    def run(self, part: str, feeds: dict) -> list[np.ndarray]:
        return self.sessions[part].run(None, feeds)

    def ids(self, text: str, vocabulary_key: str = "vocabulary") -> np.ndarray:
        index = {ch: i for i, ch in enumerate(self.meta[vocabulary_key])}
        return np.array([index.get(ch, self.meta["unknown_id"]) for ch in text], dtype=np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def charlm_sample(model: Exported, prime: str, length: int, temperature: float, rng) -> str:
    """Read the prime, then draw one token (a character, or a BPE subword) at a time, carrying
    the recurrent state. The exported graph is the model as `rnnkit evaluate` scores it, with its
    continuous cache (its memory: the last states listed), so this draws as `rnnkit sample
    --cache` does."""
    vocab = model.meta["vocabulary"]
    states = [np.asarray(s, dtype=np.float32)[:, None, :] for s in model.meta["initial_state"]]  # (L, 1, n)
    prefix = tokenize(model, [prime or "\n"])[0]
    tokens, out = prefix[None], []  # (1, T)
    for _ in range(length):
        feeds = {"tokens": tokens, **{f"state_in_{j}": s for j, s in enumerate(states)}}
        logits, *states = model.run("model", feeds)
        nxt = rng.choice(len(vocab), p=softmax(logits[0, -1], temperature))
        out.append(int(nxt))
        tokens = np.array([[nxt]], dtype=np.int64)
    if "tokenizer" not in model.meta:
        return prime + "".join(vocab[i] for i in out)
    tokenizer = _tokenizer(model, "tokenizer")  # subwords: what the sample adds to the prime's text
    head = tokenizer.decode(prefix.tolist())
    return prime + tokenizer.decode(prefix.tolist() + out)[len(head) :]


def tokenize(model: Exported, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids: its characters, or for a word or BPE run the ids of the tokenizer
    written beside the graphs (this needs the `tokenizers` package); never empty."""
    if "tokenizer" not in model.meta:
        return [model.ids(text) for text in texts]
    tokenizer = _tokenizer(model, "tokenizer")
    return [np.array(tokenizer.encode(text).ids or [0], dtype=np.int64) for text in texts]


def _tokenizer(model: Exported, key: str):
    """The Hugging Face tokenizer `rnnkit export` wrote beside the graphs (meta[key] names it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model.path.with_name(model.meta[key])))


def classify(model: Exported, inputs: list[str]) -> list[tuple[str, float]]:
    """The likeliest label and its probability for each input (text, or comma-separated numbers
    for a run on numbers: time_steps rows of features, flattened)."""
    if "vocabulary" in model.meta or "tokenizer" in model.meta:
        seqs = tokenize(model, inputs)
        T = max(len(s) for s in seqs)
        x = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
        feeds = {"tokens": x, "lengths": np.array([len(s) for s in seqs], dtype=np.int64)}
    else:
        T = model.meta["time_steps"]
        x = np.array([[float(v) for v in text.split(",")] for text in inputs], dtype=np.float32)
        x = x.reshape(len(inputs), T, -1)
        feeds = {"features": x, "lengths": np.full(len(inputs), T, dtype=np.int64)}
    (p,) = model.run("model", feeds)
    labels = model.meta["labels"]
    return [(labels[k], float(p[i, k])) for i, k in enumerate(p.argmax(-1))]


def forecast(model: Exported, text: str, steps: int) -> list[float]:
    """The next `steps` values of the target (the first column): each forecast fed back in."""
    C = len(model.meta["columns"])
    rows = [[float(v) for v in part.split(",")] for part in (text.split(";") if C > 1 else [text])]
    history = np.array(rows if C > 1 else [[v] for v in rows[0]], dtype=np.float32)
    window, out = history[-model.meta["window"] :], []
    for _ in range(steps):
        (nxt,) = model.run("model", {"values": window[None]})
        out.append(float(nxt[0, 0]))
        window = np.concatenate([window[1:], nxt])
    return out


def greedy(model: Exported, encoder_feeds: dict, batch: int, vocab) -> list[str]:
    """Encoder once, then the decoder step by step from start_id, taking the likeliest id, until
    every row has produced end_id or max_output ids. `vocab`: the target characters, or a
    tokenizer (a word or BPE run) that decodes the ids."""
    states = model.run("encoder", encoder_feeds)
    token = np.full(batch, model.meta["start_id"], dtype=np.int64)
    done, out = np.zeros(batch, dtype=bool), [[] for _ in range(batch)]
    for _ in range(model.meta["max_output"]):
        logits, *states = model.run(
            "decoder", {"token": token, **{f"state_{j}_in": s for j, s in enumerate(states)}}
        )
        token = logits.argmax(-1).astype(np.int64)
        for i, t in enumerate(token):
            done[i] |= t == model.meta["end_id"]
            if not done[i]:
                out[i].append(int(t))
        if done.all():
            break
    if isinstance(vocab, list):
        return ["".join(vocab[t] for t in ids) for ids in out]
    return [vocab.decode(ids) for ids in out]


def translate(model: Exported, inputs: list[str], locale: str | None = None) -> list[str]:
    """dates and translate: source ids (dates: a locale id first), padded, then greedy decoding."""
    meta = model.meta
    if "source_tokenizer" in meta:  # a word or BPE run (needs the `tokenizers` package)
        source, target = _tokenizer(model, "source_tokenizer"), _tokenizer(model, "target_tokenizer")
        seqs = [np.array(source.encode(text).ids or [0], dtype=np.int64) for text in inputs]
    else:
        seqs, target = [model.ids(text, "source_vocabulary") for text in inputs], meta["target_vocabulary"]
    if "locale_ids" in meta:  # dates
        name = locale if locale and meta["locale_token"] else meta["any_locale"]
        seqs = [np.concatenate([[meta["locale_ids"][name]], s]).astype(np.int64) for s in seqs]
    S = max(len(s) for s in seqs)
    src = np.zeros((len(seqs), S), dtype=np.int64)
    for i, s in enumerate(seqs):
        src[i, : len(s)] = s
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    feeds = {"source": src, "source_lengths": lengths}
    return greedy(model, feeds, len(inputs), target)


def tag(model: Exported, inputs: list[str]) -> list[list[tuple[str, str]]]:
    """Per input, its fields in order as (field, text): runs of one label other than O (or
    B-X / I-X spans). The steps are characters, or tokens split at whitespace (meta "unit")."""
    by_char = model.meta["unit"] == "char"
    steps = [list(text) if by_char else text.split() for text in inputs]
    index = {s: i for i, s in enumerate(model.meta["vocabulary"])}
    T = max(len(s) for s in steps)
    x = np.zeros((len(steps), T), dtype=np.int64)
    for i, seq in enumerate(steps):
        x[i, : len(seq)] = [index.get(s, model.meta["unknown_id"]) for s in seq]
    (p,) = model.run("model", {"tokens": x, "lengths": np.array([len(s) for s in steps], dtype=np.int64)})
    out = []
    for i, seq in enumerate(steps):
        labels = [model.meta["labels"][k] for k in p[i, : len(seq)].argmax(-1)]
        fields, start, field = [], None, None
        for t, label in enumerate([*labels, "O"]):
            kind, name = (label[:2], label[2:]) if label[:2] in ("B-", "I-") else ("", label)
            if not (field is not None and name == field and kind != "B-"):
                if field is not None:
                    fields.append((field, ("" if by_char else " ").join(seq[start:t])))
                start, field = (t, name) if name != "O" else (None, None)
        out.append(fields)
    return out


def music_sample(model: Exported, prime: str, steps: int, temperature: float, rng) -> str:
    """A piece in rnnkit's text form ("K:G | G4 - - - ...", a step's voices joined by "/"): the
    prime's tokens after end_id, then drawn tokens until end_id or `steps` steps. (rnnkit's own
    sample also puts a key and a bar before a prime that lacks them.)"""
    vocab, end, unknown = model.meta["vocabulary"], model.meta["end_id"], model.meta["unknown_id"]
    voices = model.meta["voices"]
    index = {t: i for i, t in enumerate(vocab)}
    prime_tokens = [t for word in prime.split() for t in word.split("/")]
    tokens = [end] + [index.get(t, unknown) for t in prime_tokens]
    states = [np.asarray(s, dtype=np.float32)[:, None, :] for s in model.meta["initial_state"]]
    feed, drawn = np.array([tokens], dtype=np.int64), list(prime_tokens)
    count = sum(t != "|" and not t.startswith("K:") for t in drawn)
    while count < steps * voices:
        logits, *states = model.run(
            "model", {"tokens": feed, **{f"state_in_{j}": s for j, s in enumerate(states)}}
        )
        p = softmax(logits[0, -1], temperature)
        p[unknown] = 0.0  # never draw what training never saw
        nxt = int(rng.choice(len(vocab), p=p / p.sum()))
        if nxt == end:
            break
        drawn.append(vocab[nxt])
        count += vocab[nxt] != "|" and not vocab[nxt].startswith("K:")
        feed = np.array([[nxt]], dtype=np.int64)
    words, step, pending = (
        [],
        [],
        [],
    )  # a bar drawn inside a step goes after it; a last unfinished step is left out
    for t in drawn:
        if t == "|" or t.startswith("K:"):
            (pending if step else words).append(t)
        else:
            step.append(t)
            if len(step) == voices:
                words += ["/".join(step), *pending]
                step, pending = [], []
    return " ".join(words + pending)


def color_names(model: Exported, inputs: list[str]) -> list[str]:
    rgb = np.array([[float(v) for v in text.split(",")] for text in inputs], dtype=np.float32)
    return greedy(model, {"rgb": rgb}, len(inputs), model.meta["vocabulary"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="the model.json that `rnnkit export` wrote")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument(
        "--length", type=int, default=100, help="charlm: characters to sample; music: sixteenth-note steps"
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="forecast: values ahead")
    parser.add_argument("--locale", default=None, help="dates: the inputs' locale")
    args = parser.parse_args()
    model = Exported(args.json)
    if model.task == "charlm":
        rng = np.random.default_rng(args.seed)
        for text in args.inputs:
            print(charlm_sample(model, text, args.length, args.temperature, rng))
    elif model.task == "classify":
        for label, p in classify(model, args.inputs):
            print(f"{label}\t{p:.4f}")
    elif model.task == "forecast":
        steps = args.steps or model.meta["predict_steps"]
        for text in args.inputs:
            print(",".join(f"{v:.4g}" for v in forecast(model, text, steps)))
    elif model.task in ("dates", "translate"):
        for line in translate(model, args.inputs, args.locale):
            print(line)
    elif model.task == "tag":
        for fields in tag(model, args.inputs):
            print("\t".join(f"{f}={t}" for f, t in fields) if fields else "(no field found)")
    elif model.task == "colors":
        for line in color_names(model, args.inputs):
            print(line)
    elif model.task == "music":
        rng = np.random.default_rng(args.seed)
        for text in args.inputs:
            print(music_sample(model, text, args.length, args.temperature, rng))
    else:
        raise SystemExit(f"task {model.task}: no prediction here")


if __name__ == "__main__":
    main()
