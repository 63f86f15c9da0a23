"""tag (N-vs-N): a label for every step of a sequence.

Data: built in, postal addresses of eight locales written by Faker, every character labelled
with the field that produced it (rnnkit.data.addresses: house, street, unit, district,
postcode, city, region, country, or O between fields), split 80/10/10. Or `--data FILE`, either
  - `text<TAB>labels` lines, the labels separated by spaces, one per character of the text; or
  - CoNLL style: `token<TAB>label` lines, a blank line between sequences (the steps are tokens).
Model: `SequenceTagger`, a bidirectional LSTM reading the embedded steps, a label per step.
Metrics: `accuracy` (per step) and `field_exact_match` (the share of the test's fields, runs of
one label other than O, or B-/I- spans, found with exactly their extent and label), against a
baseline fitted in the same run: logistic regression per step on the steps within WINDOW of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import MAX_BATCH, MAX_LAYERS, MAX_UNITS, flag, integer, option, rate
from rnnkit.data.addresses import OUTSIDE, addresses
from rnnkit.data.text import UNK, read_text
from rnnkit.errors import RnnkitValueError
from rnnkit.models import SequenceTagger, SequenceTaggerConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    bucket_batch,
    by_length,
    cached_shares,
    cell_option,
    data_key,
    device_of,
    pad_ids,
    pyplot,
    uniform,
)

WINDOW = 4  # the baseline reads the step and the WINDOW steps on either side


@dataclass(frozen=True)
class TagConfig(RegularizerOptions):
    examples: int = option(10000, "built-in addresses generated (split 80/10/10)", integer(20, 10**6))
    cell: str = cell_option("lstm")
    hidden_size: int = option(128, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    embedding_dim: int = option(32, "embedding size of a step (character or token)", integer(1, MAX_UNITS))
    bidirectional: bool = option(True, "read each sequence in both directions", flag())
    dropout: float = option(0.2, "dropout on the embeddings and before the output layer", rate())
    batch_size: int = option(64, "sequences per step", integer(1, MAX_BATCH))


@dataclass
class Tagged:
    """Sequences of steps (characters or tokens) with a label per step."""

    steps: list[list[str]]
    labels: list[list[str]]

    def take(self, idx) -> Tagged:
        return Tagged([self.steps[i] for i in idx], [self.labels[i] for i in idx])


def read_tagged(path) -> tuple[Tagged, str]:
    """(sequences, unit): `text<TAB>labels` lines (unit "char") or CoNLL (unit "token")."""
    text = read_text(path)
    lines = text.splitlines()
    rows = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise RnnkitValueError(f"--data: {path} has no labelled lines")
    for n, line in rows:
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise RnnkitValueError(
                f"--data: {path} line {n}: expected 'text<TAB>labels' (one label per character, "
                f"separated by spaces) or CoNLL 'token<TAB>label', got {line[:60]!r}"
            )
    if any(len(line.split("\t")[1].split()) > 1 for _, line in rows):  # labels per character
        for n, line in rows:
            text, labels = line.split("\t")
            if len(labels.split()) != len(text):
                raise RnnkitValueError(
                    f"--data: {path} line {n}: {len(labels.split())} labels for {len(text)} characters; "
                    "a text line needs one label per character, separated by spaces"
                )
        return Tagged(
            [list(line.split("\t")[0]) for _, line in rows], [line.split("\t")[1].split() for _, line in rows]
        ), "char"
    steps, labels, seq_steps, seq_labels = [], [], [], []
    for line in [*lines, ""]:
        if not line.strip():
            if seq_steps:
                steps.append(seq_steps)
                labels.append(seq_labels)
            seq_steps, seq_labels = [], []
            continue
        token, label = (f.strip() for f in line.split("\t"))
        seq_steps.append(token)
        seq_labels.append(label)
    return Tagged(steps, labels), "token"


def spans(labels: list[str]) -> set[tuple[int, int, str]]:
    """The fields of a label sequence, (start, end, field): runs of one label other than O; with
    B-X / I-X labels, a span starts at B-X (or at an I-X that does not continue an X)."""
    out, start, field = set(), None, None
    for i, label in enumerate([*labels, OUTSIDE]):
        kind, name = (label[:2], label[2:]) if label[:2] in ("B-", "I-") else ("", label)
        continues = field is not None and name == field and kind != "B-" and name != OUTSIDE
        if not continues:
            if field is not None:
                out.add((start, i, field))
            start, field = (i, name) if name != OUTSIDE else (None, None)
    return out


def field_exact_match(gold: list[list[str]], predicted: list[list[str]]) -> float:
    found = total = 0
    for g, p in zip(gold, predicted):
        want = spans(g)
        total += len(want)
        found += len(want & spans(p))
    return found / total if total else float("nan")


class TagTask(Task):
    name = "tag"
    metric = "loss"
    loss_unit = "cross-entropy (nats per step)"
    train_defaults = {"steps": 2000, "lr": 3e-3, "schedule": "cosine", "eval_every": 200, "patience": 4}
    sized_help = {
        "steps": "20 epochs of the training data, 300 to 2000",
        "eval_every": "half an epoch, 10 to 200",
    }

    def __init__(self, config: TagConfig, *, data=None, saved: dict | None = None):
        self.config, self.data = config, data
        if data is None:
            pairs = addresses(config.examples, seed=0)
            examples, self.unit = Tagged([list(t) for t, _ in pairs], [ls for _, ls in pairs]), "char"
        else:
            examples, self.unit = read_tagged(data)
        n = len(examples.steps)
        if n < 3:
            raise RnnkitValueError(
                f"--data: {data} has {n} sequences; tag needs at least 3 (train, validation, test)"
            )
        order = np.random.default_rng(0).permutation(n)
        n_test = n_val = max(1, n // 10)
        self.test = examples.take(order[:n_test])
        self.val = examples.take(order[n_test : n_test + n_val])
        self.train = examples.take(order[n_test + n_val :])
        state = (saved or {}).get("task_state")
        if state:
            self.unit, self.vocab, self.tags = state["unit"], state["vocab"], state["tags"]
        else:
            self.vocab = [UNK] + sorted({s for seq in self.train.steps for s in seq} - {UNK})
            self.tags = sorted({t for seq in self.train.labels for t in seq})
        self.index = {s: i for i, s in enumerate(self.vocab)}
        self.tag_index = {t: i for i, t in enumerate(self.tags)}
        self.train_lengths = torch.tensor([len(s) for s in self.train.steps])

    def describe(self) -> dict:
        state = {"unit": self.unit, "vocab": self.vocab, "tags": self.tags}
        return {"task": self.name, "task_config": asdict(self.config), "task_state": state}

    def build_model(self) -> SequenceTagger:
        c = self.config
        return SequenceTagger(
            SequenceTaggerConfig(
                len(self.tags),
                vocab_size=len(self.vocab),
                embedding_dim=c.embedding_dim,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                bidirectional=c.bidirectional,
                dropout=c.dropout,
                **regularizers(c),
            )
        )

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, steps: list[str]) -> torch.Tensor:
        return torch.tensor([self.index.get(s, 0) for s in steps], dtype=torch.long)

    def tag_ids(self, labels: list[str]) -> torch.Tensor:
        unknown = sorted({t for t in labels if t not in self.tag_index})
        if unknown:
            raise RnnkitValueError(f"labels {unknown[:5]} were not among the training labels {self.tags}")
        return torch.tensor([self.tag_index[t] for t in labels], dtype=torch.long)

    def batch(self, ex: Tagged):
        """(ids (B, T), lengths (B,), tag ids (B, T) with -100 past each length)."""
        x, lengths = pad_ids([self.encode(s) for s in ex.steps])
        y = torch.full(x.shape, -100, dtype=torch.long)
        for b, labels in enumerate(ex.labels):
            y[b, : len(labels)] = self.tag_ids(labels)
        return x, lengths, y

    # --- training -------------------------------------------------------------------------------

    def sized_train_defaults(self) -> dict:
        """About 20 passes over the training sequences (at least 300 steps), validation twice an
        epoch (at most every 200 steps); early stopping ends it sooner."""
        per_epoch = -(-len(self.train.steps) // self.config.batch_size)
        return {
            "steps": max(300, min(2000, 20 * per_epoch)),
            "eval_every": max(10, min(200, -(-per_epoch // 2))),
        }

    def batches(self, step: int):
        idx = bucket_batch(self.train_lengths, self.config.batch_size, step).tolist()
        return self.batch(self.train.take(idx))

    def step_fn(self, model, batch, state):
        x, lengths, y = batch
        logits, _ = model(x, lengths=lengths)
        steps = (y != -100).sum()
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100), None, steps

    @torch.no_grad()
    def probabilities(self, model, ex: Tagged, chunk: int = 256) -> list[torch.Tensor]:
        """Per sequence, (T_i, tags) probabilities; read in batches of similar lengths."""
        model.eval()
        batches = by_length(torch.tensor([len(s) for s in ex.steps]), chunk)
        out = [None] * len(ex.steps)
        for idx in batches:
            x, lengths = pad_ids([self.encode(ex.steps[i]) for i in idx.tolist()])
            logits, _ = model(x.to(device_of(model)), lengths=lengths)
            p = logits.float().softmax(-1).cpu()
            for row, i in enumerate(idx.tolist()):
                out[i] = p[row, : lengths[row]]
        return out

    def scores(self, model, ex: Tagged) -> dict:
        p = self.probabilities(model, ex)
        flat = torch.cat(p)
        y = torch.cat([self.tag_ids(labels) for labels in ex.labels])
        predicted = [[self.tags[k] for k in q.argmax(-1).tolist()] for q in p]
        return {
            "loss": F.nll_loss(flat.clamp_min(1e-12).log(), y).item(),
            "accuracy": (flat.argmax(-1) == y).double().mean().item(),
            "field_exact_match": field_exact_match(ex.labels, predicted),
        }

    def evaluate(self, model) -> dict:
        return self.scores(model, self.val)

    def trivial(self) -> tuple[float, str]:
        return uniform(len(self.tags))

    # --- the commands ---------------------------------------------------------------------------

    def test_metrics(self, model, data=None, **options) -> dict:
        """Per-step accuracy and field exact match beside the baseline's; per-label precision,
        recall and F1 over the steps (sklearn.metrics)."""
        from sklearn.metrics import precision_recall_fscore_support

        test = self.test if data is None else self._test_file(data)
        scores = self.scores(model, test)
        y = torch.cat([self.tag_ids(labels) for labels in test.labels]).numpy()
        pred = torch.cat(self.probabilities(model, test)).argmax(-1).numpy()
        every = list(range(len(self.tags)))
        precision, recall, f1, support = precision_recall_fscore_support(
            y, pred, labels=every, zero_division=0
        )
        baseline = self.baseline(test)
        return {
            "accuracy": scores["accuracy"],
            "baseline_accuracy": baseline["accuracy"],
            "field_exact_match": scores["field_exact_match"],
            "baseline_field_exact_match": baseline["field_exact_match"],
            "loss": scores["loss"],
            "test_sequences": len(test.steps),
            "test_steps": int(len(y)),
            "per_label": {
                tag: {
                    "precision": float(precision[k]),
                    "recall": float(recall[k]),
                    "f1": float(f1[k]),
                    "support": int(support[k]),
                }
                for k, tag in enumerate(self.tags)
            },
        }

    def _test_file(self, data) -> Tagged:
        test, unit = read_tagged(data)
        if unit != self.unit:
            raise RnnkitValueError(
                f"--data {data}: its steps are {unit}s, this run was trained on {self.unit}s"
            )
        return test

    # --- the baseline ---------------------------------------------------------------------------

    def _window_features(self, ex: Tagged):
        """A sparse one-hot row per step: the ids of the steps at offsets -WINDOW..WINDOW (a
        padding id past either end)."""
        from scipy.sparse import csr_matrix

        V = len(self.vocab) + 1  # + padding
        rows, cols = [], []
        r = 0
        for seq in ex.steps:
            ids = np.concatenate([[V - 1] * WINDOW, self.encode(seq).numpy(), [V - 1] * WINDOW])
            for t in range(len(seq)):
                for k, offset in enumerate(range(2 * WINDOW + 1)):
                    rows.append(r)
                    cols.append(k * V + ids[t + offset])
                r += 1
        return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(r, (2 * WINDOW + 1) * V))

    def baseline(self, test: Tagged) -> dict:
        """Logistic regression per step on its window (C chosen on validation), fitted once per
        run and test set (RUN_DIR/baseline.json)."""
        parts = [self.train, self.val, test]
        key = data_key(
            *[["\x02".join(s) for s in p.steps] for p in parts],
            *[["\x02".join(s) for s in p.labels] for p in parts],
        )
        names = ("accuracy", "field_exact_match")

        return cached_shares(self.run_dir, key, lambda: self._fit_baseline(test), names)

    def _fit_baseline(self, test: Tagged) -> dict:
        from sklearn.linear_model import LogisticRegression

        y_train = torch.cat([self.tag_ids(s) for s in self.train.labels]).numpy()
        if len(set(y_train.tolist())) < 2:
            return {"accuracy": None, "field_exact_match": None}
        x_train, x_val, x_test = (self._window_features(p) for p in (self.train, self.val, test))
        y_val = torch.cat([self.tag_ids(s) for s in self.val.labels]).numpy()
        best = None
        for C in (0.3, 3.0):
            fit = LogisticRegression(C=C, max_iter=300).fit(x_train, y_train)
            score = fit.score(x_val, y_val)
            if best is None or score > best[0]:
                best = (score, fit)
        pred = best[1].predict(x_test)
        y_test = torch.cat([self.tag_ids(s) for s in test.labels]).numpy()
        predicted, at = [], 0
        for seq in test.steps:
            predicted.append([self.tags[k] for k in pred[at : at + len(seq)]])
            at += len(seq)
        return {
            "accuracy": float((pred == y_test).mean()),
            "field_exact_match": float(field_exact_match(test.labels, predicted)),
        }

    # --- predict, export, plot ------------------------------------------------------------------

    def split_input(self, text: str) -> list[str]:
        return list(text) if self.unit == "char" else text.split()

    def predict_values(self, model, inputs: list[str], **options) -> list[list[tuple[str, str]]]:
        """Per input, its fields in order: (field, text) pairs (steps outside any field left out)."""
        ex = Tagged([self.split_input(t) for t in inputs], [[] for _ in inputs])
        empty = [t for t, s in zip(inputs, ex.steps) if not s]
        if empty:
            raise RnnkitValueError(f"INPUT {empty[0]!r} is empty: tag needs at least one {self.unit} to read")
        out = []
        join = "" if self.unit == "char" else " "
        for steps, p in zip(ex.steps, self.probabilities(model, ex)):
            labels = [self.tags[k] for k in p.argmax(-1).tolist()]
            out.append([(field, join.join(steps[a:b])) for a, b, field in sorted(spans(labels))])
        return out

    def format_prediction(self, text: str, value) -> str:
        return "\t".join(f"{field}={part}" for field, part in value) if value else "(no field found)"

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        device = next(model.parameters()).device
        return [
            OnnxGraph(
                _StepProbabilities(model),
                (torch.zeros(2, 5, dtype=torch.long, device=device), torch.tensor([5, 3], device=device)),
                ("tokens", "lengths"),
                ("probabilities",),
                {
                    "tokens": {0: "batch", 1: "time"},
                    "lengths": {0: "batch"},
                    "probabilities": {0: "batch", 1: "time"},
                },
                doc=f"tokens: int64 (batch, time), ids of `vocabulary` ({self.unit}s); lengths: int64 "
                f"(batch,), each in 1..time; probabilities: float32 (batch, time, {len(self.tags)}), "
                "of the labels in the order of `labels` (past a length: meaningless)",
            )
        ]

    def onnx_metadata(self, model) -> dict:
        return {"labels": self.tags, "vocabulary": self.vocab, "unknown_id": 0, "unit": self.unit}

    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/tags.png: test sequences with each step coloured by its predicted label,
        the true labels beneath, mistakes marked."""
        test = self.test.take(range(min(8, len(self.test.steps))))
        probabilities = self.probabilities(model, test)
        plt = pyplot()
        colours = plt.get_cmap("tab10" if len(self.tags) <= 10 else "tab20")
        width = max(len(s) for s in test.steps)
        fig, ax = plt.subplots(
            figsize=(
                min(24, 1.5 + 0.16 * width * (1 if self.unit == "char" else 4)),
                0.9 * len(test.steps) + 1.2,
            )
        )
        for row, (steps, labels, p) in enumerate(zip(test.steps, test.labels, probabilities)):
            y = -row
            for t, (step, truth, k) in enumerate(zip(steps, labels, p.argmax(-1).tolist())):
                colour = colours(k % colours.N)
                x = t if self.unit == "char" else 4 * t
                ax.add_patch(
                    plt.Rectangle((x, y), 0.95 if self.unit == "char" else 3.8, 0.45, color=colour, alpha=0.5)
                )
                ax.text(x + 0.1, y + 0.08, step, fontsize=7, family="monospace")
                truth_colour = colours(self.tag_index.get(truth, 0) % colours.N)
                ax.add_patch(
                    plt.Rectangle(
                        (x, y - 0.2), 0.95 if self.unit == "char" else 3.8, 0.15, color=truth_colour
                    )
                )
                if self.tags[k] != truth:
                    ax.text(x + 0.3, y + 0.5, "x", color="red", fontsize=7)
        handles = [
            plt.Rectangle((0, 0), 1, 1, color=colours(k % colours.N), alpha=0.6)
            for k in range(len(self.tags))
        ]
        names = [f"{t} (no field)" if t == OUTSIDE else t for t in self.tags]
        ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        ax.set_xlim(0, (width if self.unit == "char" else 4 * width) + 1)
        ax.set_ylim(-len(test.steps) + 0.5, 1.2)
        ax.axis("off")
        ax.set_title("test sequences: predicted label (box), true label (bar beneath), x = wrong", fontsize=9)
        out = Path(run_dir) / "tags.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [out]


class _StepProbabilities(torch.nn.Module):
    """The exported tagger: (tokens, lengths) -> softmax of every step's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, lengths):
        logits, _ = self.model(tokens, lengths=lengths)
        return logits.float().softmax(-1)
