"""classify (N-vs-1): one label per sequence.

Data: built-in `digits` (scikit-learn's 8x8 images read row by row: 8 steps of 8 numbers) or
`surnames` (Faker's surname lists -> language, character level); or `--data FILE`: lines
`label<TAB>text` (characters), or a CSV (`.csv`) with a `--label` column whose other columns are
the sequence, `--features` numbers per step. Split per label 70 / 15 / 15 (fixed seed).
Model: `SequenceClassifier` (embedding for text, numbers as they are after scaling fitted on the
training part). Loss: cross-entropy weighted by inverse class frequency, so rare labels count.
Baseline, fitted in the same run: logistic regression on character 1-5-gram counts (text) or on
the flattened sequence (numbers), its regularisation chosen on the validation split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import (
    MAX_BATCH,
    MAX_LAYERS,
    MAX_UNITS,
    flag,
    integer,
    one_of,
    option,
    rate,
    string,
)
from rnnkit.data.datasets import digits, surnames
from rnnkit.data.files import column_index, numbers, read_pairs, read_table
from rnnkit.data.text import CharVocab
from rnnkit.data.tokens import KINDS as TOKEN_KINDS
from rnnkit.data.tokens import Subwords
from rnnkit.errors import RnnkitValueError
from rnnkit.models import SequenceClassifier, SequenceClassifierConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.models.classifier import POOLINGS
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
    epoch_batch,
    pad_ids,
    pyplot,
    stratified_split,
    uniform,
)


@dataclass(frozen=True)
class ClassifyConfig(RegularizerOptions):
    dataset: str = option("digits", "built-in data when no --data", one_of("digits", "surnames"))
    label: str = option("label", "the label column of a CSV --data file", string())
    features: int = option(1, "numbers per time step in a CSV row", integer(1, 10**6))
    cell: str = cell_option("lstm")
    hidden_size: int = option(256, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    tokens: str = option(
        "char", "what a step of a text is: a character, a word, or a BPE subword", one_of(*TOKEN_KINDS)
    )
    vocab_size: int = option(
        8000,
        "--tokens word/bpe: the most words or subwords kept (trained on the training split)",
        integer(2, 10**6),
    )
    embedding_dim: int = option(32, "embedding size of a step (text)", integer(1, MAX_UNITS))
    bidirectional: bool = option(True, "read each sequence in both directions", flag())
    pooling: str = option("max", "sequence summary", one_of(*POOLINGS))
    dropout: float = option(0.3, "dropout on inputs, between layers and before the head", rate())
    batch_size: int = option(64, "sequences per step", integer(1, MAX_BATCH))


@dataclass
class Examples:
    """Labelled sequences: texts (str) or numbers (N, T, F), and label ids."""

    texts: list[str] | None
    numbers: np.ndarray | None
    labels: list[str]

    def take(self, idx) -> Examples:
        return Examples(
            None if self.texts is None else [self.texts[i] for i in idx],
            None if self.numbers is None else self.numbers[idx],
            [self.labels[i] for i in idx],
        )


def read_examples(config: ClassifyConfig, data) -> Examples:
    if data is None:
        if config.dataset == "digits":
            images, labels = digits()
            return Examples(None, images, labels)
        names, languages = surnames()
        return Examples(names, None, languages)
    if str(data).lower().endswith(".csv"):
        header, rows = read_table(data)
        label = column_index(data, header, config.label, "--label")
        others = [c for c in range(len(header)) if c != label]
        if not others or len(others) % config.features:
            raise RnnkitValueError(
                f"--features {config.features}: {data} has {len(others)} sequence columns, "
                "not a positive multiple of it"
            )
        values = np.array(numbers(data, rows, others, header), dtype=np.float32)
        return Examples(None, values.reshape(len(rows), -1, config.features), [r[label] for r in rows])
    pairs = read_pairs(data, what=("label", "text"))
    return Examples([t for _, t in pairs], None, [label for label, _ in pairs])


class ClassifyTask(Task):
    name = "classify"
    metric = "loss"
    loss_unit = "cross-entropy (nats per sequence)"
    # measured on surnames (docs/tasks.md): a bidirectional LSTM with max pooling and dropout 0.3,
    # cosine decay over 4,000 steps; unidirectional with last-state pooling stays below the baseline
    train_defaults = {"steps": 4000, "lr": 3e-3, "schedule": "cosine", "eval_every": 250, "patience": 6}
    sized_help = {
        "steps": "10 epochs, or more for short sequences (1.8M sequence steps read), 600 to 4000",
        "eval_every": "steps / 16, 10 to 250",
    }
    EPOCHS, READ_STEPS, MIN_STEPS, MAX_STEPS = 10, 1_800_000, 600, 4000  # sized_train_defaults

    def __init__(self, config: ClassifyConfig, *, data=None, saved: dict | None = None):
        self.config, self.data = config, data
        examples = read_examples(config, data)
        train, val, test = stratified_split(examples.labels)
        self.train, self.val, self.test = (examples.take(i) for i in (train, val, test))
        state = (saved or {}).get("task_state")
        self.labels = state["labels"] if state else sorted(set(examples.labels))
        self.is_text = examples.texts is not None
        self.vocab = None
        if not self.is_text and config.tokens != "char":
            raise RnnkitValueError(f"--tokens {config.tokens}: this data is numbers, not text")
        if self.is_text and config.tokens != "char":  # words or subwords: a trained tokenizer
            if state:
                self.vocab = Subwords.restore(state["tokenizer"])
            else:
                self.vocab = Subwords.train(config.tokens, self.train.texts, config.vocab_size)
        elif self.is_text:
            self.vocab = CharVocab.restore(state["vocab"]) if state else CharVocab("".join(self.train.texts))
        else:
            x = self.train.numbers.reshape(-1, self.train.numbers.shape[-1])
            self.mean = np.array(state["mean"] if state else x.mean(0), dtype=np.float32)
            self.std = np.array(state["std"] if state else x.std(0) + 1e-6, dtype=np.float32)
        if self.is_text:
            self.train_lengths = torch.tensor([len(self.vocab.encode(t)) for t in self.train.texts])
        counts = np.bincount(self.label_ids(self.train.labels), minlength=len(self.labels))
        self.class_weight = torch.tensor(len(self.train.labels) / (len(self.labels) * np.maximum(counts, 1)))

    def sized_train_defaults(self) -> dict:
        """Steps: EPOCHS passes over the training examples, or for short sequences as many steps
        as read READ_STEPS sequence steps (the cost of a step grows with the sequences' length:
        4,000 steps of 7-character surnames cost what 300 of 100-character lines do), within
        MIN_STEPS..MAX_STEPS; validation 16 times a run (10 to 250 steps apart), so that early
        stopping (patience 6) ends a run only after 3/8 of it without improvement."""
        per_epoch = -(-len(self.train.labels) // self.config.batch_size)
        if self.is_text:
            mean = float(self.train_lengths.float().mean())
        else:
            mean = float(self.train.numbers.shape[1])
        by_cost = int(self.READ_STEPS / (self.config.batch_size * max(mean, 1.0)))
        steps = max(self.MIN_STEPS, min(self.MAX_STEPS, max(self.EPOCHS * per_epoch, by_cost)))
        return {"steps": steps, "eval_every": max(10, min(250, steps // 16))}

    def describe(self) -> dict:
        state = {"labels": self.labels}
        if isinstance(self.vocab if self.is_text else None, Subwords):
            state["tokenizer"] = self.vocab.state()
        elif self.is_text:
            state["vocab"] = self.vocab.chars
        else:
            state |= {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return {"task": self.name, "task_config": asdict(self.config), "task_state": state}

    def build_model(self) -> SequenceClassifier:
        c = self.config
        return SequenceClassifier(
            SequenceClassifierConfig(
                len(self.labels),
                vocab_size=len(self.vocab) if self.is_text else None,
                input_size=None if self.is_text else self.train.numbers.shape[-1],
                embedding_dim=c.embedding_dim,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                bidirectional=c.bidirectional,
                pooling=c.pooling,
                dropout=c.dropout,
                **regularizers(c),
            )
        )

    # --- encoding -------------------------------------------------------------------------------

    def label_ids(self, labels: list[str]) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            raise RnnkitValueError(f"labels {unknown[:5]} were not among the training labels {self.labels}")
        return np.array([index[label] for label in labels], dtype=np.int64)

    def inputs(self, ex: Examples) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(inputs, lengths): padded ids (B, T) and lengths, or scaled numbers (B, T, F)."""
        if self.is_text:
            return pad_ids([self.vocab.encode(t) for t in ex.texts])
        return torch.from_numpy((ex.numbers - self.mean) / self.std), None

    # --- training -------------------------------------------------------------------------------

    def batches(self, step: int):
        """Text: sequences of similar lengths together (bucket_batch), so a padded batch runs few
        steps past its sequences' ends (and `lengths=` skips those)."""
        if self.is_text:
            idx = bucket_batch(self.train_lengths, self.config.batch_size, step).tolist()
        else:
            idx = epoch_batch(len(self.train.labels), self.config.batch_size, step).tolist()
        ex = self.train.take(idx)
        x, lengths = self.inputs(ex)
        return x, lengths, torch.from_numpy(self.label_ids(ex.labels))

    def step_fn(self, model, batch, state):
        x, lengths, y = batch
        logits = model(x, lengths=lengths)
        weight = self.class_weight.to(logits)  # the loss is a weighted mean: its weight is the sum
        return F.cross_entropy(logits, y, weight=weight), None, weight[y].sum()

    @torch.no_grad()
    def probabilities(self, model, ex: Examples, chunk: int = 256) -> torch.Tensor:
        """(N, labels) in the order of `ex`; text is read in batches of similar lengths."""
        model.eval()
        n = len(ex.labels)
        sizes = torch.tensor([len(t) for t in ex.texts]) if self.is_text else torch.zeros(n)  # ~ steps
        batches = by_length(sizes, chunk)
        out = []
        for idx in batches:
            x, lengths = self.inputs(ex.take(idx.tolist()))
            out.append(model(x.to(device_of(model)), lengths=lengths).float().softmax(-1).cpu())
        if not out:
            return torch.zeros(0, len(self.labels))
        return torch.cat(out)[torch.cat(batches).argsort()]

    def scores(self, model, ex: Examples) -> dict:
        p = self.probabilities(model, ex)
        y = torch.from_numpy(self.label_ids(ex.labels))
        return {
            "loss": F.nll_loss(p.clamp_min(1e-12).log(), y).item(),
            "accuracy": (p.argmax(-1) == y).double().mean().item(),
        }

    def trivial(self) -> tuple[float, str]:
        return uniform(len(self.labels))

    def evaluate(self, model) -> dict:
        return self.scores(model, self.val)

    # --- the commands ---------------------------------------------------------------------------

    def test_examples(self, data) -> Examples:
        return self.test if data is None else read_examples(self.config, data)

    def test_metrics(self, model, data=None, **options) -> dict:
        """accuracy and macro-F1 (every label counts alike) beside the baseline's, per-class
        precision, recall and F1, the confusion matrix (sklearn.metrics)."""
        from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

        test = self.test_examples(data)
        p = self.probabilities(model, test)
        y = self.label_ids(test.labels)
        pred = p.argmax(-1).numpy()
        every = list(range(len(self.labels)))
        precision, recall, f1, support = precision_recall_fscore_support(
            y, pred, labels=every, zero_division=0
        )
        baseline = self.baseline(test)
        return {
            "accuracy": float((pred == y).mean()),
            "baseline_accuracy": baseline["accuracy"],
            "macro_f1": float(f1_score(y, pred, labels=every, average="macro", zero_division=0)),
            "baseline_macro_f1": baseline["macro_f1"],
            "loss": float(F.nll_loss(p.clamp_min(1e-12).log(), torch.from_numpy(y)).item()),
            "test_examples": len(y),
            "per_class": {
                label: {
                    "precision": float(precision[k]),
                    "recall": float(recall[k]),
                    "f1": float(f1[k]),
                    "support": int(support[k]),
                }
                for k, label in enumerate(self.labels)
            },
            "confusion": confusion_matrix(y, pred, labels=every).tolist(),
        }

    def baseline(self, test: Examples) -> dict:
        """The baseline's accuracy and macro-F1 on `test` (NaN where it has nothing to fit):
        logistic regression (see the module docstring), C chosen on validation; fitted once per
        run and test set (RUN_DIR/baseline.json), so evaluate and plot read it back."""
        parts = [self.train, self.val, test]
        key = data_key(*[p.texts if self.is_text else p.numbers for p in parts], *[p.labels for p in parts])

        return cached_shares(self.run_dir, key, lambda: self._fit_baseline(test), ("accuracy", "macro_f1"))

    def _fit_baseline(self, test: Examples) -> dict:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import f1_score

        if self.is_text:
            vectorizer = CountVectorizer(analyzer="char", ngram_range=(1, 5), lowercase=False).fit(
                self.train.texts
            )

            def features(ex):
                return vectorizer.transform(ex.texts)
        else:

            def features(ex):
                return ((ex.numbers - self.mean) / self.std).reshape(len(ex.labels), -1)

        xs = {name: features(ex) for name, ex in (("train", self.train), ("val", self.val), ("test", test))}
        ys = {name: self.label_ids(ex.labels) for name, ex in (("train", self.train), ("val", self.val))}
        if len(set(ys["train"])) < 2:
            return {"accuracy": None, "macro_f1": None}  # one label: nothing to fit
        best = None
        for C in (0.01, 0.1, 1.0, 10.0, 100.0):
            fit = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(
                xs["train"], ys["train"]
            )
            score = fit.score(xs["val"], ys["val"]) if len(ys["val"]) else 0.0
            if best is None or score > best[0]:
                best = (score, fit)
        pred, y = best[1].predict(xs["test"]), self.label_ids(test.labels)
        every = list(range(len(self.labels)))
        return {
            "accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, labels=every, average="macro", zero_division=0)),
        }

    def predict_values(self, model, inputs: list[str], **options) -> list[tuple[str, float]]:
        """(label, probability) of the likeliest label, per input."""
        if self.is_text:
            if not all(inputs):
                raise RnnkitValueError("INPUT is empty: classify needs at least one character to read")
            ex = Examples(list(inputs), None, [self.labels[0]] * len(inputs))
        else:
            T, Fdim = self.train.numbers.shape[1:]
            rows = []
            for text in inputs:
                try:
                    values = [float(v) for v in text.split(",")]
                except ValueError:
                    raise RnnkitValueError(
                        f"INPUT must be {T * Fdim} comma-separated numbers, got {text!r}"
                    ) from None
                if len(values) != T * Fdim:
                    raise RnnkitValueError(
                        f"INPUT must be {T * Fdim} comma-separated numbers, got {len(values)}"
                    )
                rows.append(values)
            ex = Examples(
                None, np.array(rows, dtype=np.float32).reshape(-1, T, Fdim), [self.labels[0]] * len(rows)
            )
        p = self.probabilities(model, ex)
        best = p.argmax(-1)
        return [(self.labels[k], float(p[i, k])) for i, k in enumerate(best.tolist())]

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        """One graph: token ids (text) or raw feature vectors (numbers; the run's scaling is in
        the graph) and lengths -> the labels' probabilities."""
        device = next(model.parameters()).device
        lengths = torch.tensor([5, 3], device=device)
        if self.is_text:
            inputs, name = torch.zeros(2, 5, dtype=torch.long, device=device), "tokens"
            doc = "int64 (batch, time), ids of `vocabulary`"
        else:
            T, F_ = self.train.numbers.shape[1:]
            inputs, doc = torch.zeros(2, T, F_, device=device), f"float32 (batch, time, {F_}), as in the data"
            name, lengths = "features", torch.tensor([T, T - 1 if T > 1 else 1], device=device)
        module = _Probabilities(model, None if self.is_text else (self.mean, self.std))
        return [
            OnnxGraph(
                module,
                (inputs, lengths),
                (name, "lengths"),
                ("probabilities",),
                {name: {0: "batch", 1: "time"}, "lengths": {0: "batch"}},
                doc=f"{name}: {doc}; lengths: int64 (batch,), each in 1..time; "
                f"probabilities: float32 (batch, {len(self.labels)}), in the order of `labels`",
            )
        ]

    def onnx_files(self) -> dict[str, str]:
        """A word or BPE run's tokenizer, written beside the graphs as Hugging Face's JSON."""
        return {"tokenizer": self.vocab.json_text()} if isinstance(self.vocab, Subwords) else {}

    def onnx_metadata(self, model) -> dict:
        meta = {"labels": self.labels}
        if self.is_text and isinstance(self.vocab, Subwords):
            meta |= {"tokens": self.config.tokens, "unknown_id": 0}
        elif self.is_text:
            meta |= {"tokens": "char", "vocabulary": self.vocab.chars, "unknown_id": 0}
        else:
            meta["time_steps"] = int(self.train.numbers.shape[1])
        return meta

    def format_prediction(self, text: str, value) -> str:
        return f"{value[0]}\t{value[1]:.4f}"

    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/confusion.png: the test confusion matrix, rows normalised (recall per label)."""
        metrics = self.test_metrics(model)
        confusion = np.array(metrics["confusion"], dtype=np.float64)
        share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
        plt = pyplot()
        K = len(self.labels)
        fig, ax = plt.subplots(figsize=(max(5, 0.45 * K + 2), max(4, 0.45 * K + 1.5)))
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(K), self.labels, rotation=90 if K > 10 else 0)
        ax.set_yticks(range(K), self.labels)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        ax.set_title(f"test confusion (accuracy {metrics['accuracy']:.3f}), rows sum to 1")
        fig.colorbar(image, ax=ax, label="share of the true label's examples")
        out = Path(run_dir) / "confusion.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [out]


class _Probabilities(torch.nn.Module):
    """The exported classifier: (inputs, lengths) -> softmax of the logits, with the run's
    feature scaling (mean, std) applied first for numbers."""

    def __init__(self, model, scaling=None):
        super().__init__()
        self.model = model
        self.scaled = scaling is not None
        if self.scaled:
            self.register_buffer("mean", torch.as_tensor(scaling[0], dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(scaling[1], dtype=torch.float32))

    def forward(self, inputs, lengths):
        if self.scaled:
            inputs = (inputs - self.mean) / self.std
        return self.model(inputs, lengths=lengths).float().softmax(-1)
